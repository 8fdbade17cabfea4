"""LipSDP with open solvers: checked certificates, never a solver's unverified word, best."""

from __future__ import annotations

import builtins
import importlib
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.methods.autolip import autolip
from lipbound.methods.best import best
from lipbound.methods.eclipse import eclipse_fast
from lipbound.methods.lipsdp import lipsdp, solve_cvxpy, solve_first_order
from lipbound.methods.lmi import lmi_of_graph
from lipbound.methods.sdp_verify import CertificateRejected, certify, is_certificate

from conftest import REPO
from test_eclipse import exact_one_hidden, mlp, resnet, witnessed

lipsdp_module = importlib.import_module("lipbound.methods.lipsdp")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("solver", ["clarabel", "first-order"])
def test_above_exact_one_hidden_layer(seed, solver):
    net = mlp([7, 6, 3], seed=seed)
    g = lipbound.as_graph(net, (7,))
    res = lipsdp(g, solver=solver)
    assert res.kind == "certified_upper" and res.details["verified"]
    exact = exact_one_hidden(net)
    assert exact * (1 - 1e-12) <= res.value <= eclipse_fast(g).value * (1 + 1e-9)


def test_first_order_matches_interior_point():
    g = lipbound.as_graph(mlp([5, 8, 6, 2], seed=5, act=nn.Tanh), (5,))
    ipm = lipsdp(g, solver="clarabel")
    fo = lipsdp(g, solver="first-order")
    assert ipm.kind == fo.kind == "certified_upper"
    assert abs(fo.value - ipm.value) <= 2e-3 * ipm.value
    layer = lipsdp(g, solver="first-order", variant="layer")
    assert ipm.value <= layer.value * (1 + 1e-6)  # one multiplier per neuron is at least as tight


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU, nn.Sigmoid])
def test_random_nets_above_witness(act):
    net = mlp([6, 10, 10, 3], act=act, seed=7)
    g = lipbound.as_graph(net, (6,))
    res = lipsdp(g)
    assert res.kind == "certified_upper"
    assert witnessed(net, 6) <= res.value <= autolip(g).value


def test_residual_whole_network():
    net = resnet(seed=2)
    g = lipbound.as_graph(net, (6,))
    res = lipsdp(g, solver="first-order")
    assert res.kind == "certified_upper"
    assert witnessed(net, 6) <= res.value <= eclipse_fast(g).value * (1 + 1e-9)


def _solved(seed=3):
    net = mlp([6, 5, 4, 2], seed=seed)
    lmi = lmi_of_graph(lipbound.as_graph(net, (6,)))
    t, rho, _ = solve_cvxpy(lmi.reduced(), solver="clarabel")
    return net, lmi, t, rho


def test_perturbed_multipliers_never_pass_the_check():
    net, lmi, t, rho = _solved()
    cert = certify(lmi, t, claimed_rho=rho)
    assert is_certificate(lmi, cert.rho, cert.t)
    rng = np.random.default_rng(0)
    for _ in range(5):
        bad = t * rng.uniform(0.3, 1.7, size=t.shape)
        assert not is_certificate(lmi, rho, bad)  # the solver's rho is not feasible for other multipliers
        try:  # certify recomputes rho for them: never below the SDP optimum, so above the constant
            value = certify(lmi, bad).value
        except CertificateRejected:
            continue
        assert value >= cert.value * (1 - 1e-6) and value >= witnessed(net, 6)
    assert not is_certificate(lmi, rho * (1 - 1e-4), t)  # an optimistic claim fails
    neg = t.copy()
    neg[0] = -abs(neg[0]) - 1.0
    assert not is_certificate(lmi, rho * 2, neg)  # negative multipliers prove nothing
    with pytest.raises(CertificateRejected):
        certify(lmi, np.zeros_like(t))  # neuron block not positive definite
    with pytest.raises(CertificateRejected):
        certify(lmi, np.full_like(t, np.nan))


def test_bad_solver_answer_is_reported_as_estimate(monkeypatch):
    net, lmi, t, rho = _solved()
    monkeypatch.setattr(lipsdp_module, "solve_cvxpy", lambda red, **k: (np.zeros_like(t), rho * 0.5, {}))
    res = lipsdp(lipbound.as_graph(net, (6,)), solver="clarabel")
    assert res.kind == "estimate" and res.details["verified"] is False
    assert "not positive definite" in res.details["reason"]


