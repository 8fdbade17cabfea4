"""golden_section: the minimiser of a unimodal function is found to the golden ratio's rate, each
step asks before it evaluates, and a memoised f is called once per new point."""

from __future__ import annotations

import math

import pytest

from lipbound.methods.line_search import GOLDEN, golden_section


@pytest.mark.parametrize("centre", [0.0, 0.137, 0.5, 0.91, 1.0])
def test_finds_the_minimiser_of_a_unimodal_function_at_the_golden_rate(centre: float) -> None:
    seen: dict[float, float] = {}

    def f(x: float) -> float:
        if x not in seen:
            seen[x] = abs(x - centre) ** 1.5
        return seen[x]

    steps = []
    golden_section(f, 0.0, 1.0, lambda a, b: len(steps) < 40 and not steps.append((a, b)))
    best = min(seen, key=seen.get)
    assert abs(best - centre) <= GOLDEN ** 39 + 1e-12
    assert len(seen) <= 41  # two points at the first step, one new point per later step


def test_stops_when_told_and_evaluates_nothing_then() -> None:
    calls = []
    golden_section(lambda x: calls.append(x) or x, -1.0, 1.0, lambda a, b: False)
    assert calls == []
    golden_section(lambda x: calls.append(x) or math.cos(x), 0.0, 6.0, lambda a, b: len(calls) < 3)
    assert 3 <= len(calls) <= 4
    assert all(0.0 <= x <= 6.0 for x in calls)
