"""The reduced LMI (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced`, the triangular factor of a QR
of the maps that read the input) is equivalent to the full one, and the blocks path takes it only
when it pays (:func:`~lipbound.methods.lipsdp_conv.reduced_structure`).

Oracles: the Gram matrix of the maps that read the input (what the LMI sees of them), numpy's dense
eigenvalues of the full LMI, the interior-point optimum of the full LMI, brute force over activation
patterns (the LMI certifies every linear network whose slopes lie in the sectors, so its value is at
least ``max_D ||W_3 D_2 W_2 D_1 W_1||``, itself at least the constant), sampled Jacobian norms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods import lipsdp_conv
from lipbound.methods.lipsdp_banded import BlockStructure, banded_schur, structure_of_graph
from lipbound.methods.lipsdp_conv import lipsdp_blocks, reduced_structure
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.sdp_verify import certify

from conftest import jacobian_norm
from test_lipsdp_conv import small_cnn
from test_lmi_local import mlp


class SkipNet(nn.Module):
    """``y = W_2 relu(W_1 x) + W_3 x``: the output reads the input too (two maps stacked)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.c = nn.Linear(9, 4), nn.Linear(4, 2), nn.Linear(9, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.c(x)


def rank_deficient_mlp() -> nn.Sequential:
    """8 -> 5 -> 4 -> 2 with two equal rows in the first layer: rank 4 < 5 rows < 8 inputs."""
    net = mlp([8, 5, 4, 2], nn.ReLU, 2)
    with torch.no_grad():
        net[0].weight[4] = net[0].weight[3]
    return net


NETS = {
    "mlp": lambda: (mlp([8, 5, 4, 2], nn.ReLU, 0), (8,)),
    "rank_deficient": lambda: (rank_deficient_mlp(), (8,)),
    "skip": lambda: (SkipNet().double().eval(), (9,)),
    "cnn": lambda: small_cnn(0),
}


def _lmi(name: str):
    net, shape = NETS[name]()
    return lmi_of_graph(lipbound.as_graph(net, shape))


def _readers(lmi) -> np.ndarray:
    return np.concatenate([b.pre[0] for b in lmi.blocks[1:] if 0 in b.pre] + ([lmi.out[0]] if 0 in lmi.out else []))


@pytest.mark.parametrize("name", list(NETS))
def test_the_reduced_maps_have_the_same_gram(name):
    """The LMI sees the maps that read ``x`` only through ``X^T X`` on ``x``'s side and ``X x`` on
    theirs; ``X Q`` with ``Q`` orthonormal over the rows of ``X`` keeps ``X X^T`` (every inner
    product of two rows, so each map's block of it), and has one column per row when ``X`` has fewer
    rows than columns."""
    lmi = _lmi(name)
    red = lmi.reduced()
    full, cut = _readers(lmi), _readers(red)
    assert (0 in lmi.out) == (name == "skip")  # two maps read the input: the split of R^T between them
    assert red.solving_only and not lmi.solving_only
    assert red.blocks[0].size == min(full.shape) and cut.shape == (full.shape[0], min(full.shape))
    assert np.allclose(cut @ cut.T, full @ full.T, rtol=0, atol=1e-12 * np.linalg.norm(full) ** 2)
    assert red.sizes[1:] == lmi.sizes[1:]


@pytest.mark.parametrize("name", list(NETS))
def test_the_reduced_lmi_has_the_same_least_rho(name):
    """For random multipliers, ``rho*(t)`` of the reduced LMI is the full one's, and numpy's
    eigenvalues of the full ``N`` agree: PSD just above it, not just below."""
    lmi = _lmi(name)
    red = lmi.reduced()
    rng = np.random.default_rng(0)
    for _ in range(3):
        t = np.exp(rng.uniform(-1, 1, lmi.n_neurons))
        rho = red.schur(t).rho
        assert rho == pytest.approx(lmi.schur(t).rho, rel=1e-9)
        assert np.linalg.eigvalsh(lmi.dense_N(rho * (1 + 1e-6), t))[0] > 0
        assert np.linalg.eigvalsh(lmi.dense_N(rho * (1 - 1e-6), t))[0] < 0


def _pattern_max(net: nn.Sequential) -> float:
    """``max_D ||W_3 D_2 W_2 D_1 W_1||_2`` over every 0/1 pattern of the hidden ReLUs."""
    ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    best = 0.0
    for d1 in itertools.product((0.0, 1.0), repeat=ws[0].shape[0]):
        for d2 in itertools.product((0.0, 1.0), repeat=ws[1].shape[0]):
            prod = ws[2] @ (np.array(d2)[:, None] * ws[1]) @ (np.array(d1)[:, None] * ws[0])
            best = max(best, float(np.linalg.norm(prod, 2)))
    return best


@pytest.mark.parametrize("name", ["mlp", "rank_deficient"])
def test_solving_the_reduced_lmi_certifies_the_full_optimum(name):
    """Clarabel on the reduced LMI and on the full one reach the same optimum; the reduced LMI's
    multipliers are proved on the full LMI at a value above every activation pattern's norm."""
    from lipbound.methods.lipsdp import solve_cvxpy

    net, shape = NETS[name]()
    lmi = lmi_of_graph(lipbound.as_graph(net, shape))
    t_red, rho_red, _ = solve_cvxpy(lmi.reduced(), solver="clarabel")
    _, rho_full, _ = solve_cvxpy(lmi, solver="clarabel")
    assert rho_red == pytest.approx(rho_full, rel=1e-5)
    cert = certify(lmi, np.maximum(t_red, 0.0), claimed_rho=rho_red)
    assert cert.value >= _pattern_max(net) * (1 - 1e-9)
    assert cert.value == pytest.approx(lmi.scale * math.sqrt(rho_full), rel=1e-4)


def test_the_blocks_path_gives_the_same_certificate_with_or_without_the_reduction(monkeypatch):
    """On a CNN whose first convolution has fewer outputs (18) than inputs (36), the blocks path solves
    the reduced LMI; forced to solve the full one, it certifies the same value (L-BFGS on two
    equivalent LMIs), and both are above sampled Jacobian norms."""
    net, shape = small_cnn(1)
    graph = lipbound.as_graph(net, shape)
    inputs: list[int] = []  # the input block of every evaluation of rho*(t)
    monkeypatch.setattr(lipsdp_conv, "banded_schur",
                        lambda lmi, *a, **k: inputs.append(lmi.blocks[0].size) or banded_schur(lmi, *a, **k))
    reduced = lipsdp_blocks(graph, time_budget=30.0, lbfgs_iter=60)
    assert reduced.details["reduced_order"] == lmi_of_graph(graph).size - 36 + 18
    assert inputs.count(18) >= reduced.details["iterations"] > 0  # the solver evaluates the reduced LMI
    monkeypatch.setattr(lipsdp_conv, "banded_schur", banded_schur)
    monkeypatch.setattr(lipsdp_conv, "reduced_structure", lambda structure: None)
    full = lipsdp_blocks(graph, time_budget=30.0, lbfgs_iter=60)
    assert full.details["reduced_order"] is None and "reduce" not in full.details["steps"]
    assert reduced.kind == full.kind == "certified_upper"
    assert reduced.value == pytest.approx(full.value, rel=1e-3)
    torch.manual_seed(0)
    lower = max(jacobian_norm(net, torch.randn(shape, dtype=torch.float64)) for _ in range(20))
    assert min(reduced.value, full.value) >= lower


def test_the_reduction_is_planned_only_when_it_pays():
    """Sizes only: OVAL21 base's chain (3072 inputs read by 2048 neurons) is reduced; an input read by
    as many rows as it has entries is not (nothing to cut), nor one cut by a single entry (the QR
    costs more than five evaluations save); a small CNN is reduced to its first layer's rows."""
    chain = (frozenset(), frozenset({0}), frozenset({1}), frozenset({2}))
    oval = BlockStructure((3072, 2048, 1024, 100), chain, (False,) * 4, frozenset({3}))
    assert reduced_structure(oval).sizes == (2048, 2048, 1024, 100)
    assert reduced_structure(BlockStructure((2048, 2048, 1024, 100), chain, (False,) * 4, frozenset({3}))) is None
    assert reduced_structure(BlockStructure((3072, 3071, 1024, 100), chain, (False,) * 4, frozenset({3}))) is None
    structure = structure_of_graph(lipbound.as_graph(*small_cnn(0)))
    assert reduced_structure(structure).sizes[0] == 18 < structure.sizes[0] == 36
