"""The primal-dual interior point for LipSDP (``solver="ipm"``, :mod:`lipbound.methods.lipsdp_ipm`).

Oracles: LipSDP-Neuron (Fazlyab et al. 2019) with sectors ``[a, b]``, written here from the torch
weights and solved by cvxpy/Clarabel (not through lipbound's LMI); for LipSDP-Layer and residual
nets, lipbound's own cvxpy path (another algorithm on the same LMI); for the Newton matrix and the
block factorisation, materialised matrices (brute-force traces, numpy's inverse).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods.eclipse import balanced, fast_multipliers
from lipbound.methods.lipsdp import lipsdp
from lipbound.methods.lipsdp_factor import ChainFactor
from lipbound.methods.lipsdp_newton import RankTwoLMI, scaled_cholesky, scaled_solve, symmetrize
from lipbound.methods.lmi_build import lmi_of_graph

from test_eclipse import mlp, resnet

cp = pytest.importorskip("cvxpy")

SECTORS = {"relu": (nn.ReLU, 0.0, 1.0), "leaky": (lambda: nn.LeakyReLU(0.1), 0.1, 1.0), "tanh": (nn.Tanh, 0.0, 1.0)}


def sector_lipsdp(weights: list[np.ndarray], a: float, b: float) -> float:
    """LipSDP-Neuron for an MLP with weights ``weights`` whose activations have slopes in ``[a, b]``:
    with ``A = [blkdiag(W_0..W_{l-1}), 0]``, ``B = [0, I]``, minimise ``rho`` s.t.
    ``[A; B]^T [[-2ab T, (a+b) T], [(a+b) T, -2T]] [A; B] + diag(-rho I, 0, ..., W_l^T W_l) <= 0``,
    ``T >= 0`` diagonal (Clarabel). Returns ``sqrt(rho)``."""
    ws = weights
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


def scaled_oracle(net: nn.Sequential, a: float, b: float) -> float:
    """:func:`sector_lipsdp` on the weights normalised to unit spectral norm, times the product of
    the norms: LipSDP is equivariant under ``W_l -> c_l W_l`` (the sector constraints are
    homogeneous; a diagonal congruence maps feasible points), and Clarabel is accurate only on
    the normalised problem when the layers' scales span 1e-3..1e3."""
    ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    norms = [np.linalg.norm(w, 2) for w in ws]
    return float(np.prod(norms)) * sector_lipsdp([w / s for w, s in zip(ws, norms)], a, b)


def spread_mlp(act, depth: int, seed: int) -> nn.Sequential:
    """A random MLP of ``depth`` weight layers, widths 3..6, each layer scaled by ``10^u``, ``u``
    uniform in [-3, 3]."""
    rng = np.random.default_rng(seed)
    widths = [4] + [int(rng.integers(3, 7)) for _ in range(depth - 1)] + [2]
    net = mlp(widths, act=act, seed=seed)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(10.0 ** rng.uniform(-3, 3))
    return net


def test_equivariance_behind_the_scaled_oracle():
    """The oracle's shortcut, checked on moderate scales where Clarabel is accurate on both."""
    net = spread_mlp(nn.ReLU, 3, seed=5)
    ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    ws = [w / np.linalg.norm(w, 2) * s for w, s in zip(ws, (0.2, 5.0, 3.0))]
    norms = [np.linalg.norm(w, 2) for w in ws]
    direct = sector_lipsdp(ws, 0.0, 1.0)
    assert direct == pytest.approx(np.prod(norms) * sector_lipsdp([w / s for w, s in zip(ws, norms)], 0.0, 1.0),
                                   rel=1e-6)


@pytest.mark.parametrize("act", sorted(SECTORS))
@pytest.mark.parametrize("depth", [2, 4, 8])
def test_ipm_reaches_the_sdp_optimum(act, depth):
    """Layer scales over 1e-3..1e3: value within 1e-4 of the independent optimum, certified, and
    sdp_lower <= optimum <= value."""
    module, a, b = SECTORS[act]
    net = spread_mlp(module, depth, seed=depth)
    oracle = scaled_oracle(net, a, b)
    res = lipsdp(lipbound.as_graph(net, (4,)), solver="ipm")
    d = res.details
    assert res.kind == "certified_upper" and d["solver"] == "ipm" and d["stopped_by"] == "converged"
    assert oracle <= res.value * (1 + 1e-6)  # Clarabel's own optimum is accurate to ~1e-7
    assert res.value <= oracle * (1 + 1e-4)
    assert d["sdp_lower"] <= oracle * (1 + 1e-6)
    assert d["sdp_gap"] <= 1e-4


