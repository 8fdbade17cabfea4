"""Certified SeqLip on an input region (issue 10), against oracles written here.

The localized graphs are built by hand: the pre-activation bounds come from plain float64 interval
arithmetic through the MLP (widened by a relative 1e-9), an independent sound oracle, and the
per-neuron slope intervals of the brute force are derived in this file from the activation's
definition. Checked: (a) the local bound is above every Jacobian norm and pair quotient sampled in
the region; (b) it is at most the global certified SeqLip; (c) on one hidden layer it is the
brute-force maximum of ``||W2 D W1||`` over the vertices of the slope box; (d) a wide layer with
few unstable neurons is solved exactly, and fast."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.graph.ir import Activation
from lipbound.methods.region import Box
from lipbound.methods.seqlip import seqlip

FAST = {"time_budget": 5.0, "pair_budget": 2.0}
ACTS = {"relu": (nn.ReLU(), lambda z: (z > 0).astype(float)),
        "leaky": (nn.LeakyReLU(0.1), lambda z: np.where(z > 0, 1.0, 0.1)),
        "tanh": (nn.Tanh(), lambda z: 1 - np.tanh(z) ** 2)}


def mlp(g: torch.Generator, widths: list[int], act: nn.Module, bias_scale: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), act]
    net = nn.Sequential(*layers[:-1]).double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64) * bias_scale)
    return net


def interval_bounds(net: nn.Sequential, low: np.ndarray, high: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sound bounds ``(l, u)`` of every activation's input over the box: interval arithmetic in
    float64, each bound widened by 1e-9 relative (plus 1e-12) to cover rounding."""
    l, u, out = low, high, []
    for m in net:
        if isinstance(m, nn.Linear):
            W, b = m.weight.detach().numpy(), m.bias.detach().numpy()
            Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
            l, u = Wp @ l + Wn @ u + b, Wp @ u + Wn @ l + b
            pad = 1e-9 * np.maximum(np.abs(l), np.abs(u)) + 1e-12
            l, u = l - pad, u + pad
        else:  # monotone activations: the image of the interval
            out.append((l, u))
            fn = lambda v: m(torch.as_tensor(v)).numpy()  # noqa: E731
            l, u = fn(l), fn(u)
    return out


