"""LipSDP on CNNs and residual nets through block elimination and the block Cholesky check
(lipsdp_conv, lipsdp_banded).

Oracles never go through the code under test: sampled Jacobian norms of the ``nn.Module`` (lower
bounds of ``L(f)``), LipSDP-Neuron written here from the layers' Jacobians (torch autograd) and
solved by cvxpy + Clarabel (per neuron: it must match it; per layer: it must not go below it), the
eigenvalues of the densely assembled LMI, the dense Cholesky check, the chain elimination of
lipsdp_chain, and the fill of a dense Cholesky factor of the permuted pattern.
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
from lipbound.methods.lipsdp_banded import (banded_cholesky_proves, banded_row_width, banded_schur,
                                            structure_of_graph, structure_of_lmi)
from lipbound.methods.lipsdp_conv import lipsdp_blocks, routes_to_blocks
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.sdp_verify import CertificateRejected, certify, cholesky_shift, is_certificate

from conftest import jacobian_norm
from test_eclipse import Mixed, resnet


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
        assert banded_cholesky_proves(lmi, rho, t) == is_certificate(lmi, rho, t) == (factor > 1.0)
    assert not banded_cholesky_proves(lmi, 1.2 * least, -t)  # negative multipliers are no certificate
    assert banded_row_width(lmi) == max(a + b for a, b in zip(lmi.sizes + [0], lmi.sizes[1:] + [0, 0]))


def test_perturbed_multipliers_are_rejected():
    net, shape = small_cnn(4)
    lmi = lmi_of_graph(lipbound.as_graph(net, shape), eliminate="constant")
    t, _ = fast_multipliers(lmi)
    bad = t.copy()
    bad[: lmi.sizes[1]] *= 1e-3  # the first layer's multipliers far too small: its block is not positive definite
    with pytest.raises(CertificateRejected):
        certify(lmi, bad, schur=partial(banded_schur, lmi), prove=partial(banded_cholesky_proves, lmi),
                width=banded_row_width(lmi))
    rho = chain_schur(lmi, t).rho
    assert banded_cholesky_proves(lmi, 1.01 * rho, t)
    assert not banded_cholesky_proves(lmi, 1.01 * rho, bad)


def test_routing_and_refusals():
    lenet = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 10)).eval()
    assert routes_to_blocks(lipbound.as_graph(lenet, (1, 28, 28)))
    net, shape = small_cnn(0)
    assert not routes_to_blocks(lipbound.as_graph(net, shape))  # small: the assembled LMI is cheap
    residual = lipbound.as_graph(resnet(seed=0), (6,))
    assert not routes_to_blocks(residual)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2)).eval()
    with pytest.raises(NotApplicable, match="max"):
        lipsdp(lipbound.as_graph(pooled, (1, 6, 6)), solver="blocks")
    with pytest.raises(NotApplicable, match="would not fit"):
        lipsdp_blocks(lipbound.as_graph(lenet, (1, 28, 28)), time_budget=0.01)


class ResidualCNN(nn.Module):
    """Conv stem, a block ``relu(conv2(relu(conv1(h))) + shortcut(h))`` with a strided 1x1 shortcut,
    an identity block, and a dense head: ResNet-2B in miniature (input 1 x 6 x 6)."""

    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.a1, self.a2, self.sc = nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Conv2d(3, 3, 3, padding=1), \
            nn.Conv2d(2, 3, 1, stride=2)
        self.b1, self.b2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(27, 3)
        self.act = act()

    def forward(self, x):
        h = self.act(self.stem(x))
        h = self.act(self.a2(self.act(self.a1(h))) + self.sc(h))
        h = self.act(self.b2(self.act(self.b1(h))) + h)
        return self.head(h.flatten(1))


class Bottleneck(nn.Module):
    """``h -> relu(h + W3 relu(W2 relu(W1 h)))`` twice between dense layers: eliminating a block's
    outer activation couples the input with the second inner one (fill outside the LMI's pattern)."""

    def __init__(self, w: int = 4):
        super().__init__()
        self.stem, self.head = nn.Linear(5, w), nn.Linear(w, 2)
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(w, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(),
                                                    nn.Linear(3, w)) for _ in range(2))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        for branch in self.branches:
            h = torch.relu(h + branch(h))
        return self.head(h)


