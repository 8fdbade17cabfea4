"""The fast compositional bound (eclipse-fast): certified, between independent lower bounds and AutoLip.

The lower bounds here never go through lipbound: Jacobians of the original ``nn.Module`` by
``torch.autograd.functional.jacobian`` + SVD, and pair quotients of its outputs. The helpers are
shared with ``test_lipsdp.py``.
"""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods.autolip import autolip
from lipbound.methods.eclipse import INTERIOR, eclipse_fast, fast_multipliers
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.sdp_verify import certify, is_certificate

from conftest import REPO, jacobian_norm

# Activations whose slopes lie on both sides of 0 (LeakyReLU(-1) is |t|), and some with a >= 0.
ACROSS_ZERO = {"GELU": nn.GELU, "SiLU": nn.SiLU, "Mish": nn.Mish, "Hardswish": nn.Hardswish,
               "ELU(-0.5)": lambda: nn.ELU(-0.5), "LeakyReLU(-0.3)": lambda: nn.LeakyReLU(-0.3),
               "Abs": lambda: nn.LeakyReLU(-1.0)}
NON_NEGATIVE = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "LeakyReLU(0.1)": lambda: nn.LeakyReLU(0.1),
                "ELU": nn.ELU}
ALL = {**ACROSS_ZERO, **NON_NEGATIVE}


def mlp(widths, act=nn.ReLU, seed=0, bias=True):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double().eval()


class Block(nn.Module):
    def __init__(self, w, act=nn.ReLU):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(w, w), nn.Linear(w, w), act()

    def forward(self, x):
        return self.act(x + self.fc2(self.act(self.fc1(x))))


def resnet(seed=0, n_in=6, w=5, blocks=3, act=nn.ReLU):
    torch.manual_seed(seed)
    blocks = [Block(w, act) for _ in range(blocks)]
    return nn.Sequential(nn.Linear(n_in, w), act(), *blocks, nn.Linear(w, 3)).double().eval()


class Mixed(nn.Module):
    """Conv1d with padding, BatchNorm, a residual block and a concatenation of two branches, on (2, 5)."""

    def __init__(self, act, act2):
        super().__init__()
        self.stem = nn.Conv1d(2, 3, 3, padding=1)
        self.conv1, self.bn, self.conv2 = nn.Conv1d(3, 3, 3, padding=1), nn.BatchNorm1d(3), nn.Conv1d(3, 3, 1)
        self.side = nn.Conv1d(3, 2, 3, stride=2, padding=1)
        self.head = nn.Linear(3 * 5 + 2 * 3, 2)
        self.act, self.act2 = act(), act2()
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = self.act(self.stem(x))
        h = h + self.conv2(self.act2(self.bn(self.conv1(h))))
        s = self.act2(self.side(h))
        return self.head(torch.cat([h.flatten(1), s.flatten(1)], 1))


def mixed(act, act2=nn.SiLU, seed=0):
    torch.manual_seed(seed)
    return Mixed(act, act2).double().eval()


def exact_one_hidden(net: nn.Sequential) -> float:
    """max over activation patterns of ||W2 D W1||: the true constant of W2 relu(W1 x + b) when
    the hidden width is at most the input dimension (every pattern is realised)."""
    w1, w2 = net[0].weight.detach(), net[2].weight.detach()
    h = w1.shape[0]
    assert h <= w1.shape[1]
    return max(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=w1.dtype)) @ w1, ord=2).item()
               for d in itertools.product([0.0, 1.0], repeat=h))


def derivative_extremes(act: nn.Module) -> tuple[float, float]:
    """Inputs where ``act'`` is (nearly) least and largest: autograd on a grid of [-12, 12] whose
    points avoid 0 and the integers (so no grid point sits on a kink)."""
    t = (torch.arange(-12000, 12000, dtype=torch.float64) * 1e-3 + 1e-3 * (math.sqrt(2) - 1)).requires_grad_(True)
    (d,) = torch.autograd.grad(act(t).sum(), t)
    return t[d.argmin()].item(), t[d.argmax()].item()


