"""The float64 check of LipSDP certificates and the interior point's margin for it
(:func:`~lipbound.methods.sdp_verify.certify`, :func:`~lipbound.methods.sdp_verify.solving_margin`,
``solve_ipm(margin=...)``).

Oracles: numpy's dense eigenvalues of the assembled LMI (is it PSD at this ``rho``?) and LipSDP
solved by Clarabel from the torch weights (``test_lipsdp_ipm.scaled_oracle``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

import lipbound
from lipbound.methods.eclipse import balanced, fast_multipliers
from lipbound.methods.lipsdp_ipm import solve_ipm
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.sdp_verify import CertificateRejected, certify, is_certificate, solving_margin

from test_lipsdp_ipm import SECTORS, scaled_oracle, spread_mlp

CASES = [("relu", 3, 11), ("leaky", 4, 12), ("tanh", 5, 13)]


def _solved(act: str, depth: int, seed: int, margin: float | None = None):
    module, a, b = SECTORS[act]
    net = spread_mlp(module, depth, seed)
    lmi = balanced(lmi_of_graph(lipbound.as_graph(net, (4,))))
    interior, _ = fast_multipliers(lmi)
    m = solving_margin(lmi, interior) if margin is None else margin
    t, rho, _ = solve_ipm(lmi.reduced(), t0=interior, margin=m)
    return net, lmi, t, rho, m, (a, b), interior


def _min_eig(lmi, rho: float, t: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(lmi.dense_N(rho, t))[0])


@pytest.mark.parametrize("act,depth,seed", CASES)
def test_the_check_never_certifies_a_perturbed_point(act, depth, seed):
    """Multipliers halved on a random third of the neurons: at the solver's rho the LMI is then
    indefinite (numpy says so), the proof refuses it and certify rejects them; a rho just under
    the least feasible one of the solver's own multipliers is refused too."""
    _, lmi, t, rho, _, _, _ = _solved(act, depth, seed)
    bad = t.copy()
    bad[np.random.default_rng(seed).random(t.size) < 1 / 3] *= 0.5
    assert _min_eig(lmi, rho, bad) < 0
    assert not is_certificate(lmi, rho, bad)
    below = lmi.schur(t).rho * (1 - 1e-4)  # under the least feasible rho of the solver's own t
    assert _min_eig(lmi, below, t) < 0 and not is_certificate(lmi, below, t)
    with pytest.raises(CertificateRejected):  # halved multipliers: the neuron block is indefinite
        certify(lmi, bad, claimed_rho=rho)


@pytest.mark.parametrize("act,depth,seed", CASES)
def test_the_margin_solution_is_checked_first_time_above_the_optimum(act, depth, seed):
    """With solving_margin the check passes on its first attempt, the value is above the Clarabel
    optimum and within 1e-4 of it."""
    net, lmi, t, rho, m, (a, b), _ = _solved(act, depth, seed)
    assert m > 0
    cert = certify(lmi, t, claimed_rho=rho)
    oracle = scaled_oracle(net, a, b)
    assert cert.attempts == 1
    assert oracle * (1 - 1e-6) <= cert.value <= oracle * (1 + 1e-4)


def test_the_interior_point_keeps_a_large_margin():
    """A margin of 1e-3 of the LMI's diagonal: the solver's point has N(rho, t) >= margin I
    (numpy's eigenvalues; without the margin the optimum makes N singular), and costs rho."""
    net, lmi, t0, rho0, _, _, _ = _solved("leaky", 4, 12, margin=0.0)
    m = 1e-3 * float(np.abs(np.diag(lmi.dense_N(rho0, t0))).max())
    _, _, t, rho, _, _, _ = _solved("leaky", 4, 12, margin=m)
    assert _min_eig(lmi, rho, t) >= m * (1 - 1e-6)
    assert _min_eig(lmi, rho0, t0) < 0.01 * m
    assert rho > rho0 and math.isfinite(rho)
