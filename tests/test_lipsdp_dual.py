"""LipSDP's dual bound and gap, the chain elimination, rejected multipliers, and a soundness fuzz.

Oracles: the LipSDP-Neuron SDP of Fazlyab et al. (2019) written here from the torch weights and
solved by cvxpy/Clarabel (not through lipbound's LMI), the generic assembled Schur complement
for the chain elimination, and sampled Jacobian norms / pair quotients for soundness.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods.eclipse import balanced, fast_multipliers
from lipbound.methods.lipsdp import lipsdp
from lipbound.errors import NotApplicable
from lipbound.methods.lipsdp_chain import chain_schur
from lipbound.methods.lipsdp_chordal import markov_completion
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.sdp_verify import CertificateRejected, certify, is_certificate

from test_eclipse import mlp, resnet, witnessed
from test_lipsdp_ipm import sector_lipsdp

cp = pytest.importorskip("cvxpy")
lipsdp_module = importlib.import_module("lipbound.methods.lipsdp")


def fazlyab_lipsdp(net: nn.Sequential) -> float:
    """LipSDP-Neuron for a ReLU MLP (sector [0, 1]), straight from the paper
    (:func:`test_lipsdp_ipm.sector_lipsdp` with ``a = 0, b = 1``)."""
    return sector_lipsdp([m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)], 0.0, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_below_the_optimum_below_the_certificate(seed):
    """sdp_lower <= the independent interior-point optimum <= the certified value, on both
    solver paths, and the gap each reports is small where the solver converged."""
    net = mlp([5, 7, 6, 3], seed=seed)
    g = lipbound.as_graph(net, (5,))
    oracle = fazlyab_lipsdp(net)
    for solver in ("clarabel", "first-order"):
        res = lipsdp(g, solver=solver)
        d = res.details
        assert res.kind == "certified_upper"
        assert d["sdp_lower"] <= oracle * (1 + 1e-6) and oracle <= res.value * (1 + 1e-6)
        assert d["sdp_lower"] >= oracle * (1 - 1e-2)  # measured: within 3e-4
        assert d["sdp_gap"] == pytest.approx(res.value / d["sdp_lower"] - 1)
        assert d["stopped_by"] == "converged"


def test_cut_short_by_time_says_so():
    """With no time, the first-order solver stops after one step: its value is still checked,
    its dual bound still below the SDP optimum, and it says ``stopped_by="time"``."""
    net = mlp([5, 9, 7, 3], seed=8)
    res = lipsdp(lipbound.as_graph(net, (5,)), solver="first-order", time_budget=0.0)
    assert res.kind == "certified_upper" and res.details["stopped_by"] == "time"
    assert res.details["sdp_lower"] <= fazlyab_lipsdp(net) * (1 + 1e-6) <= res.value * (1 + 1e-6)


@pytest.mark.parametrize("act", [nn.Tanh, nn.GELU, lambda: nn.LeakyReLU(0.1)])
def test_dual_below_the_interior_point_optimum(act):
    """Other sectors and a residual net: the interior point's own optimum is the oracle."""
    for net, shape in ((mlp([5, 8, 6, 2], seed=3, act=act), (5,)), (resnet(seed=4, act=act), (6,))):
        g = lipbound.as_graph(net, shape)
        ipm = lipsdp(g, solver="clarabel")
        fo = lipsdp(g, solver="first-order")
        optimum = ipm.details["solver_value"]
        for res in (ipm, fo):
            assert res.details["sdp_lower"] <= optimum * (1 + 1e-6) <= res.value * (1 + 2e-6)
            assert res.details["sdp_lower"] >= optimum * 0.9


def test_dual_of_an_infeasible_guess_is_repaired():
    """A dual matrix far from feasible (random) still gives a value below the optimum."""
    net = mlp([4, 6, 5, 2], seed=5)
    g = lipbound.as_graph(net, (4,))
    lmi = balanced(lmi_of_graph(g))
    from lipbound.methods.lipsdp_dual import repaired_dual

    oracle = fazlyab_lipsdp(net)
    rng = np.random.default_rng(0)
    for _ in range(20):
        value = lmi.scale * np.sqrt(repaired_dual(lmi, rng.standard_normal((lmi.size, 3))))
        assert 0 < value <= oracle * (1 + 1e-9)


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU, lambda: nn.LeakyReLU(0.05)])
def test_chain_elimination_matches_the_assembled_schur_complement(act):
    net = mlp([7, 9, 8, 8, 3], seed=2, act=act)
    lmi = balanced(lmi_of_graph(lipbound.as_graph(net, (7,))))
    t, _ = fast_multipliers(lmi)
    rng = np.random.default_rng(1)
    for lm in (lmi, lmi.reduced()):
        for tau in (0.0, 1e-3):
            tk = t * rng.uniform(0.5, 1.5, t.shape)
            a, b = lm.schur(tk, tau, gradient=True, top=3), chain_schur(lm, tk, tau, gradient=True, top=3)
            if not np.isfinite(a.rho):
                assert not np.isfinite(b.rho)
                continue
            assert np.allclose(a.lams, b.lams, rtol=1e-10, atol=1e-12)
            assert np.allclose(a.grads, b.grads, rtol=1e-8, atol=1e-10 * np.abs(a.grads).max())
    bad = t.copy()
    bad[: lmi.blocks[1].size] *= -1  # a negative diagonal: the neuron block is indefinite
    assert not np.isfinite(chain_schur(lmi, bad).rho)


