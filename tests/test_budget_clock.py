"""The wall clock on a slow or loaded machine (issue 13, item 4): a step that would not finish in
time is not started, a long loop stops between blocks, and what comes back is a certified value
that was proved, never the unchecked value of a cut step.

The slowness is simulated by monkeypatching a step with one that takes longer (sleeping between
:func:`~lipbound.methods.budget.checkpoint` calls, as the block loops do). The oracle for the
values is the exact constant of :mod:`test_budgets_overrun`'s CNN, by enumeration of its 2^16
activation patterns in numpy, independently of the methods.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import scipy.linalg
import torch

import lipbound
from lipbound.methods import eclipse, lipsdp_banded, lipsdp_conv
from lipbound.methods.autolip import autolip
from lipbound.methods.budget import Clock, TimeUp, cancel_after, checkpoint
from lipbound.methods.lipsdp import lipsdp

from conftest import jacobian_norm
from test_budgets_overrun import case  # noqa: F401  (the fixture: graph, exact constant)

GRACE = 1.0  # seconds beyond the budget a call may take (the machine is shared)


@pytest.fixture(scope="module", autouse=True)
def warm(case):  # noqa: F811
    """One untimed run of each path first: the first call pays one-off imports and set-ups."""
    graph, _ = case
    lipsdp(graph, solver="blocks", time_budget=0.5)
    lipbound.estimate(graph, methods=["lipsdp", "autolip"], time_budget=1.0, method_options={"lipsdp": {"solver": "blocks"}})


def _slow(seconds: float):
    """A stand-in for a long block loop: sleeps ``seconds`` in small slices, at a checkpoint each."""
    def run(*args, **kwargs):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            checkpoint()
            time.sleep(0.01)
        raise AssertionError("a slow step ran to its end: the clock did not stop it")
    return run


def test_checkpoint_raises_only_under_an_expired_clock_in_force():
    checkpoint()  # no clock in force: nothing happens
    with cancel_after(Clock(60.0)):
        checkpoint()
        with pytest.raises(TimeUp):
            with cancel_after(Clock(0.0)):
                checkpoint()
        checkpoint()  # the inner clock is no longer in force
    outer = Clock(0.0)
    with cancel_after(outer), cancel_after(Clock(60.0)):
        with pytest.raises(TimeUp):  # an outer clock that expired stops inner steps too
            checkpoint()
    assert outer.cut


def test_affords_uses_the_pace_measured_so_far():
    clock = Clock(2.0)
    assert clock.pace() == 1.0 and clock.affords(1.5)
    with clock.timed(0.1):
        time.sleep(0.6)  # four times slower than predicted with the step's overhead (0.15 s), at least
    assert clock.pace() >= 3.9
    assert not clock.affords(0.5) and clock.cut  # 0.55 s with the overhead would take 2.1 s or more
    assert Clock(2.0).affords(1.5)


@pytest.mark.parametrize("slow_step", ["certify", "balanced"])
def test_blocks_path_stops_near_its_budget_with_a_certified_value(case, monkeypatch, slow_step):  # noqa: F811
    graph, exact = case
    monkeypatch.setattr(lipsdp_conv, slow_step, _slow(8.0))
    budget = 1.0
    start = time.perf_counter()
    res = lipsdp(graph, solver="blocks", time_budget=budget)
    wall = time.perf_counter() - start
    assert wall <= 1.1 * budget + GRACE
    assert res.details["stopped_by"] == "time" and res.details["fallback"] == "autolip"
    assert res.kind == "certified_upper" and res.details["verified"] is False
    assert res.value >= exact * (1 - 1e-9)


def test_a_step_the_pace_cannot_afford_is_not_started(case, monkeypatch):  # noqa: F811
    """The plan holds the start in 5 s; the LMI's construction (priced at next to nothing) takes
    0.5 s, and the recursion, priced here at 4.7 s, then no longer fits in the 4.5 s left even at
    the nominal rates: it is not started, nor is the check, and the call returns well within its
    budget, with a certified value."""
    graph, exact = case
    build = lipsdp_conv.lmi_of_graph

    def slow_build(*args, **kwargs):
        out = build(*args, **kwargs)
        time.sleep(0.5)
        return out

    started = []
    monkeypatch.setattr(lipsdp_conv, "lmi_of_graph", slow_build)
    monkeypatch.setattr(lipsdp_conv, "recursion_work", lambda structure: 4.7 * lipsdp_conv.BLOCKS_RATE)
    monkeypatch.setattr(lipsdp_conv, "balanced", lambda lmi: started.append("balanced"))
    monkeypatch.setattr(lipsdp_conv, "certify", lambda *a, **k: started.append("certify"))
    res = lipsdp(graph, solver="blocks", time_budget=5.0)
    assert not started and res.details["stopped_by"] == "time"
    assert res.seconds < 2.0
    assert res.kind == "certified_upper" and res.value >= exact * (1 - 1e-9)


def test_the_pace_prices_steps_that_cannot_be_stopped_only():
    """After a step measured at ~10x its price, a 1 s step that nothing stops inside is refused with
    4.5 s left (10 s at that pace); an interruptible one (the recursion, the check: checkpoints
    between blocks) is priced at the nominal rates and starts."""
    clock = Clock(5.0)
    with clock.timed(0.0):
        time.sleep(0.5)
    ran, info = [], {}
    with pytest.raises(TimeUp):
        lipsdp_conv._step(clock, info, "reduce", 1.0, lambda: ran.append("reduce"))
    assert not ran and clock.cut
    lipsdp_conv._step(clock, info, "recursion", 1.0, lambda: ran.append("recursion"), interruptible=True)
    assert ran == ["recursion"] and info["steps"]["recursion"]["seconds"] >= 0


def test_without_a_cut_the_blocks_path_certifies_below_autolip(case):  # noqa: F811
    """The clock costs nothing when there is time: the start is proved, below AutoLip."""
    graph, exact = case
    res = lipsdp(graph, solver="blocks", time_budget=30.0)
    assert res.details["stopped_by"] != "time" and res.details["verified"] is True
    assert exact * (1 - 1e-9) <= res.value <= autolip(graph).value


def test_default_run_keeps_its_budget_when_lipsdp_is_slow(case, monkeypatch):  # noqa: F811
    graph, exact = case
    monkeypatch.setattr(lipsdp_conv, "certify", _slow(8.0))
    budget = 3.0
    start = time.perf_counter()
    rep = lipbound.estimate(graph, methods=["lipsdp", "autolip"], time_budget=budget,
                            method_options={"lipsdp": {"solver": "blocks"}})
    assert time.perf_counter() - start <= 1.1 * budget + GRACE
    assert rep.upper >= exact * (1 - 1e-9)


def _deep_mlp() -> torch.nn.Module:
    torch.manual_seed(5)
    layers: list[torch.nn.Module] = [torch.nn.Linear(4, 8), torch.nn.ReLU()]
    for _ in range(9):
        layers += [torch.nn.Linear(8, 8), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(8, 2)).double()


def _sleepy(fn, seconds: float):
    def run(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return run


@pytest.mark.parametrize("loop", ["recursion", "elimination"])
def test_the_real_block_loops_stop_between_blocks(monkeypatch, loop):
    """Ten activation blocks, each block of ECLipsE-Fast's recursion (its top eigenvalue) or of the
    block elimination (its Cholesky factor) made 0.4 s slower: uncut, a pass takes 4 s; the clock
    stops it between blocks, and the value is certified and above the sampled Jacobian norms."""
    net = _deep_mlp()
    graph = lipbound.as_graph(net, (4,))
    lipsdp(graph, solver="blocks", time_budget=0.5)  # untimed: imports and one-off set-ups
    eclipse._RUNS.clear()  # no remembered recursion: it runs again
    if loop == "recursion":
        monkeypatch.setattr(eclipse, "_top_eigenvalue", _sleepy(eclipse._top_eigenvalue, 0.4))
    else:
        monkeypatch.setattr(lipsdp_banded, "sla", SimpleNamespace(
            cholesky=_sleepy(scipy.linalg.cholesky, 0.4), solve_triangular=scipy.linalg.solve_triangular,
            eigh=scipy.linalg.eigh))
    budget = 1.0
    start = time.perf_counter()
    res = lipsdp(graph, solver="blocks", time_budget=budget)
    assert time.perf_counter() - start <= 1.1 * budget + GRACE
    assert res.details["stopped_by"] == "time" and res.kind == "certified_upper"
    torch.manual_seed(0)
    sampled = max(jacobian_norm(net, torch.randn(4, dtype=torch.float64)) for _ in range(30))
    assert res.value >= sampled
