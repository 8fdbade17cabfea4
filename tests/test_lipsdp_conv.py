"""LipSDP on CNN chains through block elimination and the block Cholesky check (lipsdp_conv).

Oracles never go through lipbound: sampled Jacobian norms of the ``nn.Module`` (lower bounds of
``L(f)``), and LipSDP-Neuron written here from the layers' Jacobians (torch autograd) and solved by
cvxpy + Clarabel, the tightest of the relaxations that the method solves (per neuron: it must match
it; per layer: it must not go below it).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.methods.eclipse import fast_multipliers
from lipbound.methods.lipsdp import lipsdp
from lipbound.methods.lipsdp_chain import chain_schur
from lipbound.methods.lipsdp_conv import block_cholesky_proves, lipsdp_blocks, routes_to_blocks, row_width
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.sdp_verify import CertificateRejected, certify, is_certificate

from conftest import jacobian_norm
from test_eclipse import resnet


def small_cnn(seed: int, act=nn.ReLU) -> tuple[nn.Module, tuple[int, ...]]:
    """Conv(1->2, k3, stride 2, pad 1)-act-Conv(2->3, k3, pad 1)-act-AvgPool(1)-Flatten-Linear(27->3), input 1x6x6."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), act(), nn.Conv2d(2, 3, 3, padding=1), act(),
                        nn.Flatten(), nn.Linear(27, 3))
    return net.double().eval(), (1, 6, 6)


def layer_matrices(net: nn.Sequential, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The matrix of each affine layer (bias removed) by autograd, on the activations' shapes."""
    mats, x = [], torch.zeros(1, *shape, dtype=torch.float64)
    pending: list[nn.Module] = []
    for layer in list(net) + [None]:
        if layer is None or isinstance(layer, (nn.ReLU, nn.LeakyReLU)):
            seq = nn.Sequential(*pending)
            jac = torch.autograd.functional.jacobian(lambda z: seq(z).reshape(-1), x)
            mats.append(jac.reshape(jac.shape[0], -1).numpy())
            x = seq(x)
            pending = []
        else:
            pending.append(layer)
    return mats


def clarabel_lipsdp(mats: list[np.ndarray], slope: tuple[float, float]) -> float:
    """LipSDP-Neuron (Fazlyab et al. 2019) for ``W_K s(... s(W_1 x))`` with slopes in ``[a, b]``, by
    cvxpy + Clarabel: minimise ``rho`` s.t. the LMI is negative semidefinite; returns ``sqrt(rho)``."""
    cp = pytest.importorskip("cvxpy")
    a, b = slope
    n0, hidden = mats[0].shape[1], [m.shape[0] for m in mats[:-1]]
    nh = sum(hidden)
    big_a = np.zeros((nh, n0 + nh))  # pre-activations from (x, w_1, ..., w_{K-1})
    row, col = 0, 0
    for m in mats[:-1]:
        big_a[row:row + m.shape[0], col:col + m.shape[1]] = m
        row, col = row + m.shape[0], col + m.shape[1]
    big_b = np.hstack([np.zeros((nh, n0)), np.eye(nh)])
    w_out = np.hstack([np.zeros((mats[-1].shape[0], n0 + nh - mats[-1].shape[1])), mats[-1]])
    rho, t = cp.Variable(), cp.Variable(nh, nonneg=True)
    tt = cp.diag(t)
    qc = (big_a.T @ (-2 * a * b * tt) @ big_a + big_a.T @ ((a + b) * tt) @ big_b + big_b.T @ ((a + b) * tt) @ big_a
          - 2 * big_b.T @ tt @ big_b)
    e0 = np.zeros((n0 + nh, n0 + nh))
    e0[:n0, :n0] = np.eye(n0)
    m = qc + w_out.T @ w_out - rho * e0
    cp.Problem(cp.Minimize(rho), [0.5 * (m + m.T) << 0]).solve(solver="CLARABEL")
    return math.sqrt(rho.value)


@pytest.mark.parametrize("seed,act,slope", [(0, nn.ReLU, (0.0, 1.0)), (1, nn.ReLU, (0.0, 1.0)),
                                            (2, lambda: nn.LeakyReLU(0.1), (0.1, 1.0))])
def test_matches_clarabel_and_above_sampled_jacobians(seed, act, slope):
    net, shape = small_cnn(seed, act)
    graph = lipbound.as_graph(net, shape)
    res = lipsdp_blocks(graph, time_budget=30.0)
    assert res.kind == "certified_upper" and res.details["solver"] == "blocks"
    optimum = clarabel_lipsdp(layer_matrices(net, shape), slope)
    assert optimum * (1 - 1e-6) <= res.value <= optimum * (1 + 1e-4)
    torch.manual_seed(seed)
    lower = max(jacobian_norm(net, torch.randn(shape, dtype=torch.float64)) for _ in range(30))
    assert lower <= res.value
    assert res.details["sdp_lower"] <= optimum * (1 + 1e-6)  # a dual bound: never above the optimum
    layer = lipsdp_blocks(graph, variant="layer", time_budget=30.0)
    assert layer.kind == "certified_upper" and optimum * (1 - 1e-6) <= layer.value


def test_block_cholesky_agrees_with_the_dense_check():
    net, shape = small_cnn(3)
    lmi = lmi_of_graph(lipbound.as_graph(net, shape), eliminate="constant")
    t, _ = fast_multipliers(lmi)
    least = chain_schur(lmi, t).rho
    for factor in (0.98, 0.999, 1.001, 1.02, 1.2):  # around the least feasible rho for these multipliers
        rho = least * factor
        assert block_cholesky_proves(lmi, rho, t) == is_certificate(lmi, rho, t) == (factor > 1.0)
    assert not block_cholesky_proves(lmi, 1.2 * least, -t)  # negative multipliers are no certificate
    assert row_width(lmi) == max(a + b for a, b in zip(lmi.sizes + [0], lmi.sizes[1:] + [0, 0]))


def test_perturbed_multipliers_are_rejected():
    net, shape = small_cnn(4)
    lmi = lmi_of_graph(lipbound.as_graph(net, shape), eliminate="constant")
    t, _ = fast_multipliers(lmi)
    bad = t.copy()
    bad[: lmi.sizes[1]] *= 1e-3  # the first layer's multipliers far too small: its block is not positive definite
    with pytest.raises(CertificateRejected):
        certify(lmi, bad, schur=partial(chain_schur, lmi), prove=partial(block_cholesky_proves, lmi),
                width=row_width(lmi))
    rho = chain_schur(lmi, t).rho
    assert block_cholesky_proves(lmi, 1.01 * rho, t)
    assert not block_cholesky_proves(lmi, 1.01 * rho, bad)


def test_routing_and_refusals():
    lenet = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 10)).eval()
    assert routes_to_blocks(lipbound.as_graph(lenet, (1, 28, 28)))
    net, shape = small_cnn(0)
    assert not routes_to_blocks(lipbound.as_graph(net, shape))  # small: the assembled LMI is cheap
    residual = lipbound.as_graph(resnet(seed=0), (6,))
    assert not routes_to_blocks(residual)
    with pytest.raises(NotApplicable, match="chain"):
        lipsdp(residual, solver="blocks")
    with pytest.raises(NotApplicable, match="would not fit"):
        lipsdp_blocks(lipbound.as_graph(lenet, (1, 28, 28)), time_budget=0.01)
