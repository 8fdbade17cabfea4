"""``"best"``: the smallest certified upper bound that the applicable methods give within a time budget.

The certified methods marked for it in the registry (:attr:`~lipbound.methods.MethodSpec.in_best`:
AutoLip, the closed-form sequential bound, certified SeqLip, LipSDP, then the exact branch and
bound for small piecewise-linear nets) run in registry order, cheapest first; each budgeted one gets
the time that is left. A method that does not apply to the model
(:class:`~lipbound.errors.NotApplicable`, :class:`~lipbound.errors.UnsupportedOperation`) is
skipped with its reason; a result that is not ``certified_upper`` or ``exact`` (e.g. an SDP answer
whose check failed) is listed but never used. The minimum of certified upper bounds is itself a
certified upper bound.

On a region (a localized graph, ``domain``) the members run on the graph they are given, reading
its per-neuron slopes, and those that take ``domain``
(:attr:`~lipbound.methods.MethodSpec.takes_domain`) get it: each value is a certified bound on the
region, and so is their minimum.

The time budget is an outer cap (:mod:`~lipbound.methods.budget`): each member stops on its own
counts and work caps, and ``details["stopped_by"]`` is the most telling of the members'
(``"time"`` when the budget skipped a member or cut one short).

**Early stop on a small gap.** ``best`` first gets a witnessed lower bound ``l``: the ``lower``
value the caller gives (e.g. from an earlier ``lower`` run), or else a cheap run of the registry's
``lower`` method (:data:`LOWER_OPTIONS`, a fixed amount of work, capped at :data:`LOWER_SHARE` of the
budget; its own ``method_options["lower"]`` override them). After each member it stops once the
least certified bound ``U`` so far satisfies ``U / l <= 1 + tol``: no later member could lower
``U`` by more than that fraction, since every certified bound is ``>= L(f) >= l``. The members it
did not run are listed in ``details["skipped"]`` and ``details["stopped_by"]`` is ``"converged"``.
The stop only decides which members run, so the returned value is a certified bound whatever ``l``
is (a wrong ``lower`` given by a caller can only stop it early). The stop is deterministic: the
lower bound comes from counts (same seed, same ``l``) and the members from the same order. When
``best`` ran the search itself, its result also carries the witness and the bracket ``(l, U)``.
``tol=None`` turns all of this off (no search, every member runs).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Result
from .budget import stopped_by

#: the cheap witnessed lower bound ``best`` runs when it is not given one: a few starts, no pairs
LOWER_OPTIONS: dict[str, Any] = {"starts": 8, "steps": 50, "pairs": False, "walk_rounds": 4}
LOWER_SHARE = 0.1  # the most of the budget that search may take
DEFAULT_TOL = 0.01  # stop once the least certified bound is within 1% of the lower bound


def best(graph: Graph, *, registry: Mapping[str, Any], time_budget: float = 60.0,
         methods: Sequence[str] | None = None, seed: int = 0, progress: bool = False,
         method_options: dict[str, dict[str, Any]] | None = None, domain: Any = None,
         lower: float | None = None, tol: float | None = DEFAULT_TOL) -> Result:
    """Run ``methods`` (default: those marked for ``best``) in order until ``time_budget``
    seconds are spent or the gap to a witnessed lower bound is within ``tol``; return the least
    certified bound.

    ``registry`` is the method registry (name -> :class:`~lipbound.methods.MethodSpec`); the
    registry's own ``"best"`` entry binds it (this module cannot import the registry, which
    imports it).

    ``method_options`` gives options to one method by name (``"lower"`` included).
    ``details["ran"]`` lists every method tried (value, kind, seconds, ``stopped_by``, or why it
    was skipped), ``details["chosen"]`` the one that gave the minimum, ``details["lower"]`` the
    lower bound used for the stop (and ``details["lower_source"]``: ``"given"`` or ``"lower"``),
    ``details["skipped"]`` the members an early stop left out. ``lower``: a witnessed lower bound
    the caller already has; ``tol``: the relative gap ``U / l - 1`` at which to stop, None for no
    early stop (module doc). ``domain`` goes to the methods that take one (module doc).
    """
    def get_method(name: str) -> Any:
        if name not in registry:
            raise InvalidInput(f"unknown method {name!r}; choose from {', '.join(registry)}")
        return registry[name]

    if tol is not None and not tol >= 0:
        raise InvalidInput(f"tol must be >= 0 or None, got {tol!r}")
    if lower is not None and not lower > 0:
        raise InvalidInput(f"lower must be a positive witnessed lower bound, got {lower!r}")
    names = [n for n, s in registry.items() if s.in_best] if methods is None else list(methods)
    specs = [get_method(n) for n in names]
    bad = [s.name for s in specs if s.aggregate or not s.guarantee.is_upper]
    if bad:
        raise InvalidInput(f"best cannot run {bad}; choose from "
                           f"{', '.join(n for n, s in registry.items() if s.guarantee.is_upper and not s.aggregate)}")
    for name, opts in (method_options or {}).items():
        get_method(name).check_options(opts)
    start = time.perf_counter()
    ran: list[dict[str, Any]] = []
    found = None if tol is None or lower is not None or time_budget <= 0 else _search_lower(
        graph, get_method("lower"), time_budget, seed, (method_options or {}).get("lower", {}), domain, ran)
    bound = lower if found is None else found.lower
    chosen: Result | None = None
    skipped: list[str] = []
    for spec in specs:
        if chosen is not None and bound is not None and tol is not None and chosen.upper <= bound * (1 + tol):
            skipped.append(spec.name)
            continue
        left = time_budget - (time.perf_counter() - start)
        if left <= 0:
            ran.append({"method": spec.name, "skipped": "time budget spent", "stopped_by": "time"})
            continue
        kwargs = dict((method_options or {}).get(spec.name, {}))
        if domain is not None and spec.takes_domain:
            kwargs.setdefault("domain", domain)
        if spec.budgeted:
            kwargs["time_budget"] = min(left, kwargs.get("time_budget", left))
        t0 = time.perf_counter()
        try:
            res = spec(graph, seed=seed, progress=progress, **kwargs)
        except (NotApplicable, UnsupportedOperation) as exc:
            ran.append({"method": spec.name, "skipped": str(exc), "seconds": time.perf_counter() - t0})
            continue
        ran.append({"method": spec.name, "value": res.value, "upper": res.upper, "kind": res.kind.value,
                    "seconds": time.perf_counter() - t0, "stopped_by": res.details.get("stopped_by", "converged")})
        if res.upper is not None and (chosen is None or res.upper < chosen.upper):
            chosen = res
    if chosen is None:
        raise NotApplicable(f"no certified method applied within {time_budget:g} s: {ran}")
    details = {"chosen": chosen.method, "ran": ran, "time_budget": time_budget, "tol": tol, "lower": bound,
               "lower_source": None if bound is None else "given" if found is None else "lower", "skipped": skipped,
               "stopped_by": "converged" if skipped else
               stopped_by(r["stopped_by"] for r in ran if "stopped_by" in r)}
    return Result("best", chosen.upper, "certified_upper", time.perf_counter() - start,
                  witness=None if found is None else found.witness, details=details,
                  bracket=None if found is None else (found.lower, chosen.upper))


def _search_lower(graph: Graph, spec: Any, time_budget: float, seed: int, options: dict[str, Any],
                  domain: Any, ran: list[dict[str, Any]]) -> Result | None:
    """The cheap witnessed lower bound of the module doc (None when the search does not apply)."""
    kwargs = {**LOWER_OPTIONS, "time_budget": LOWER_SHARE * time_budget, **options}
    if domain is not None:
        kwargs.setdefault("domain", domain)
    t0 = time.perf_counter()
    try:
        res = spec(graph, seed=seed, progress=False, **kwargs)
    except (NotApplicable, UnsupportedOperation) as exc:
        ran.append({"method": spec.name, "skipped": str(exc), "seconds": time.perf_counter() - t0})
        return None
    ran.append({"method": spec.name, "value": res.value, "lower": res.lower, "kind": res.kind.value,
                "seconds": time.perf_counter() - t0, "stopped_by": res.details.get("stopped_by", "converged")})
    return res if res.lower is not None and res.lower > 0 else None