def test_clear_error_without_cvxpy(monkeypatch):
    real_import = builtins.__import__

    def no_cvxpy(name, *args, **kwargs):
        if name == "cvxpy" or name.startswith("cvxpy."):
            raise ImportError("No module named 'cvxpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cvxpy", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_cvxpy)
    g = lipbound.as_graph(mlp([4, 5, 2]), (4,))
    with pytest.raises(NotApplicable, match=r"lipbound\[sdp\]"):
        lipsdp(g, solver="clarabel")
    res = lipsdp(g)  # auto falls back to the first-order solver
    assert res.details["solver"] == "first-order" and res.kind == "certified_upper"


def test_clear_error_without_the_solver(monkeypatch):
    import cvxpy

    monkeypatch.setattr(cvxpy, "installed_solvers", lambda: ["SCS"])
    with pytest.raises(NotApplicable, match="'clarabel' is not installed"):
        lipsdp(lipbound.as_graph(mlp([4, 5, 2]), (4,)), solver="clarabel")


def test_bad_options():
    g = lipbound.as_graph(mlp([4, 5, 2]), (4,))
    with pytest.raises(lipbound.InvalidInput, match="variant"):
        lipsdp(g, variant="network")
    with pytest.raises(lipbound.InvalidInput, match="solver"):
        lipsdp(g, solver="mosek")
    with pytest.raises(NotApplicable, match="max_size"):
        lipsdp(g, max_size=6)


def test_first_order_respects_time_limit():
    lmi = lmi_of_graph(lipbound.as_graph(mlp([6, 12, 12, 2], seed=1), (6,))).reduced()
    t, rho, info = solve_first_order(lmi, time_limit=0.0)
    assert info["solver_status"] == "time limit"
    assert certify(lmi, t).rho >= rho * (1 - 1e-9)


def test_best_takes_the_least_certified():
    net = mlp([5, 8, 8, 2], seed=9)
    rep = lipbound.estimate(net, (5,), methods=("autolip", "eclipse-fast", "lipsdp", "best"), progress=False,
                            method_options={"best": {"methods": ("autolip", "eclipse-fast", "lipsdp")}})
    b = rep.result("best")
    assert b.kind == "certified_upper"
    assert b.value == min(rep.result(m).value for m in ("autolip", "eclipse-fast", "lipsdp"))
    assert [r["method"] for r in b.details["ran"]] == ["autolip", "eclipse-fast", "lipsdp"]
    assert b.details["chosen"] == "lipsdp"


def test_best_default_order_on_a_small_relu_net():
    net = mlp([6, 5, 2], seed=4)
    res = best(lipbound.as_graph(net, (6,)), budget=60)
    ran = [r["method"] for r in res.details["ran"]]
    assert ran[:2] == ["autolip", "eclipse-fast"] and ran[-1] == "exact"
    certified = [r["value"] for r in res.details["ran"] if r.get("kind") in ("certified_upper", "exact")]
    assert res.value == min(certified)
    assert res.value >= exact_one_hidden(net) * (1 - 1e-9)


def test_best_skips_what_does_not_apply_and_respects_budget():
    g = lipbound.as_graph(mlp([4, 6, 2], act=nn.GELU), (4,))
    res = best(g, budget=60)
    skipped = {r["method"]: r.get("skipped") for r in res.details["ran"]}
    assert "a * b >= 0" in skipped["eclipse-fast"]
    assert res.value <= autolip(g).value
    with pytest.raises(ValueError, match="best cannot run"):
        best(g, methods=("nope",))
    with pytest.raises(NotApplicable, match="no certified method"):
        best(g, budget=0)


def _realnet(realnets, name):
    sys.path.insert(0, str(REPO / "examples"))
    from realnets import lipsdp_mat

    return lipsdp_mat(realnets / name)


def test_lipsdp_random_weights_matches_published(realnets):
    net, shape = _realnet(realnets, "lipsdp_random_weights.mat")
    res = lipsdp(lipbound.as_graph(net, shape), solver="first-order")
    assert res.kind == "certified_upper"
    assert abs(res.value - 36.482) <= 36.482 * 1e-3  # published LipSDP-Neuron; true constant 36.48223
    assert res.value >= 36.4822


def test_lipsdp_mnist_weights(realnets):
    net, shape = _realnet(realnets, "lipsdp_mnist_weights.mat")
    res = lipsdp(lipbound.as_graph(net, shape), solver="first-order")
    assert res.kind == "certified_upper"
    assert 24.0265 <= res.value <= 24.37  # true L >= ||W2 W1|| = 24.0265; LipSDP-Neuron optimum 24.3663
