"""``lower`` keeps its time budget on a slowed machine (issue 13, item 3): it returns within
``1.1 B + 0.5`` seconds with the best witness re-checked so far.

A loaded machine is imitated by slowing every autograd call (``torch.autograd.grad``: the power
iterations, the ascent's gradient, the region walk, the pairs) by a factor: each call sleeps
``factor - 1`` times its own duration afterwards (sleeping, not spinning: the test machine is
shared). The oracles are the wall clock and, for the witness, the dense Jacobian of the
``nn.Module`` by ``torch.autograd.functional.jacobian`` (or two forward passes for a pair):
another evaluation path than the library's.
"""

from __future__ import annotations

import time

import pytest
import torch

import lipbound
from lipbound.methods.budget import Clock
from lipbound.methods.lower import lower
from lipbound.methods.lower_clock import LowerClock, Loop

from test_lower_cnn import small_cnn, witness_quotient


def _slowed(monkeypatch, factor: float) -> None:
    """Every ``torch.autograd.grad`` call takes ``factor`` times as long (module doc)."""
    grad = torch.autograd.grad

    def slow(*args, **kwargs):
        t0 = time.perf_counter()
        out = grad(*args, **kwargs)
        time.sleep((factor - 1) * (time.perf_counter() - t0))
        return out

    monkeypatch.setattr(torch.autograd, "grad", slow)


@pytest.mark.parametrize("factor", [3.0, 50.0])
def test_slowed_lower_stops_near_its_budget_with_a_witness_that_rechecks(monkeypatch, factor):
    budget = 1.5
    net = small_cnn(0, pool=True)
    graph = lipbound.as_graph(net, (2, 8, 8))
    lower(graph, time_budget=0.2, steps=1, walk_rounds=1, pairs=False)  # first-call imports, outside the timing
    _slowed(monkeypatch, factor)
    t0 = time.perf_counter()
    res = lower(graph, time_budget=budget, steps=10_000, seed=0, work=1e18)
    wall = time.perf_counter() - t0
    assert wall <= 1.1 * budget + 0.5
    assert res.details["stopped_by"] == "time"
    assert res.value > 0 and res.witness is not None
    assert witness_quotient(net, res.witness) == pytest.approx(res.value, rel=1e-6)


def test_a_paced_loop_starts_no_step_that_would_end_past_its_hard_end():
    step = 0.1
    start = time.perf_counter()
    loop = Loop(Clock(10.0), soft=start + 10.0, hard=start + 5.5 * step, first=step)
    done = 0
    for _ in loop.steps(100):
        time.sleep(step)
        done += 1
    end = time.perf_counter()
    assert end <= start + 5.75 * step  # no step started that the previous one's pace said would overrun
    assert 4 <= done <= 5 and loop.clock.cut


def test_the_reserve_of_the_recheck_is_kept_free_of_search_steps():
    clock = Clock(1.0)
    plan = LowerClock(clock)
    plan.primed(0.4)  # the priming's check took 0.4 s: no search step may end past 0.6 s
    loop = plan.loop(1.0, first=0.1)
    assert loop.fits() and not clock.cut
    loop.expect(0.7)
    assert not loop.fits() and clock.cut
