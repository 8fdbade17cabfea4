"""The barrier interior point for LipSDP (``solver="barrier"``, :mod:`lipbound.methods.lipsdp_ipm`).

Oracle: LipSDP-Neuron (Fazlyab et al. 2019) with sectors ``[a, b]``, written here from the torch
weights and solved by cvxpy/Clarabel (not through lipbound's LMI); for LipSDP-Layer and residual
nets, lipbound's own cvxpy path (another algorithm on the same LMI).
"""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

import lipbound
from lipbound.methods.lipsdp import lipsdp

from test_eclipse import mlp, resnet

cp = pytest.importorskip("cvxpy")

SECTORS = {"relu": (nn.ReLU, 0.0, 1.0), "leaky": (lambda: nn.LeakyReLU(0.1), 0.1, 1.0), "tanh": (nn.Tanh, 0.0, 1.0)}


def sector_lipsdp(net: nn.Sequential, a: float, b: float) -> float:
    """LipSDP-Neuron for an MLP whose activations have slopes in ``[a, b]``: with
    ``A = [blkdiag(W_0..W_{l-1}), 0]``, ``B = [0, I]``, minimise ``rho`` s.t.
    ``[A; B]^T [[-2ab T, (a+b) T], [(a+b) T, -2T]] [A; B] + diag(-rho I, 0, ..., W_l^T W_l) <= 0``,
    ``T >= 0`` diagonal. Returns ``sqrt(rho)``."""
    ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    n0, nh = ws[0].shape[1], sum(w.shape[0] for w in ws[:-1])
    n = n0 + nh
    big_a = np.zeros((nh, n))
    r = c = 0
    for w in ws[:-1]:
        big_a[r:r + w.shape[0], c:c + w.shape[1]] = w
        r, c = r + w.shape[0], c + w.shape[1]
    big_b = np.hstack([np.zeros((nh, n0)), np.eye(nh)])
    rho, lam = cp.Variable(), cp.Variable(nh, nonneg=True)
    t = cp.diag(lam)
    qc = -2 * a * b * big_a.T @ t @ big_a + (a + b) * (big_a.T @ t @ big_b + big_b.T @ t @ big_a) - 2 * big_b.T @ t @ big_b
    last = np.zeros((n, n))
    last[n - ws[-1].shape[1]:, n - ws[-1].shape[1]:] = ws[-1].T @ ws[-1]
    e = np.zeros((n, n))
    e[:n0, :n0] = np.eye(n0)
    m = qc + last - rho * e
    cp.Problem(cp.Minimize(rho), [0.5 * (m + m.T) << 0]).solve(solver="CLARABEL")
    return float(np.sqrt(rho.value))


@pytest.mark.parametrize("act", sorted(SECTORS))
@pytest.mark.parametrize("depth", [2, 4, 8])
def test_barrier_reaches_the_sdp_optimum(act, depth):
    """Value within 1e-4 of the independent optimum, certified, and its dual bound below it."""
    module, a, b = SECTORS[act]
    rng = np.random.default_rng(depth)
    widths = [4] + [int(rng.integers(3, 7)) for _ in range(depth - 1)] + [2]
    net = mlp(widths, act=module, seed=depth)
    oracle = sector_lipsdp(net, a, b)
    res = lipsdp(lipbound.as_graph(net, (4,)), solver="barrier")
    d = res.details
    assert res.kind == "certified_upper" and d["solver"] == "barrier" and d["stopped_by"] == "converged"
    assert oracle <= res.value * (1 + 2e-6)  # Clarabel's own optimum is accurate to ~1e-7
    assert res.value <= oracle * (1 + 1e-4)
    assert d["sdp_lower"] <= oracle * (1 + 2e-6)
    assert d["sdp_gap"] <= 1e-2


@pytest.mark.parametrize("variant", ["neuron", "layer"])
def test_barrier_matches_the_cvxpy_path_on_a_residual_net(variant):
    """Graphs that are not chains (the LMI is not block tridiagonal) and LipSDP-Layer."""
    g = lipbound.as_graph(resnet(seed=2, act=nn.GELU), (6,))
    ref = lipsdp(g, solver="clarabel", variant=variant).details["solver_value"]
    res = lipsdp(g, solver="barrier", variant=variant)
    assert res.kind == "certified_upper"
    assert ref * (1 - 1e-6) <= res.value <= ref * (1 + 1e-4)
    assert res.details["sdp_lower"] <= ref * (1 + 1e-6)


def test_barrier_cut_short_by_time_is_still_checked():
    net = mlp([5, 9, 7, 3], seed=8)
    res = lipsdp(lipbound.as_graph(net, (5,)), solver="barrier", time_budget=0.0)
    assert res.kind == "certified_upper" and res.details["stopped_by"] == "time"
    assert res.details["sdp_lower"] <= sector_lipsdp(net, 0.0, 1.0) * (1 + 1e-6) <= res.value * (1 + 1e-6)
