"""The methods: each takes a Graph and options and returns a Result (one file each).

``METHODS`` maps a method's public name to its function; :func:`lipbound.estimate` dispatches on
it. Every function has the signature ``fn(graph, *, seed, progress, **options) -> Result``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from ..report import Result
from .autolip import autolip
from .best import best
from .eclipse import eclipse_fast
from .exact import exact
from .lipsdp import lipsdp
from .lower import lower
from .seqlip import seqlip

Method = Callable[..., Result]

METHODS: dict[str, Method] = {
    "autolip": partial(autolip, certified=True),
    "autolip-power": partial(autolip, certified=False),
    "seqlip": partial(seqlip, solver="certified"),
    "seqlip-greedy": partial(seqlip, solver="greedy"),
    "seqlip-topk": partial(seqlip, solver="topk"),
    "eclipse-fast": eclipse_fast,
    "lipsdp": lipsdp,
    "lipsdp-layer": partial(lipsdp, variant="layer"),
    "best": best,
    "lower": lower,
    "exact": exact,
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}") from None
