"""The witnessed lower bound "lower": below the true constant, re-checkable, on R^n or a box.

Oracles independent of lipbound: brute force over activation patterns, Jacobians written out by
hand in numpy (``test_witness.mlp_jacobian``), forward passes of the ``nn.Module`` itself, dense
Jacobians by ``torch.autograd.functional.jacobian`` with an SVD, and a published constant.
"""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import InvalidInput
from lipbound.methods.lower import lower
from lipbound.witness import witness_value

from conftest import jacobian_norm
from test_witness import jacobian_quotient, mlp_jacobian


def one_hidden(n_in: int, hidden: int, n_out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out)).double()


def sampled_norm(net: nn.Sequential, xs: torch.Tensor) -> float:
    """max over the points ``xs`` of the spectral norm of the hand-written Jacobian: a lower bound."""
    return max(np.linalg.norm(mlp_jacobian(net, x), 2) for x in xs)


def module_quotient(net: nn.Module, witness: dict) -> float:
    """The value a witness claims, from the ``nn.Module`` alone: ``||J v|| / ||v||`` with the
    hand-written Jacobian, or the pair quotient of two forward passes."""
    if witness["form"] == "jacobian":
        return jacobian_quotient(net, witness["x"], witness["v"])
    x, y = witness["x"].double(), witness["y"].double()
    with torch.no_grad():
        return ((net.double()(x[None]) - net(y[None])).norm() / (x - y).norm()).item()


def brute_force(net: nn.Module) -> float:
    """max over all 0/1 diagonals of ||W2 D W1||: the constant when every pattern is realisable
    (hidden width <= input dim, generic weights)."""
    w1, w2 = net[0].weight.detach(), net[2].weight.detach()
    h = w1.shape[0]
    return max(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=w1.dtype)) @ w1, ord=2).item()
               for d in itertools.product([0.0, 1.0], repeat=h))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lower_reaches_the_brute_force_constant_from_below(seed):
    net = one_hidden(5, 4, 3, seed)
    true = brute_force(net)
    res = lipbound.lower_bound(net, (5,), time_budget=20, steps=150, starts=32)
    assert res.kind == "witnessed_lower"
    assert res.value <= true * (1 + 1e-9)
    assert res.value >= 0.999 * true  # 16 regions in 5-D: the search finds the best one


def test_witness_is_confirmed_by_the_module_and_beats_sampled_jacobians():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    res = lipbound.lower_bound(net, (6,), time_budget=20, steps=60, starts=16)
    claimed = module_quotient(net, res.witness)
    assert claimed * (1 - 1e-9) <= res.value <= claimed * (1 + 1e-12)  # the margin only lowers it
    if res.witness["form"] == "jacobian":  # ||J v|| <= ||J||, the dense Jacobian's norm
        assert res.value <= jacobian_norm(net, res.witness["x"]) * (1 + 1e-9)
    points = torch.randn(512, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert res.value >= sampled_norm(net, points)  # the search beats 512 random Jacobians


def test_pair_witness_is_the_difference_quotient():
    net = one_hidden(3, 3, 2, 0)
    x, y = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    expected = ((net(x) - net(y)).norm() / (x - y).norm()).item()
    assert witness_value(net, {"form": "pair", "x": x, "y": y}) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InvalidInput):
        witness_value(net, {"form": "nonsense", "x": x})


def test_box_domain_is_respected_and_seeded():
    net = one_hidden(4, 8, 2, 3)
    g = lipbound.as_graph(net, (4,))
    a = lower(g, domain=(0.0, 1.0), time_budget=20, steps=50, starts=16, seed=5)
    b = lower(g, domain=(0.0, 1.0), time_budget=20, steps=50, starts=16, seed=5)
    assert a.value == b.value
    xs = [a.witness["x"]] + ([a.witness["y"]] if a.witness["form"] == "pair" else [])
    for x in xs:
        assert bool((x >= 0).all() and (x <= 1).all())
    assert a.details["domain"].startswith("box")
    claimed = module_quotient(net, a.witness)
    assert claimed * (1 - 1e-9) <= a.value <= claimed
    inside = torch.rand(2048, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sampled_norm(net, inside) * (1 - 1e-12) <= a.value  # the best of 2048 points of the box
    assert a.value <= brute_force(net)  # every pattern, realisable in the box or not: an upper bound
    with pytest.raises(InvalidInput):
        lower(g, domain=(1.0, 0.0))


def test_data_starts_tensor_and_loader():
    net = one_hidden(4, 6, 2, 4)
    g = lipbound.as_graph(net, (4,))
    data = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r1 = lower(g, data=data, time_budget=20, steps=20, starts=8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, torch.zeros(100)), batch_size=32)
    r2 = lower(g, data=loader, time_budget=20, steps=20, starts=8)
    assert r1.details["data_starts"] == r2.details["data_starts"] == 4
    for r in (r1, r2):  # the best data point is a start: the search ends at least as high
        assert sampled_norm(net, data) * (1 - 1e-12) <= r.value <= brute_force(net)
    with pytest.raises(InvalidInput):
        lower(g, data=torch.randn(10, 5))
    with pytest.raises(InvalidInput):
        lower(g, starts=0)