def vertex_witness(net: nn.Sequential) -> float:
    """A lower bound of L(f) for ``Linear, act, Linear`` with hidden width <= input dimension, near
    the true constant: for every choice of extreme slope per neuron, an input ``x`` with
    ``W1 x + b1`` at those extremes, and the Jacobian norm of the module there."""
    lo, hi = derivative_extremes(net[1])
    w1, b1 = net[0].weight.detach(), net[0].bias.detach()
    assert w1.shape[0] <= w1.shape[1]
    best = 0.0
    for pattern in itertools.product([lo, hi], repeat=w1.shape[0]):
        z = torch.tensor(pattern, dtype=torch.float64)
        x = torch.linalg.lstsq(w1, (z - b1).unsqueeze(1)).solution[:, 0]
        assert torch.allclose(w1 @ x + b1, z, atol=1e-9)
        best = max(best, jacobian_norm(net, x))
    return best


def witnessed(net, shape, seed=0, n=20, scale=3.0) -> float:
    """max of the Jacobian norm at ``n`` random inputs and of ``n`` pair quotients
    ``||f(x) - f(y)|| / ||x - y||`` (pairs 1e-3 apart: float64 rounding is ~1e-13 relative)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, *shape, generator=g, dtype=torch.float64) * scale
    best = max(jacobian_norm(net, x) for x in xs)
    dirs = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    ys = xs + 1e-3 * dirs / dirs.flatten(1).norm(dim=1).reshape(-1, *[1] * len(shape))
    with torch.no_grad():
        quot = (net(xs) - net(ys)).flatten(1).norm(dim=1) / (xs - ys).flatten(1).norm(dim=1)
    return max(best, quot.max().item() * (1 - 1e-9))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_above_exact_one_hidden_layer(seed):
    net = mlp([8, 6, 3], seed=seed)
    g = lipbound.as_graph(net, (8,))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper" and res.details["verified"]
    assert res.value >= exact_one_hidden(net) * (1 - 1e-12)
    assert res.value <= autolip(g).value


@pytest.mark.parametrize("name", list(ACROSS_ZERO) + ["ReLU", "LeakyReLU(0.1)"])
def test_one_hidden_layer_near_the_truth(name):
    """The vertex witness is (up to the grid) the true constant; eclipse-fast is above it and
    within 31% of it on these nets (measured: at most 30.6%, for Abs where it equals AutoLip), and
    not above AutoLip (but for the step ``INTERIOR`` into the feasible set)."""
    for seed in (0, 1):
        net = mlp([6, 5, 3], act=ALL[name], seed=seed)
        g = lipbound.as_graph(net, (6,))
        res = eclipse_fast(g)
        assert res.kind == "certified_upper"
        truth = vertex_witness(net)
        assert truth <= res.value <= 1.31 * truth
        assert res.value <= autolip(g).value * (1 + INTERIOR)


@pytest.mark.parametrize("name", list(ALL))
def test_deep_chains_between_witness_and_autolip(name):
    net = mlp([7, 12, 12, 12, 2], act=ALL[name], seed=3)
    g = lipbound.as_graph(net, (7,))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper"
    assert witnessed(net, 7) <= res.value
    if name != "Abs":  # slopes centred on 0: the recursion is looser than AutoLip there (1.14x on this net)
        assert res.value <= autolip(g).value


def test_abs_by_hand():
    """f(x) = |x| + |-x| = 2|x| (LeakyReLU(-1) is |t|): L = 2. The slopes [-1, 1] are essential:
    with any slope range of one sign the sector class would allow at most |W2 W1| = 0."""
    net = nn.Sequential(nn.Linear(1, 2, bias=False), nn.LeakyReLU(-1.0), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    res = eclipse_fast(lipbound.as_graph(net, (1,)))
    assert res.kind == "certified_upper"
    assert 2.0 <= res.value <= 2.0 * (1 + 1e-5)


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU, nn.Hardswish])
def test_residual_nets_certified_above_witness(act):
    net = resnet(act=act)
    g = lipbound.as_graph(net, (6,))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper"
    assert witnessed(net, 6) <= res.value <= autolip(g).value


@pytest.mark.parametrize("act, act2", [(nn.GELU, nn.SiLU), (nn.ReLU, nn.Mish)])
def test_mixed_layers_above_witness(act, act2):
    net = mixed(act, act2)
    g = lipbound.as_graph(net, (2, 5))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper"
    assert witnessed(net, (2, 5)) <= res.value <= autolip(g).value


def test_recursion_is_a_checked_certificate():
    for act in (nn.ReLU, nn.GELU):
        g = lipbound.as_graph(mlp([5, 9, 9, 4], act=act, seed=4), (5,))
        lmi = lmi_of_graph(g)
        t, rho = fast_multipliers(lmi)
        assert is_certificate(lmi, rho * (1 + 2 * INTERIOR), t)  # feasible for (1 + INTERIOR) rho, with margin
        cert = certify(lmi, t, claimed_rho=rho)
        assert cert.rho <= rho * (1 + 2 * INTERIOR)  # the recomputed least rho is at most the recursion's
        assert not is_certificate(lmi, cert.rho * 0.999, t)  # and it is tight for these multipliers


def test_refuses_max_pooling():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    with pytest.raises(lipbound.UnsupportedOperation, match="MaxPool"):
        eclipse_fast(lipbound.as_graph(net, (1, 8, 8)))


def test_small_convolution_is_materialised():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    g = lipbound.as_graph(net, (1, 6, 6))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper"
    assert witnessed(net, (1, 6, 6), n=10, scale=1.0) <= res.value <= autolip(g).value


def test_registered_and_in_estimate():
    rep = lipbound.estimate(mlp([4, 8, 2]), (4,), methods=("eclipse-fast", "autolip"), progress=False)
    assert rep.result("eclipse-fast").value <= rep.result("autolip").value
    assert rep.upper == rep.result("eclipse-fast").value


def test_lipsdp_random_weights_close_to_layer(realnets):
    sys.path.insert(0, str(REPO / "examples"))
    from realnets import lipsdp_mat

    net, shape = lipsdp_mat(realnets / "lipsdp_random_weights.mat")
    res = eclipse_fast(lipbound.as_graph(net, shape))
    # the true constant is 36.48223 (MANIFEST); LipSDP-Layer publishes 39.839
    assert 36.48 <= res.value <= 39.839 * 1.01
    assert math.isfinite(res.details["rho"]) and np.isfinite(res.details["verify_seconds"])


def _counted_recursions(monkeypatch) -> list:
    """Every run of the recursion from now on, recorded (the memo of :func:`fast_multipliers` cleared)."""
    from lipbound.methods import eclipse

    calls, run = [], eclipse._recursion
    eclipse._RUNS.clear()
    monkeypatch.setattr(eclipse, "_recursion", lambda *args: calls.append(args[1]) or run(*args))
    return calls


def test_reused_multipliers_equal_fresh_ones(monkeypatch):
    """A second call on an LMI of the same content (built again from the graph) runs no recursion
    and returns exactly what a fresh call (memo cleared) returns; a smaller search reuses what it can."""
    from lipbound.methods import eclipse
    from lipbound.methods.eclipse import balanced

    g = lipbound.as_graph(mlp([5, 9, 7, 4], act=lambda: nn.LeakyReLU(0.1), seed=5), (5,))
    calls = _counted_recursions(monkeypatch)
    lmi = balanced(lmi_of_graph(g))
    t1, rho1 = fast_multipliers(lmi)
    assert len(calls) > 5
    calls.clear()
    t2, rho2 = fast_multipliers(balanced(lmi_of_graph(g)))
    assert calls == [1.0]  # balanced()'s own recursion only
    t_small, rho_small = fast_multipliers(lmi, grid=3, evaluations=5)
    eclipse._RUNS.clear()
    t3, rho3 = fast_multipliers(balanced(lmi_of_graph(g)))
    eclipse._RUNS.clear()
    t4, rho4 = fast_multipliers(balanced(lmi_of_graph(g)), grid=3, evaluations=5)
    assert rho1 == rho2 == rho3 and np.array_equal(t1, t2) and np.array_equal(t2, t3)
    assert rho_small == rho4 and np.array_equal(t_small, t4)
    t5 = fast_multipliers(lmi)[0]
    t5[:] = 0.0  # a caller's changes do not reach the memo
    assert np.array_equal(fast_multipliers(lmi)[0], t1)


@pytest.mark.parametrize("change", ["weight", "sector", "output"])
def test_multiplier_memo_tells_lmis_apart(monkeypatch, change):
    """An LMI that differs in one weight, one neuron's sector or the output map gets its own recursions."""
    g = lipbound.as_graph(mlp([5, 9, 7, 4], seed=6), (5,))
    calls = _counted_recursions(monkeypatch)
    lmi = lmi_of_graph(g)
    t, rho = fast_multipliers(lmi)
    fresh = len(calls)
    other = lmi_of_graph(g)
    if change == "weight":
        other.blocks[2].pre[1] = other.blocks[2].pre[1].copy()
        other.blocks[2].pre[1][0, 0] *= 1.5
    elif change == "sector":
        other.blocks[1].lo = other.blocks[1].lo.copy()
        other.blocks[1].lo[3] = 0.5
    else:
        other.out = {r: 2.0 * m for r, m in other.out.items()}
    before = len(calls)
    t_other, rho_other = fast_multipliers(other)
    assert len(calls) - before == fresh
    assert rho_other != rho