@pytest.mark.parametrize("variant", ["neuron", "layer"])
def test_ipm_matches_the_cvxpy_path_on_a_residual_net(variant):
    """Graphs that are not chains (dense factorisation) and LipSDP-Layer."""
    g = lipbound.as_graph(resnet(seed=2, act=nn.GELU), (6,))
    ref = lipsdp(g, solver="clarabel", variant=variant).details["solver_value"]
    res = lipsdp(g, solver="ipm", variant=variant)
    assert res.kind == "certified_upper"
    assert ref * (1 - 1e-6) <= res.value <= ref * (1 + 1e-4)
    assert res.details["sdp_lower"] <= ref * (1 + 1e-6)


def test_ipm_cut_short_by_time_is_still_checked():
    net = mlp([5, 9, 7, 3], seed=8)
    res = lipsdp(lipbound.as_graph(net, (5,)), solver="ipm", time_budget=0.0)
    assert res.kind == "certified_upper" and res.details["stopped_by"] == "time"
    oracle = sector_lipsdp([m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)], 0.0, 1.0)
    assert res.details["sdp_lower"] <= oracle * (1 + 1e-6) <= res.value * (1 + 1e-6)


def _lmi_and_point(net: nn.Sequential, n_in: int):
    lmi = balanced(lmi_of_graph(lipbound.as_graph(net, (n_in,))))
    t, _ = fast_multipliers(lmi)
    terms = RankTwoLMI(lmi, "neuron")
    y = np.concatenate([[2.0 * lmi.schur(t).rho], t])
    return lmi, terms, y


