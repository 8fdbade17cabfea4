"""The methods: each takes a Graph and options and returns a Result (one file each).

``METHODS`` maps a method's public name to its function; :func:`lipbound.estimate` dispatches on
it. Every function has the signature ``fn(graph, *, seed, progress, **options) -> Result``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from ..report import Result
from . import autolip, best, eclipse, exact, lipsdp, lower, seqlip  # the modules keep their names

Method = Callable[..., Result]

METHODS: dict[str, Method] = {
    "autolip": partial(autolip.autolip, certified=True),
    "autolip-power": partial(autolip.autolip, certified=False),
    "seqlip": partial(seqlip.seqlip, solver="certified"),
    "seqlip-greedy": partial(seqlip.seqlip, solver="greedy"),
    "seqlip-topk": partial(seqlip.seqlip, solver="topk"),
    "eclipse-fast": eclipse.eclipse_fast,
    "lipsdp": lipsdp.lipsdp,
    "lipsdp-layer": partial(lipsdp.lipsdp, variant="layer"),
    "best": best.best,
    "lower": lower.lower,
    "exact": exact.exact,
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}") from None