def test_lipsdp_after_eclipse_fast_reuses_its_start(monkeypatch):
    """As in a default run: lipsdp after eclipse-fast runs no recursion of its own but balanced()'s,
    and gives exactly the value it gives from a fresh start."""
    from lipbound.methods import eclipse
    from lipbound.methods.lipsdp import lipsdp

    g = lipbound.as_graph(mlp([6, 10, 8, 3], seed=7), (6,))
    calls = _counted_recursions(monkeypatch)
    eclipse_fast(g)
    calls.clear()
    reused = lipsdp(g, solver="ipm")
    assert calls == [1.0]
    eclipse._RUNS.clear()
    fresh = lipsdp(g, solver="ipm")
    assert len(calls) > 2
    assert reused.value == fresh.value and reused.details["iterations"] == fresh.details["iterations"]


@pytest.mark.parametrize("case", ["leaky mlp", "chain cnn", "residual cnn"])
def test_balancing_hands_its_recursion_to_the_start(monkeypatch, case):
    """The start at ``theta = 1`` on the balanced LMI costs no second recursion (the blocks path's
    start: one recursion in all), and it is the recursion a fresh run on the balanced LMI gives
    (oracle: :func:`_recursion` itself, run again on the rescaled LMI)."""
    from lipbound.methods import eclipse
    from lipbound.methods.eclipse import balanced

    from test_lipsdp_conv import residual_cnn, small_cnn

    graph = {"leaky mlp": lambda: lipbound.as_graph(mlp([5, 9, 7, 4], act=lambda: nn.LeakyReLU(0.1), seed=5), (5,)),
             "chain cnn": lambda: lipbound.as_graph(*small_cnn(0)),
             "residual cnn": lambda: lipbound.as_graph(*residual_cnn(1))}[case]()
    calls = _counted_recursions(monkeypatch)
    lmi = balanced(lmi_of_graph(graph, max_work=math.inf, eliminate="constant"))
    t, rho = fast_multipliers(lmi, grid=0, evaluations=1)
    assert calls == [1.0]
    t_fresh, rho_fresh = eclipse._recursion(lmi, 1.0, lmi.is_chain(), {})
    assert rho == pytest.approx(rho_fresh, rel=1e-12)
    np.testing.assert_allclose(t, t_fresh, rtol=1e-12)
