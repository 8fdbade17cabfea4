"""Golden-section search on an interval: the one-dimensional minimiser shared by the searches over
a scalar of the SDP methods (ECLipsE's ``theta``, the multiplier caps of the LMI check)."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["golden_section"]

GOLDEN = (math.sqrt(5) - 1) / 2


def golden_section(f: Callable[[float], float], lo: float, hi: float, go_on: Callable[[float, float], bool]) -> None:
    """Golden-section search for a minimum of ``f`` on ``[lo, hi]`` (exact for a unimodal ``f``; a
    heuristic otherwise). Before each step ``go_on(a, b)`` is asked with the two interior points the
    step evaluates; the search stops when it says False. ``f`` is called at most twice per step and
    should memoise (a step re-uses one point of the previous step); the caller keeps the best point
    it saw, so nothing is returned."""
    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    while go_on(a, b):
        if f(a) <= f(b):
            hi, b = b, a
            a = hi - GOLDEN * (hi - lo)
        else:
            lo, a = a, b
            b = lo + GOLDEN * (hi - lo)