def bottleneck(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    return Bottleneck().double().eval(), (5,)


def residual_cnn(seed: int, act=nn.ReLU) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    return ResidualCNN(act).double().eval(), (1, 6, 6)


def wide_input_cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A chain on 1 x 16 x 16: an input block above LANCZOS_MIN (its top eigenvalues by Lanczos)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(192, 3))
    return net.double().eval(), (1, 16, 16)


NETS = {"chain cnn": lambda s: small_cnn(s), "wide input cnn": wide_input_cnn, "residual cnn": lambda s: residual_cnn(s),
        "leaky residual cnn": lambda s: residual_cnn(s, lambda: nn.LeakyReLU(0.2)),
        "residual mlp": lambda s: (resnet(seed=s), (6,)),
        "bottleneck": lambda s: bottleneck(s),
        "branches": lambda s: (Mixed(nn.ReLU, nn.Tanh).double().eval(), (2, 5))}


@pytest.mark.parametrize("name", NETS)
def test_elimination_matches_the_dense_lmi(name):
    net, shape = NETS[name](5)
    lmi = lmi_of_graph(lipbound.as_graph(net, shape), eliminate="constant")
    t, _ = fast_multipliers(lmi)
    got = banded_schur(lmi, t, gradient=True, top=3)
    dense = lmi.schur(t, gradient=True, top=3)  # the assembled LMI, factorised as one matrix
    assert got.rho == pytest.approx(dense.rho, rel=1e-10)
    np.testing.assert_allclose(got.grads, dense.grads, rtol=1e-7, atol=1e-9 * np.abs(dense.grads).max())
    for factor, feasible in ((0.999, False), (1.001, True)):  # rho* is where the assembled N loses definiteness
        eigs = np.linalg.eigvalsh(lmi.dense_N(factor * got.rho, t))
        assert (eigs[0] > 0) == feasible
    if lmi.is_chain():
        assert got.rho == pytest.approx(chain_schur(lmi, t).rho, rel=1e-10)


@pytest.mark.parametrize("name", NETS)
def test_banded_check_agrees_with_the_dense_check(name):
    net, shape = NETS[name](6)
    lmi = lmi_of_graph(lipbound.as_graph(net, shape), eliminate="constant")
    t, _ = fast_multipliers(lmi)
    least = banded_schur(lmi, t).rho
    for factor in (0.98, 0.999, 1.001, 1.02):
        assert banded_cholesky_proves(lmi, least * factor, t) == is_certificate(lmi, least * factor, t) == (factor > 1)
    shift = cholesky_shift(lmi, least, t, banded_row_width(lmi))  # the rounding margin the proof must keep
    assert not banded_cholesky_proves(lmi, least + 0.5 * shift, t)
    assert banded_cholesky_proves(lmi, least + 4 * shift, t)
    bad = t.copy()
    bad[: lmi.sizes[1]] *= 1e-3
    assert not banded_cholesky_proves(lmi, 2 * least, bad)


@pytest.mark.parametrize("name", ["residual cnn", "bottleneck", "branches"])
def test_row_width_is_the_factors_fill(name):
    """Demmel's ``w``: the most nonzeros of a row of the factor (in the elimination order), counted
    on a dense Cholesky factor of a random positive definite matrix with the LMI's block pattern."""
    net, shape = NETS[name](0)
    lmi = lmi_of_graph(lipbound.as_graph(net, shape), eliminate="constant")
    structure = structure_of_lmi(lmi)
    rng = np.random.default_rng(0)
    off = lmi.offsets
    n = lmi.size
    mat = np.zeros((n, n))
    for r, c in structure.pattern():
        blk = rng.uniform(0.5, 1.0, (lmi.sizes[r], lmi.sizes[c]))
        mat[off[r]:off[r + 1], off[c]:off[c + 1]] = blk
        mat[off[c]:off[c + 1], off[r]:off[r + 1]] = blk.T
    mat += n * np.eye(n)
    order = np.concatenate([np.arange(off[step.block], off[step.block + 1]) for step in structure.elimination])
    factor = np.linalg.cholesky(mat[np.ix_(order, order)])
    assert banded_row_width(lmi) == int((np.abs(factor) > 0).sum(1).max())
    assert structure_of_graph(lipbound.as_graph(net, shape)).sizes == tuple(lmi.sizes)  # every neuron unstable


