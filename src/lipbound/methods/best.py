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
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Result
from .budget import stopped_by


def best(graph: Graph, *, registry: Mapping[str, Any], time_budget: float = 60.0,
         methods: Sequence[str] | None = None, seed: int = 0, progress: bool = False,
         method_options: dict[str, dict[str, Any]] | None = None, domain: Any = None) -> Result:
    """Run ``methods`` (default: those marked for ``best``) in order until ``time_budget``
    seconds are spent; return the least certified bound.

    ``registry`` is the method registry (name -> :class:`~lipbound.methods.MethodSpec`); the
    registry's own ``"best"`` entry binds it (this module cannot import the registry, which
    imports it).

    ``method_options`` gives options to one method by name. ``details["ran"]`` lists every method
    tried (value, kind, seconds, ``stopped_by``, or why it was skipped) and ``details["chosen"]`` the one that
    gave the minimum. ``domain`` goes to the methods that take one (module doc).
    """
    def get_method(name: str) -> Any:
        if name not in registry:
            raise InvalidInput(f"unknown method {name!r}; choose from {', '.join(registry)}")
        return registry[name]

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
    chosen: Result | None = None
    for spec in specs:
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
    return Result("best", chosen.upper, "certified_upper", time.perf_counter() - start,
                  details={"chosen": chosen.method, "ran": ran, "time_budget": time_budget,
                           "stopped_by": stopped_by(r["stopped_by"] for r in ran if "stopped_by" in r)})