def test_newton_matrix_against_materialised_traces():
    """``H_kl = trace(A_k X A_l S^{-1})`` and ``<A_k, X>`` against the constraint matrices
    materialised as differences of assembled LMIs."""
    lmi, terms, y = _lmi_and_point(mlp([3, 4, 5, 2], act=lambda: nn.LeakyReLU(0.2), seed=1), 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((lmi.size, lmi.size))
    x = x @ x.T
    s_inv = np.linalg.inv(lmi.dense_N(float(y[0]), y[1:]))
    zero = np.zeros(lmi.n_neurons)
    base = lmi.dense_N(0.0, zero)
    mats = [lmi.dense_N(1.0, zero) - base] + [lmi.dense_N(0.0, e) - base for e in np.eye(lmi.n_neurons)]
    brute = np.array([[np.trace(ak @ x @ al @ s_inv) for al in mats] for ak in mats])
    h = terms.newton_matrix(terms.grams(x), terms.grams(s_inv))
    np.testing.assert_allclose(h, brute, rtol=1e-9, atol=1e-9 * np.abs(brute).max())
    values = np.array([np.sum(ak * x) for ak in mats])
    np.testing.assert_allclose(terms.constraint_values(x), values, rtol=1e-10, atol=1e-10 * np.abs(values).max())
    np.testing.assert_allclose(terms.constraint_values_of(terms.grams(x)), values, rtol=1e-10,
                               atol=1e-10 * np.abs(values).max())


@pytest.mark.parametrize("net", ["leaky chain", "gelu residual"])
@pytest.mark.parametrize("variant", ["neuron", "layer"])
def test_direction_products_against_materialised_matrices(net, variant):
    """``dS A`` from ``W^T A`` (:meth:`RankTwoLMI.times`) and the constraint values of ``sym(S^{-1}
    G)`` without the solve (:meth:`RankTwoLMI.solved_constraint_values`), against the constraint
    matrices materialised as differences of assembled LMIs, ``dS = sum_k dy_k A_k`` and numpy's
    inverse. A chain (LeakyReLU: ``a b != 0``) and a residual net (GELU: ``a < 0 < b``)."""
    module = mlp([3, 4, 5, 2], act=lambda: nn.LeakyReLU(0.2), seed=1) if net == "leaky chain" else resnet(
        seed=3, n_in=3, w=3, blocks=2, act=nn.GELU)
    lmi = balanced(lmi_of_graph(lipbound.as_graph(module, (3,))))
    terms = RankTwoLMI(lmi, variant, margin=1e-3)
    rng = np.random.default_rng(0)
    zero = np.zeros(lmi.n_neurons)
    base = lmi.dense_N(0.0, zero)
    neuron = [lmi.dense_N(0.0, e) - base for e in np.eye(lmi.n_neurons)]
    per_node = [sum(neuron[sl]) for sl in lmi.neuron_slices] if variant == "layer" else neuron
    mats = [lmi.dense_N(1.0, zero) - base] + per_node
    dy = rng.standard_normal(len(mats))
    d_s = sum(c * m for c, m in zip(dy, mats))
    a = rng.standard_normal((lmi.size, lmi.size))
    a += a.T
    got = terms.times(dy, a, terms.wt(a), out=np.empty_like(a))
    np.testing.assert_allclose(got, d_s @ a, rtol=1e-10, atol=1e-12 * np.abs(d_s @ a).max())
    s = rng.standard_normal((lmi.size, lmi.size))
    s_inv = np.linalg.inv(s @ s.T + lmi.size * np.eye(lmi.size))
    g = rng.standard_normal((lmi.size, lmi.size))
    sym = 0.5 * (s_inv @ g + (s_inv @ g).T)
    values = np.array([np.sum(ak * sym) for ak in mats])
    gs = terms.grams(s_inv, "s")
    terms.grams(a, "x")  # as in the interior point: the grams of X are taken next and must not overwrite those of S^{-1}
    np.testing.assert_allclose(terms.solved_constraint_values(s_inv, gs, g), values,
                               rtol=1e-10, atol=1e-12 * np.abs(values).max())


def test_chain_factor_solves_and_refuses():
    """The block-bidiagonal factor's inverse against numpy's; an indefinite point is refused."""
    lmi, terms, y = _lmi_and_point(mlp([4, 6, 5, 6, 2], seed=3), 4)
    fac = ChainFactor.of(terms.parts(y), lmi.sizes)
    dense = lmi.dense_N(float(y[0]), y[1:])
    np.testing.assert_allclose(fac.inverse(), np.linalg.inv(dense), rtol=1e-8, atol=1e-10 * np.abs(np.linalg.inv(dense)).max())
    below = y.copy()
    below[0] = 0.5 * lmi.schur(y[1:]).rho  # rho under the least feasible one: N is indefinite
    assert ChainFactor.of(terms.parts(below), lmi.sizes) is None and np.linalg.eigvalsh(
        lmi.dense_N(float(below[0]), below[1:]))[0] < 0


def test_in_place_linear_algebra_against_numpy():
    """The interior point's in-place kernels: a chain solve that overwrites its right-hand side,
    the tile-by-tile symmetrisation (tiles that do not divide the order), the Jacobi-scaled
    Cholesky factorisation in the Newton matrix's memory."""
    lmi, terms, y = _lmi_and_point(mlp([4, 6, 5, 6, 2], seed=3), 4)
    fac = ChainFactor.of(terms.parts(y), lmi.sizes)
    dense = lmi.dense_N(float(y[0]), y[1:])
    r = np.random.default_rng(0).standard_normal((lmi.size, lmi.size))
    expected = np.linalg.solve(dense, r)
    out = fac.solve(r, overwrite=True)
    assert out is r
    np.testing.assert_allclose(out, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    a = np.random.default_rng(1).standard_normal((23, 23))
    want = 0.5 * (a + a.T)
    np.testing.assert_array_equal(symmetrize(a, tile=5), want)
    h = want @ want.T + np.eye(23)
    fac_h = scaled_cholesky(h.copy())
    b = np.arange(23.0)
    np.testing.assert_allclose(scaled_solve(fac_h, b), np.linalg.solve(h, b), rtol=1e-9)


@pytest.mark.parametrize("kind", ["chain", "dense"])
def test_factor_step_against_the_generalised_eigenvalue(kind):
    """The dual step length: ``sup {a: N + a D > 0}`` through the factor's sweeps, against
    ``-1 / lambda_min(N^{-1} D)`` from a dense generalised eigensolver (the oracle)."""
    import scipy.linalg as sla

    from lipbound.methods.lipsdp_factor import DenseFactor
    from lipbound.methods.lipsdp_newton import factor_step

    rng = np.random.default_rng(3)
    sizes, off = [5, 7, 6], [0, 5, 12, 18]
    n = off[-1]
    band = np.zeros((n, n))  # a block-tridiagonal positive definite N
    for j, m in enumerate(sizes):
        g = rng.standard_normal((m, m))
        band[off[j]:off[j + 1], off[j]:off[j + 1]] = g @ g.T + m * np.eye(m)
        if j:
            band[off[j]:off[j + 1], off[j - 1]:off[j]] = rng.standard_normal((m, sizes[j - 1]))
    band = np.tril(band) + np.tril(band, -1).T
    d = rng.standard_normal((n, n))
    d = d + d.T
    if kind == "chain":
        parts = {(j, k): band[off[j]:off[j + 1], off[k]:off[k + 1]] for j in range(3) for k in (j - 1, j) if k >= 0}
        fac = ChainFactor.of(parts, sizes)
    else:
        fac = DenseFactor.of(band)
    oracle = -1.0 / float(sla.eigh(d, band, eigvals_only=True)[0])
    step = factor_step(fac, lambda w: d @ w, n, cap=1e6)
    assert step == pytest.approx(oracle, rel=1e-6)
    assert factor_step(fac, lambda w: d @ w, n, cap=0.5 * oracle) == 0.5 * oracle