@pytest.mark.parametrize("name", ["residual cnn", "leaky residual cnn"])
def test_residual_blocks_certified_and_close_to_the_dense_solver(name):
    """The same 100 L-BFGS steps on the assembled LMI (its own evaluation and dense check) land on
    nearly the same value; neither certified value is below the other path's SDP dual bound."""
    net, shape = NETS[name](1)
    graph = lipbound.as_graph(net, shape)
    res = lipsdp(graph, solver="blocks", time_budget=20.0, lbfgs_iter=100)
    assert res.kind == "certified_upper" and res.details["solver"] == "blocks"
    dense = lipsdp(graph, solver="first-order", time_budget=20.0, lbfgs_iter=100)
    assert res.value == pytest.approx(dense.value, rel=1e-3)
    assert res.value >= dense.details["sdp_lower"] and dense.value >= res.details["sdp_lower"]


def test_never_below_sampled_jacobians_on_random_nets():
    """50 random chain and residual nets (ReLU and LeakyReLU), each at randomly perturbed
    multipliers: whatever the block elimination and the banded check certify is never below a
    sampled Jacobian norm of the module, and multipliers that no ``rho`` makes feasible (by the
    assembled LMI) are rejected."""
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    feasible = 0
    kinds = ["chain cnn", "residual cnn", "leaky residual cnn", "residual mlp", "bottleneck"]  # small: fast
    for seed in range(50):
        net, shape = NETS[kinds[seed % len(kinds)]](100 + seed)
        lmi = lmi_of_graph(lipbound.as_graph(net, shape), eliminate="constant")
        t, _ = fast_multipliers(lmi, grid=1, evaluations=1)
        t = t * np.exp(rng.normal(0.0, 0.1, t.shape))
        check = partial(certify, lmi, t, schur=partial(banded_schur, lmi), prove=partial(banded_cholesky_proves, lmi),
                        width=banded_row_width(lmi))
        if not math.isfinite(lmi.schur(t).rho):  # the assembled LMI says no rho works: nothing may be certified
            with pytest.raises(CertificateRejected):
                check()
            continue
        cert = check()
        xs = torch.randn((3, *shape), generator=gen, dtype=torch.float64)
        assert max(jacobian_norm(net, x) for x in xs) <= cert.value
        feasible += 1
    assert feasible >= 35


@pytest.mark.parametrize("name", ["residual cnn", "bottleneck", "branches"])
def test_graph_structure_of_a_localized_net_is_the_built_lmis(name):
    """On a small box (many ReLUs stably off, some stably on), the structure read from the slope
    intervals alone (what the cost model and the plan use) is the one the builder makes: the same
    block sizes, reads and output reads; stably-off neurons are left out of both."""
    from lipbound.methods.propagation import localize
    from lipbound.methods.region import Box

    net, shape = NETS[name](0)
    graph = lipbound.as_graph(net, shape)
    gen = torch.Generator().manual_seed(1)
    centre = torch.randn(shape, generator=gen, dtype=torch.float64)
    local = localize(graph, Box(centre - 0.05, centre + 0.05))
    lmi = lmi_of_graph(local, eliminate="constant")
    assert lmi.eliminated > 0  # the box must make some neurons constant, else this test shows nothing
    built, read = structure_of_lmi(lmi), structure_of_graph(local)
    assert (read.sizes, read.reads, read.out_reads) == (built.sizes, built.reads, built.out_reads)
    assert sum(read.sizes) < sum(structure_of_graph(graph).sizes)
