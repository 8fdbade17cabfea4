"""Every CNN method inside its time budget, with progress bars (issue 13, item 4).

Oracles (nothing here calls the code under test to get the expected number):

* ``exact_constant``: a conv-ReLU-linear net whose hidden width (9) is below its input dimension
  (49), with generic biases, realises every activation pattern, so its Lipschitz constant is
  ``max_D ||W2 D W1||`` over the 2^9 vertices, by brute force with numpy SVDs of the layers
  materialised by autograd (DESIGN §5, tests/oracles.py ``pair_max``).
* ``witnessed_lower``: the largest Jacobian norm and pair quotient at sampled inputs of a deeper
  CNN, a lower bound that every certified value must reach.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods import METHODS
from lipbound.methods.work_plan import dense_norm_seconds
from oracles import dense_linear, pair_max, witnessed_lower


def _shallow() -> nn.Sequential:
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(9, 2)).double()


def exact_constant(net: nn.Sequential) -> float:
    """``max_D ||W2 D W1||`` by brute force (module docstring)."""
    conv, lin = net[0], net[3]
    w1 = dense_linear(lambda x: conv(x) - conv(torch.zeros_like(x)), (1, 7, 7))
    return pair_max(lin.weight.detach().numpy(), w1, 0.0, 1.0)[0]


def _deep() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 3)).double()


TINY = 0.0  # seconds: the clock has expired before the first layer


@pytest.mark.parametrize("method", ["autolip", "seqlip", "eclipse-fast"])
def test_a_tiny_budget_stops_on_time_and_stays_certified(method):
    """Cut by a tiny budget, a certified method returns at once, says ``stopped_by == "time"``,
    and its value is still above the exact constant (shallow CNN) and the sampled lower bound
    (deeper CNN). Unbudgeted, the shallow net's SeqLip is the exact constant."""
    for net, shape, floor in ((_shallow(), (1, 7, 7), exact_constant), (_deep(), (1, 9, 9), None)):
        floor = floor(net) if floor else witnessed_lower(net, shape)
        graph = lipbound.as_graph(net, shape)
        METHODS[method](lipbound.as_graph(net, shape), seed=0, progress=False, time_budget=TINY)  # one-off costs
        t0 = time.perf_counter()
        res = METHODS[method](graph, seed=0, progress=False, time_budget=TINY)
        assert time.perf_counter() - t0 < 1.0
        assert res.details["stopped_by"] == "time"
        assert res.kind == "certified_upper" and res.value >= floor * (1 - 1e-9)
    full = METHODS["seqlip"](lipbound.as_graph(_shallow(), (1, 7, 7)), seed=0, progress=False)
    assert full.details["stopped_by"] == "converged"
    assert full.value == pytest.approx(exact_constant(_shallow()), rel=1e-7)


@pytest.mark.parametrize("method", ["seqlip-greedy", "seqlip-topk", "autolip-power"])
def test_estimates_cut_by_a_tiny_budget_say_so(method):
    res = METHODS[method](lipbound.as_graph(_deep(), (1, 9, 9)), seed=0, progress=False, time_budget=TINY)
    assert res.details["stopped_by"] == "time" and res.value > 0


def test_a_pair_search_stops_near_its_budget():
    """SeqLip's branch and bound on a pair of 64 unstable neurons (no enumeration, a work cap it
    cannot reach in 0.5 s) stops within a second of the budget, cut by time, its bound still
    above the sampled lower bound."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10)).double()
    graph = lipbound.as_graph(net, (1, 8, 8))
    t0 = time.perf_counter()
    res = METHODS["seqlip"](graph, seed=0, progress=False, time_budget=0.5, enumerate_max=4, pair_work=1e15)
    assert time.perf_counter() - t0 < 1.5
    assert res.details["stopped_by"] == "time"
    assert res.value >= witnessed_lower(net, (1, 8, 8)) * (1 - 1e-9)


@pytest.mark.parametrize("method,bar", [("seqlip-topk", "top-"), ("seqlip", "seqlip (certified)"),
                                        ("seqlip-greedy", "seqlip (greedy)"), ("autolip-power", "layer norms")])
def test_progress_bars_on_stderr_only_when_asked(method, bar, capsys):
    graph = lipbound.as_graph(_deep(), (1, 9, 9))
    METHODS[method](graph, seed=0, progress=True, time_budget=1.0)
    assert bar in capsys.readouterr().err
    METHODS[method](lipbound.as_graph(_deep(), (1, 9, 9)), seed=0, progress=False, time_budget=1.0)
    assert capsys.readouterr().err == ""


def test_eclipse_fast_says_what_stopped_it():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    res = METHODS["eclipse-fast"](lipbound.as_graph(net, (4,)), seed=0, progress=False)
    assert res.details["stopped_by"] == "iterations"


def _wide_conv() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 3)), (4, 16, 16)


@pytest.mark.parametrize("certified", [True, False])
def test_autolip_numbers_do_not_depend_on_a_generous_budget(certified):
    net, shape = _wide_conv()
    runs = [METHODS["autolip" if certified else "autolip-power"](lipbound.as_graph(net, shape), seed=0,
                                                                 progress=False, time_budget=budget)
            for budget in (None, 600.0)]
    assert runs[0].value == runs[1].value
    assert [r.power for r in runs[0].layers] == [r.power for r in runs[1].layers]
    assert runs[1].details["stopped_by"] in ("converged", "iterations")


def test_autolip_under_a_binding_budget_repeats_and_stays_certified():
    """A budget below the predicted cost of the convolution's materialised certificate: the plan
    (sizes only) gives it the DFT bound, so two runs agree exactly and say ``"work"``; the value is
    above the sampled lower bound and at least the unbudgeted one."""
    net, shape = _wide_conv()
    conv_op = lipbound.as_graph(net, shape).fused().affine_nodes()[0].op
    budget = dense_norm_seconds(conv_op) / 2
    assert budget > 0.1  # the run itself takes milliseconds: the clock does not act
    runs = [METHODS["autolip"](lipbound.as_graph(net, shape), seed=0, progress=False, time_budget=budget)
            for _ in range(2)]
    assert runs[0].value == runs[1].value
    assert all(r.details["stopped_by"] == "work" and r.details["planned"] for r in runs)
    full = METHODS["autolip"](lipbound.as_graph(net, shape), seed=0, progress=False)
    assert runs[0].value >= full.value * (1 - 1e-12) >= witnessed_lower(net.double(), shape) * (1 - 1e-9)