def slope_box(name: str, l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Range of the derivative on ``[l_i, u_i]``, from the definition: ReLU/LeakyReLU are 0.1 or
    0 left of 0 and 1 right of it; tanh' is even, decreasing in ``|z|``."""
    if name == "tanh":
        d = ACTS["tanh"][1]
        near = np.where((l <= 0) & (u >= 0), 0.0, np.minimum(np.abs(l), np.abs(u)))
        return np.minimum(d(l), d(u)), d(near)
    neg = 0.1 if name == "leaky" else 0.0
    return np.where(u <= 0, neg, np.where(l >= 0, 1.0, neg)), np.where(l >= 0, 1.0, np.where(u <= 0, neg, 1.0))


def localized(net: nn.Sequential, low: np.ndarray, high: np.ndarray):
    graph = lipbound.as_graph(net, (low.size,))
    acts = [n for n in graph.nodes.values() if isinstance(n, Activation)]
    bounds = interval_bounds(net, low, high)
    assert len(acts) == len(bounds)
    pre = {a.name: (torch.as_tensor(l).reshape(a.shape), torch.as_tensor(u).reshape(a.shape))
           for a, (l, u) in zip(acts, bounds)}
    box = Box(torch.as_tensor(low), torch.as_tensor(high))
    return graph, graph.localized(box, pre), bounds


def sampled_constant(net: nn.Sequential, low: np.ndarray, high: np.ndarray, g: torch.Generator, n: int = 200) -> float:
    """The largest Jacobian norm (dense, float64 autograd) and pair quotient sampled in the box."""
    lo, hi = torch.as_tensor(low), torch.as_tensor(high)
    x = lo + (hi - lo) * torch.rand((n, lo.numel()), generator=g, dtype=torch.float64)
    best = 0.0
    for xi in x[: n // 4]:
        J = torch.autograd.functional.jacobian(net, xi)
        best = max(best, torch.linalg.matrix_norm(J, ord=2).item())
    with torch.no_grad():
        y = lo + (hi - lo) * torch.rand((n, lo.numel()), generator=g, dtype=torch.float64)
        q = (net(x) - net(y)).norm(dim=1) / (x - y).norm(dim=1)
    return max(best, q.max().item())


def random_box(g: torch.Generator, n_in: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    c = torch.randn(n_in, generator=g, dtype=torch.float64).numpy()
    return c - eps, c + eps


@pytest.mark.parametrize("name", list(ACTS))
def test_local_bound_is_sound_and_below_the_global_one(name):
    """(a) above every sampled Jacobian norm and pair quotient in the box; (b) at most the global
    certified SeqLip; and strictly below it when the box is small (most neurons stable)."""
    act = ACTS[name][0]
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        widths = [4 + seed % 3, 10, 8 + seed % 4, 3]
        net = mlp(g, widths, act)
        eps = [0.02, 0.1, 0.5][seed % 3]
        low, high = random_box(g, widths[0], eps)
        graph, local_graph, _ = localized(net, low, high)
        local = seqlip(local_graph, **FAST)
        glob = seqlip(graph, **FAST)
        assert local.kind == "certified_upper"
        truth = sampled_constant(net, low, high, g)
        assert local.value >= truth * (1 - 1e-9), (seed, local.value, truth)
        assert local.value <= glob.value * (1 + 1e-9)
        if eps <= 0.1:
            assert local.value < 0.9 * glob.value


def brute_force(W1: np.ndarray, W2: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """``max ||W2 diag(d) W1||_2`` over ``d_i in {lo_i, hi_i}`` (stable neurons fixed)."""
    free = np.nonzero(hi > lo)[0]
    assert free.size <= 14
    best = 0.0
    for bits in itertools.product((0, 1), repeat=free.size):
        d = lo.copy()
        d[free] = np.where(np.array(bits, dtype=bool), hi[free], lo[free])
        best = max(best, np.linalg.norm((W2 * d) @ W1, 2))
    return best


@pytest.mark.parametrize("name", list(ACTS))
def test_one_hidden_layer_is_the_vertex_maximum_of_the_slope_box(name):
    """(c) the exact value of the relaxation: the brute force over the vertices of the per-neuron
    slope box (derived here from the oracle's pre-activation bounds)."""
    act = ACTS[name][0]
    for seed in range(6):
        g = torch.Generator().manual_seed(100 + seed)
        n_in, h, n_out = 3 + seed % 3, 12, 2 + seed % 3
        net = mlp(g, [n_in, h, n_out], act)
        low, high = random_box(g, n_in, [0.05, 0.3, 1.0][seed % 3])
        _, local_graph, bounds = localized(net, low, high)
        lo, hi = slope_box(name, *bounds[0])
        truth = brute_force(net[0].weight.detach().numpy(), net[2].weight.detach().numpy(), lo, hi)
        result = seqlip(local_graph, **FAST)
        assert result.value >= truth * (1 - 1e-12)
        assert result.value == pytest.approx(truth, rel=1e-6), (seed, result.value, truth)


def test_a_wide_layer_with_few_unstable_neurons_is_solved_exactly_and_fast():
    """(d) 300 hidden neurons, 12 of them unstable on the box: the pair enumerates the 12 free
    neurons with the 288 stable ones as a constant, and reaches the brute force."""
    g = torch.Generator().manual_seed(7)
    n_in, h, n_out, eps = 6, 300, 4, 0.05
    net = mlp(g, [n_in, h, n_out], nn.ReLU())
    c = torch.randn(n_in, generator=g, dtype=torch.float64)
    W1 = net[0].weight.detach()
    radius = eps * W1.abs().sum(1)  # half-width of each pre-activation over the box
    sign = torch.where(torch.rand(h, generator=g) < 0.5, -1.0, 1.0).double()
    offset = torch.where(torch.arange(h) < 12, 0.3 * sign, (2 + torch.rand(h, generator=g)) * sign) * radius
    with torch.no_grad():
        net[0].bias.copy_(offset - W1 @ c)  # pre-activation at c: +-0.3 radius (unstable), else >= 2 radius
    low, high = (c - eps).numpy(), (c + eps).numpy()
    _, local_graph, bounds = localized(net, low, high)
    lo, hi = slope_box("relu", *bounds[0])
    assert int((hi > lo).sum()) == 12
    truth = brute_force(W1.numpy(), net[2].weight.detach().numpy(), lo, hi)
    result = seqlip(local_graph, time_budget=10.0, pair_budget=10.0)
    (pair,) = result.details["chains"][0]["pairs"]
    assert pair["status"] == "exact" and pair["unstable"] == 12 and pair["info"]["free"] == 12
    assert result.value == pytest.approx(truth, rel=1e-6) and result.value >= truth * (1 - 1e-12)
    assert pair["seconds"] < 2.0


def test_a_layer_stably_off_makes_the_chain_constant():
    """Every ReLU of the hidden layer off on the box: the net is constant there, the bound is 0."""
    g = torch.Generator().manual_seed(3)
    net = mlp(g, [3, 8, 2], nn.ReLU())
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    low, high = random_box(g, 3, 0.1)
    _, local_graph, _ = localized(net, low, high)
    assert seqlip(local_graph, **FAST).value == 0.0


def test_without_a_region_the_numbers_are_the_global_ones():
    """A graph localized with no pre bounds reads the global slope range: the same value."""
    g = torch.Generator().manual_seed(5)
    net = mlp(g, [4, 9, 7, 3], nn.LeakyReLU(0.2))
    graph = lipbound.as_graph(net, (4,))
    assert seqlip(graph.localized(None, {}), **FAST).value == seqlip(graph, **FAST).value
    assert not math.isnan(seqlip(graph, **FAST).value)


def test_a_pair_cut_by_its_budget_stays_certified():
    """An enumeration stopped by the time budget returns the relaxation's bound on the whole box:
    above the brute-force maximum, marked bounded and stopped; SeqLip's row says ``cut``."""
    from lipbound.methods import seqlip_solvers as S

    g = torch.Generator().manual_seed(11)
    A = torch.randn((10, 14), generator=g, dtype=torch.float64)
    B = torch.randn((14, 9), generator=g, dtype=torch.float64)
    lo, hi = torch.zeros(14, dtype=torch.float64), torch.ones(14, dtype=torch.float64)
    truth = brute_force(B.numpy(), A.numpy(), lo.numpy(), hi.numpy())
    cut = S.certified_pair(A, B, lo, hi, time_budget=1e-9)
    assert cut.status == "bounded" and cut.info["stopped"] == "time_budget"
    assert cut.upper >= truth * (1 - 1e-12) and cut.lower <= truth * (1 + 1e-12)
    full = S.certified_pair(A, B, lo, hi, time_budget=30.0)
    assert full.status == "exact" and full.upper == pytest.approx(truth, rel=1e-10)

    net = mlp(g, [5, 14, 4], nn.ReLU())
    result = seqlip(lipbound.as_graph(net, (5,)), time_budget=5.0, pair_budget=1e-9)
    (pair,) = result.details["chains"][0]["pairs"]
    assert "cut" in pair and pair["status"] in ("bounded", "fallback")
    assert result.value >= sampled_constant(net, -np.ones(5), np.ones(5), g)
