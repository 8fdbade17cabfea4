"""The exact constant of small ReLU networks against independent oracles."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.methods.exact import exact
from lipbound.witness import witness_value

from test_lower import brute_force, one_hidden


def mlp(arch, seed, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(arch) - 1):
        layers.append(nn.Linear(arch[i], arch[i + 1]))
        if i < len(arch) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def enumerate_regions(net, slope=0.0, box=None):
    """Independent oracle: every full sign pattern, its region's existence by one LP
    (max t s.t. s_j z_j(x) >= t, t <= 1, x in the box), the max Jacobian norm of those that exist."""
    lins = [m for m in net if isinstance(m, nn.Linear)]
    ws = [m.weight.detach().numpy() for m in lins]
    bs = [m.bias.detach().numpy() for m in lins]
    n = ws[0].shape[1]
    sizes = [w.shape[0] for w in ws[:-1]]
    best = 0.0
    for pattern in itertools.product([1, -1], repeat=sum(sizes)):
        pattern = np.array(pattern)
        a, c = np.eye(n), np.zeros(n)
        rows, rhs, start = [], [], 0
        for w, b, k in zip(ws[:-1], bs[:-1], sizes):
            a, c = w @ a, w @ c + b
            s = pattern[start:start + k]
            start += k
            rows.append(np.hstack([-s[:, None] * a, np.ones((k, 1))]))
            rhs.append(s * c)
            d = np.where(s > 0, 1.0, slope)
            a, c = d[:, None] * a, d * c
        bounds = [(None, None)] * n if box is None else [box] * n
        res = linprog(np.r_[np.zeros(n), -1.0], A_ub=np.vstack(rows), b_ub=np.concatenate(rhs),
                      bounds=bounds + [(None, 1.0)], method="highs")
        if res.status == 0 and res.x[-1] > 1e-7:
            best = max(best, np.linalg.norm(ws[-1] @ a, 2))
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_one_hidden_layer_equals_brute_force(seed):
    net = one_hidden(6, 5, 3, seed)
    res = lipbound.estimate(net, (6,), methods=["exact", "lower", "autolip"], progress=False,
                            method_options={"lower": {"time_budget": 10, "steps": 50}})
    ex = res.result("exact")
    assert ex.kind == "exact"
    assert ex.value == pytest.approx(brute_force(net), rel=1e-9)
    assert res.result("lower").value <= ex.value * (1 + 1e-9) <= res.result("autolip").value * (1 + 1e-9)
    assert witness_value(net, ex.witness) == pytest.approx(ex.value, rel=1e-9)


@pytest.mark.parametrize("arch,seed", [((2, 4, 4, 2), 0), ((3, 3, 3, 3, 1), 1), ((2, 5, 4, 2), 2)])
def test_deeper_nets_match_region_enumeration(arch, seed):
    net = mlp(arch, seed)
    res = exact(lipbound.as_graph(net, (arch[0],)), time_budget=60, lower_budget=1)
    assert res.kind == "exact"
    assert res.value == pytest.approx(enumerate_regions(net), rel=1e-7)


def test_box_domain_and_leaky_relu_match_enumeration():
    net = mlp((2, 4, 3, 2), 3, act=lambda: nn.LeakyReLU(0.1))
    g = lipbound.as_graph(net, (2,))
    res = exact(g, domain=(0.0, 1.0), time_budget=60, lower_budget=1)
    assert res.kind == "exact"
    assert res.value == pytest.approx(enumerate_regions(net, slope=0.1, box=(0.0, 1.0)), rel=1e-7)
    whole = exact(g, time_budget=60, lower_budget=1)
    assert whole.value == pytest.approx(enumerate_regions(net, slope=0.1), rel=1e-7)
    assert whole.value >= res.value * (1 - 1e-12)
    assert bool(((res.witness["x"] >= 0) & (res.witness["x"] <= 1)).all())


def test_time_out_gives_a_certified_upper_bound_not_a_guess():
    net = mlp((8, 16, 16, 2), 4)
    g = lipbound.as_graph(net, (8,))
    res = exact(g, time_budget=0.5, lower_budget=0)
    assert res.kind == "certified_upper" and res.details["status"] == "time budget spent"
    assert res.details["lower"] <= res.value <= lipbound.autolip(net, (8,)).value * (1 + 1e-6)
    assert witness_value(net, res.witness) == pytest.approx(res.details["lower"], rel=1e-9)


def test_refuses_other_architectures_and_estimate_skips_it():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(x + torch.relu(self.a(x)))

    tanh = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    for net in (Res(), tanh):
        with pytest.raises(NotApplicable):
            exact(lipbound.as_graph(net, (3,)))
        with pytest.raises(NotApplicable):
            lipbound.estimate(net, (3,), methods=["exact"], progress=False)
        rep = lipbound.estimate(net, (3,), methods="all", progress=False,
                                method_options={"lower": {"time_budget": 2, "steps": 10}})
        assert "exact" in rep.skipped and "exact" not in [r.method for r in rep.results]
        assert rep.lower is not None and rep.lower <= rep.upper


def test_default_set_brackets_small_nets_exactly():
    net = mlp((3, 4, 4, 2), 5)
    rep = lipbound.estimate(net, (3,), progress=False, method_options={"lower": {"time_budget": 5, "steps": 50}})
    names = [r.method for r in rep.results]
    assert {"autolip", "lower", "exact"} <= set(names)
    assert rep.ratio == pytest.approx(1.0, abs=1e-8)


def test_scipy_linprog_fallback_gives_the_same_value(monkeypatch):
    from lipbound.methods import lp

    net = mlp((2, 4, 3, 1), 6)
    g = lipbound.as_graph(net, (2,))
    with_highspy = exact(g, time_budget=60, lower_budget=0)
    monkeypatch.setattr(lp.DenseLP, "__init__", lambda self: setattr(self, "_highs", None))
    with_scipy = exact(g, time_budget=60, lower_budget=0)
    assert with_scipy.kind == with_highspy.kind == "exact"
    assert with_scipy.value == pytest.approx(with_highspy.value, rel=1e-9)
    assert with_scipy.value == pytest.approx(enumerate_regions(net), rel=1e-7)