def test_perturbed_multipliers_are_rejected_and_labelled_estimate(monkeypatch):
    """A solver that returns an infeasible multiplier set (the optimum's, one layer's multipliers
    negated) with an optimistic rho: the check rejects it and lipsdp reports an estimate."""
    net = mlp([6, 7, 5, 2], seed=6)
    g = lipbound.as_graph(net, (6,))
    lmi = balanced(lmi_of_graph(g))
    good = lipsdp(g, solver="first-order")
    t, _ = fast_multipliers(lmi)
    bad = t.copy()
    bad[lmi.neuron_slices[0]] *= -1.0
    rho = (good.value / lmi.scale) ** 2
    assert not is_certificate(lmi, rho, bad)
    shrunk = t.copy()
    shrunk[lmi.neuron_slices[0]] *= 1e-3  # positive, but too small for the optimum's rho
    assert not is_certificate(lmi, rho, shrunk)
    try:  # certify checks their own least rho instead: never below the optimum, or rejected
        assert certify(lmi, shrunk).value >= good.value * (1 - 1e-6)
    except CertificateRejected:
        pass
    with pytest.raises(CertificateRejected):
        certify(lmi, bad, claimed_rho=rho)
    monkeypatch.setattr(lipsdp_module, "solve_first_order", lambda red, **k: (bad, rho, {"dual_rho": rho, "solver_status": "converged"}))
    monkeypatch.setattr(lipsdp_module, "fast_multipliers", lambda lmi_, **k: (np.zeros(lmi_.n_neurons), 0.0))
    res = lipsdp(g, solver="first-order")
    assert res.kind == "estimate" and res.details["verified"] is False


@pytest.mark.parametrize("seed", [0, 1])
def test_chordal_interior_point_reaches_the_oracle(seed):
    """The chordal decomposition of a chain's LMI: same optimum as the SDP written from the paper,
    its dual bound just below it, and the certificate just above."""
    net = mlp([5, 6, 6, 6, 6, 3], seed=seed)
    oracle = fazlyab_lipsdp(net)
    res = lipsdp(lipbound.as_graph(net, (5,)), solver="chordal")
    d = res.details
    assert res.kind == "certified_upper" and d["solver"] == "chordal"
    assert d["sdp_lower"] <= oracle * (1 + 1e-6) and oracle <= res.value * (1 + 1e-6)
    assert d["sdp_gap"] <= 1e-4


def test_markov_completion_reproduces_every_clique():
    """A PSD matrix's block-tridiagonal part, completed: each clique block comes back exactly."""
    rng = np.random.default_rng(3)
    sizes = [3, 2, 4, 2]
    full = rng.standard_normal((11, 6))
    full = full @ full.T
    off = np.cumsum([0] + sizes)
    blk = lambda i, j: full[off[i]:off[i + 1], off[j]:off[j + 1]]  # noqa: E731
    v = markov_completion([blk(j, j) for j in range(4)], [blk(j, j - 1) for j in range(1, 4)])
    got = v @ v.T
    for j in range(1, 4):
        rows = slice(off[j - 1], off[j + 1])
        assert np.allclose(got[rows, rows], full[rows, rows], atol=1e-9)


def test_chordal_refuses_what_is_not_a_chain():
    g = lipbound.as_graph(resnet(seed=1), (6,))
    with pytest.raises(NotApplicable, match="chains"):
        lipsdp(g, solver="chordal")


def _fuzz_net(seed: int) -> tuple[nn.Module, tuple[int]]:
    """A small random MLP or residual MLP, its activation, depth and widths drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    act = [nn.ReLU, nn.Tanh, lambda: nn.LeakyReLU(0.1), nn.GELU, nn.Sigmoid][seed % 5]
    n_in = int(rng.integers(2, 6))
    if seed % 3 == 2:
        return resnet(seed=seed, n_in=n_in, w=int(rng.integers(2, 5)), blocks=int(rng.integers(1, 3)), act=act), (n_in,)
    widths = [n_in] + [int(rng.integers(2, 7)) for _ in range(int(rng.integers(1, 4)))] + [int(rng.integers(1, 4))]
    net = mlp(widths, act=act, seed=seed)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(float(rng.uniform(0.5, 3.0)))
    return net, (n_in,)


@pytest.mark.parametrize("chunk", range(21))
def test_soundness_fuzz(chunk):
    """210 random MLPs and residual MLPs (fixed seeds), every solver path: no certified lipsdp
    value below a sampled Jacobian norm or pair quotient; every dual bound below its certificate."""
    for seed in range(chunk * 10, chunk * 10 + 10):
        net, shape = _fuzz_net(seed)
        g = lipbound.as_graph(net, shape)
        solver = {0: "clarabel", 3: "chordal", 2: "clarabel", 4: "ipm"}.get(seed % 6, "first-order")  # chordal: MLPs only
        res = lipsdp(g, solver=solver, lbfgs_iter=60)
        assert res.kind == "certified_upper", seed
        assert res.value >= witnessed(net, shape, seed=seed, n=6), seed
        assert res.details["sdp_lower"] <= res.value * (1 + 1e-6), seed