def test_cnn_with_maxpool():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).double()
    res = lipbound.lower_bound(net, (1, 8, 8), time_budget=20, steps=30, starts=8)
    assert res.witness["form"] == "jacobian"  # generic points are inside a region: no pair needed
    x, v = res.witness["x"], res.witness["v"]
    h = 1e-7  # f is affine near x: the central difference on the module is exact up to rounding
    with torch.no_grad():
        fd = ((net((x + h * v)[None]) - net((x - h * v)[None])).norm() / (2 * h * v.norm())).item()
    assert res.value == pytest.approx(fd, rel=1e-6)
    dense = jacobian_norm(net, x)  # power iterations to convergence reach the Jacobian's norm
    assert dense * (1 - 1e-6) <= res.value <= dense * (1 + 1e-9)


def test_lipsdp_random_net_reaches_its_known_constant(realnets):
    import scipy.io

    weights = [torch.as_tensor(w, dtype=torch.float64) for w in
               scipy.io.loadmat(str(realnets / "lipsdp_random_weights.mat"))["weights"].ravel()]
    layers = []
    for i, w in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        lin.weight.data.copy_(w)
        layers += [lin] if i == len(weights) - 1 else [lin, nn.ReLU()]
    res = lipbound.lower_bound(nn.Sequential(*layers), (2,), time_budget=20, steps=30, starts=16)
    assert res.value >= 36.48  # LipSDP-Neuron proves <= 36.482
    assert res.value <= 36.4823


def test_estimate_routes_options_to_the_methods_that_take_them():
    net = one_hidden(3, 3, 2, 7)
    rep = lipbound.estimate(net, (3,), methods=["autolip", "lower"], progress=False, tol=1e-9,
                            domain=(0.0, 1.0), method_options={"lower": {"steps": 20, "starts": 8}})
    low = rep.result("lower")
    assert low.details["steps"] == 20 and low.details["domain"].startswith("box")
    assert bool(((low.witness["x"] >= 0) & (low.witness["x"] <= 1)).all())
    claimed = module_quotient(net, low.witness)
    assert claimed * (1 - 1e-9) <= low.value <= claimed
    inside = torch.rand(2048, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sampled_norm(net, inside) * (1 - 1e-12) <= low.value <= brute_force(net)
    assert rep.lower <= rep.upper


@pytest.mark.parametrize("norm", [2, "inf"])
def test_lower_on_a_ball_stays_inside_and_below_the_layer_norm_product(norm):
    from fractions import Fraction

    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    torch.manual_seed(3)
    center = torch.randn(5, dtype=torch.float64)
    ball = lipbound.Ball(center, 0.05, norm)
    res = lipbound.lower_bound(net, (5,), domain=ball, time_budget=3, starts=16, steps=40)
    upper = float(np.prod([np.linalg.norm(m.weight.detach().numpy(), 2) for m in net if isinstance(m, nn.Linear)]))
    assert 0 < res.value <= upper
    w = res.witness
    for point in [w["x"]] + ([w["y"]] if w["form"] == "pair" else []):
        d = [Fraction(a) - Fraction(c) for a, c in zip(point.double().tolist(), center.tolist())]
        size = sum(v * v for v in d) if norm == 2 else max(abs(v) for v in d)
        assert size <= (Fraction(0.05) ** 2 if norm == 2 else Fraction(0.05))  # exactly inside the ball
    assert witness_value(net, w, domain=ball) == pytest.approx(res.value, rel=1e-12)


def deep_leaky_mlp(depth: int, width: int, seed: int) -> nn.Sequential:
    """``depth`` LeakyReLU(0.1) layers of ``width`` (He-scaled Gaussian weights, so the signal
    neither vanishes nor explodes), input 6, output 3."""
    gen = torch.Generator().manual_seed(seed)
    layers, n_in = [], 6
    for _ in range(depth):
        lin = nn.Linear(n_in, width).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, n_in, generator=gen, dtype=torch.float64) * (2.0 / n_in) ** 0.5)
            lin.bias.copy_(0.1 * torch.randn(width, generator=gen, dtype=torch.float64))
        layers += [lin, nn.LeakyReLU(0.1)]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, 3).double())


def test_deep_mlp_witness_rechecks_and_beats_random_points():
    """A 32-layer net: the rounding-error bound of the re-check must not swamp the witness (it
    once grew by |W| per layer and every witness, hence the bound, was rejected: 0). The search
    must keep at least half of the best of 32 random points' autograd Jacobian norms: its own
    starts are other random points of the same law, and deep nets' norms vary by orders of
    magnitude from point to point, so only a margin, not an ordering, can be asked for."""
    net = deep_leaky_mlp(32, 10, seed=3)
    res = lipbound.lower_bound(net, (6,), steps=6, starts=16, pairs=False, walk_rounds=1)
    assert res.details["form"] == "jacobian" and res.value > 0
    assert witness_value(net, res.witness, (6,)) == pytest.approx(res.value, rel=1e-12)
    assert res.value <= jacobian_norm(net, res.witness["x"]) * (1 + 1e-9)
    points = torch.randn(32, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert res.value >= 0.5 * max(jacobian_norm(net, p) for p in points)
