"""``"best"``: the smallest certified upper bound that the applicable methods give within a time budget.

The certified methods run cheapest first (AutoLip, the closed-form sequential bound, certified
SeqLip, LipSDP, then the exact branch and bound for small ReLU nets); each of the last three gets
the time that is left as its own budget. A method that does not apply to the
model (:class:`~lipbound.errors.NotApplicable`, :class:`~lipbound.errors.UnsupportedOperation`) is
skipped with its reason; a result that is not ``certified_upper`` or ``exact`` (e.g. an SDP answer
whose check failed) is listed but never used. The minimum of certified upper bounds is itself a
certified upper bound.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..errors import NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Result

#: Certified methods in the order ``best`` tries them (names in :data:`lipbound.methods.METHODS`).
ORDER: tuple[str, ...] = ("autolip", "eclipse-fast", "seqlip", "lipsdp", "exact")
#: Options ``best`` forwards, per method.
_FORWARD = {"lipsdp": ("variant", "solver", "max_iter", "ipm_max_order", "max_size"),
            "eclipse-fast": ("max_size",)}
#: The option through which a method receives the remaining time.
_BUDGET = {"seqlip": "total_budget", "lipsdp": "time_limit", "exact": "time_budget"}


def best(graph: Graph, *, budget: float = 60.0, methods: Sequence[str] = ORDER, seed: int = 0,
         progress: bool = False, **options: Any) -> Result:
    """Run ``methods`` in order until ``budget`` seconds are spent; return the least certified bound.

    ``details["ran"]`` lists every method tried (value, kind, seconds, or why it was skipped) and
    ``details["chosen"]`` the one that gave the minimum. Methods with a time option (``_BUDGET``)
    get the remaining time; names not registered (yet) are skipped. Options named in ``_FORWARD``
    reach their method.
    """
    from . import METHODS  # the registry imports this module

    unknown = [m for m in methods if m == "best" or (m not in METHODS and m not in ORDER)]
    if unknown:
        raise ValueError(f"best cannot run {unknown}; choose from {', '.join(m for m in METHODS if m != 'best')}")
    start = time.perf_counter()
    ran: list[dict[str, Any]] = []
    chosen: Result | None = None
    for name in methods:
        left = budget - (time.perf_counter() - start)
        if left <= 0:
            ran.append({"method": name, "skipped": "time budget spent"})
            continue
        if name not in METHODS:
            ran.append({"method": name, "skipped": "not registered"})
            continue
        kwargs = {k: v for k, v in options.items() if k in _FORWARD.get(name, ())}
        if name in _BUDGET:
            kwargs[_BUDGET[name]] = left
        t0 = time.perf_counter()
        try:
            res = METHODS[name](graph, seed=seed, progress=progress, **kwargs)
        except (NotApplicable, UnsupportedOperation) as exc:
            ran.append({"method": name, "skipped": str(exc), "seconds": time.perf_counter() - t0})
            continue
        ran.append({"method": name, "value": res.value, "kind": res.kind, "seconds": time.perf_counter() - t0})
        if res.kind in ("certified_upper", "exact") and (chosen is None or res.value < chosen.value):
            chosen = res
    if chosen is None:
        raise NotApplicable(f"no certified method applied within {budget:g} s: {ran}")
    return Result("best", chosen.value, "certified_upper", time.perf_counter() - start,
                  details={"chosen": chosen.method, "ran": ran, "budget": budget})
