"""LipSDP with open solvers: checked certificates, never a solver's unverified word, best.

Lower bounds come from the original ``nn.Module`` (``test_eclipse`` helpers: Jacobians by autograd
+ SVD, pair quotients, and for one hidden layer a witness at the extreme slopes that is the true
constant); certificates are re-checked in exact rational arithmetic from the definition of the
quadratic constraints.
"""

from __future__ import annotations

import builtins
import importlib
import math
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.methods.autolip import autolip
from lipbound.methods import METHODS
from lipbound.methods.eclipse import INTERIOR, eclipse_fast, fast_multipliers
from lipbound.methods.lipsdp import lipsdp, solve_cvxpy, solve_first_order
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.sdp_verify import CertificateRejected, certify, is_certificate

from conftest import REPO
from test_eclipse import ACROSS_ZERO, ALL, exact_one_hidden, mixed, mlp, resnet, vertex_witness, witnessed

best = METHODS["best"]  # best with the registry bound (methods.best.best takes it as an argument)

lipsdp_module = importlib.import_module("lipbound.methods.lipsdp")


# ---- an exact re-check of a certificate ---------------------------------------------------------
def _rows(lmi, maps) -> list[dict[int, Fraction]]:
    """The rows of a block map (matrices of floats or of Fractions) over all basis columns, as
    sparse rational rows."""
    off = lmi.offsets
    rows: list[dict[int, Fraction]] = [{} for _ in range(len(next(iter(maps.values()))))]
    for k, m in maps.items():
        for r, row in enumerate(m):
            for c, x in enumerate(row):
                if x:
                    rows[r][off[k] + c] = Fraction(x) if isinstance(x, Fraction) else Fraction(float(x))
    return rows


def exact_N(lmi, rho: float, t: np.ndarray, pre: dict | None = None) -> list[list[Fraction]]:
    """``-M(rho, t)`` in rational arithmetic, written from the definition:
    ``rho ||dx||^2 - ||dy||^2 - sum_i 2 t_i (dw_i - a dv_i)(b dv_i - dw_i)``, with the LMI's
    stored maps or, for the blocks in ``pre``, the given exact ones."""
    n, off = lmi.size, lmi.offsets
    out = [[Fraction(0)] * n for _ in range(n)]
    for i in range(lmi.blocks[0].size):
        out[i][i] += Fraction(rho)
    for row in _rows(lmi, lmi.out):
        for r, x in row.items():
            for c, y in row.items():
                out[r][c] -= x * y
    k = 0
    for j, blk in enumerate(lmi.blocks[1:], start=1):
        for i, p in enumerate(_rows(lmi, (pre or {}).get(j, blk.pre))):
            a, b = Fraction(float(blk.lo[i])), Fraction(float(blk.hi[i]))
            ti = Fraction(float(t[k]))
            k += 1
            u = {c: -a * x for c, x in p.items()}  # dw - a dv
            v = {c: b * x for c, x in p.items()}  # b dv - dw
            u[off[j] + i] = u.get(off[j] + i, 0) + 1
            v[off[j] + i] = v.get(off[j] + i, 0) - 1
            for r, x in u.items():
                for c, y in v.items():
                    out[r][c] -= ti * x * y
                    out[c][r] -= ti * x * y
    return out


def exactly_positive_definite(mat: list[list[Fraction]]) -> bool:
    """All pivots of the LDL^T factorisation > 0, in rational arithmetic."""
    a = [row[:] for row in mat]
    n = len(a)
    for k in range(n):
        if a[k][k] <= 0:
            return False
        for i in range(k + 1, n):
            f = a[i][k] / a[k][k]
            if f:
                for j in range(k + 1, n):
                    a[i][j] -= f * a[k][j]
    return True


def test_accepted_certificates_are_exactly_feasible():
    """Every (rho, t) the float64 check accepts makes -M positive definite in exact arithmetic,
    also for rho a few ulps around the least one, where rounding decides."""
    net = mlp([4, 5, 4, 2], act=nn.GELU, seed=1)
    lmi = lmi_of_graph(lipbound.as_graph(net, (4,)))
    t, _, _ = solve_cvxpy(lmi.reduced(), solver="clarabel")
    t = np.maximum(t, 0.0)
    least = lmi.schur(t).rho
    accepted = 0
    for rel in [k * 2.0 ** -52 for k in range(-40, 41)] + [k * 1e-12 for k in range(2, 41, 6)]:
        rho = least * (1 + rel)
        if is_certificate(lmi, rho, t):
            accepted += 1
            assert exactly_positive_definite(exact_N(lmi, rho, t)), rel
    assert accepted > 0
    cert = certify(lmi, t)
    assert exactly_positive_definite(exact_N(lmi, cert.rho, cert.t))
    assert cert.value >= witnessed(net, 4)


# ---- the bound against independent lower bounds -------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("solver", ["clarabel", "first-order"])
def test_above_exact_one_hidden_layer(seed, solver):
    net = mlp([7, 6, 3], seed=seed)
    g = lipbound.as_graph(net, (7,))
    res = lipsdp(g, solver=solver)
    assert res.kind == "certified_upper" and res.details["verified"]
    exact = exact_one_hidden(net)
    assert exact * (1 - 1e-12) <= res.value <= eclipse_fast(g).value * (1 + 1e-9)


@pytest.mark.parametrize("solver", ["clarabel", "first-order"])
@pytest.mark.parametrize("name", list(ACROSS_ZERO) + ["ReLU", "LeakyReLU(0.1)", "Sigmoid"])
def test_one_hidden_layer_at_the_truth(name, solver):
    """The vertex witness is (up to its grid) the true constant, and LipSDP-Neuron is within 1% of
    it on these nets (measured: at most 0.16%). The first-order solver cannot leave its start when
    a + b = 0 (Abs: the optimum lies where the neuron block is singular), so there it is only
    checked against AutoLip."""
    for seed in (0, 1):
        net = mlp([6, 5, 3], act=ALL[name], seed=seed)
        g = lipbound.as_graph(net, (6,))
        res = lipsdp(g, solver=solver)
        assert res.kind == "certified_upper"
        truth = vertex_witness(net)
        assert truth <= res.value <= autolip(g).value * (1 + INTERIOR)
        if not (solver == "first-order" and name == "Abs"):
            assert res.value <= 1.01 * truth


def test_abs_by_hand():
    """f(x) = |x| + |-x| = 2|x| (LeakyReLU(-1) is |t|): L = 2, and LipSDP-Neuron proves 2 (t = 1 on
    both neurons makes -M = diag(rho - 4, [[1, -1], [-1, 1]]) >= 0 for rho = 4)."""
    net = nn.Sequential(nn.Linear(1, 2, bias=False), nn.LeakyReLU(-1.0), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    for solver in ("clarabel", "first-order"):
        res = lipsdp(lipbound.as_graph(net, (1,)), solver=solver)
        assert res.kind == "certified_upper"
        assert 2.0 <= res.value <= 2.0 * (1 + 1e-5)


@pytest.mark.parametrize("act", [nn.Tanh, nn.GELU, nn.Hardswish])
def test_first_order_matches_interior_point(act):
    g = lipbound.as_graph(mlp([5, 8, 6, 2], seed=5, act=act), (5,))
    ipm = lipsdp(g, solver="clarabel")
    fo = lipsdp(g, solver="first-order")
    assert ipm.kind == fo.kind == "certified_upper"
    assert abs(fo.value - ipm.value) <= 2e-3 * ipm.value
    layer = lipsdp(g, solver="first-order", variant="layer")
    assert ipm.value <= layer.value * (1 + 1e-6)  # one multiplier per neuron is at least as tight


@pytest.mark.parametrize("name", list(ALL))
def test_deep_chains_between_witness_and_autolip(name):
    """On chains LipSDP-Neuron is never above AutoLip: each sector constraint dominates the
    constraint |dw| <= max(|a|, |b|) |dv| (S-lemma), and that one with one multiplier per layer
    gives the product of norms."""
    net = mlp([6, 10, 10, 3], act=ALL[name], seed=7)
    g = lipbound.as_graph(net, (6,))
    res = lipsdp(g)
    assert res.kind == "certified_upper"
    assert witnessed(net, 6) <= res.value <= autolip(g).value


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU])
def test_residual_whole_network(act):
    net = resnet(seed=2, act=act)
    g = lipbound.as_graph(net, (6,))
    res = lipsdp(g, solver="first-order")
    assert res.kind == "certified_upper"
    assert witnessed(net, 6) <= res.value <= eclipse_fast(g).value * (1 + 1e-9)


@pytest.mark.parametrize("solver", ["clarabel", "first-order"])
def test_mixed_layers(solver):
    net = mixed(nn.GELU, nn.SiLU, seed=1)
    g = lipbound.as_graph(net, (2, 5))
    res = lipsdp(g, solver=solver)
    assert res.kind == "certified_upper"
    assert witnessed(net, (2, 5)) <= res.value <= eclipse_fast(g).value * (1 + 1e-6)


def _exact(m: torch.Tensor) -> list[list[Fraction]]:
    return [[Fraction(float(x)) for x in row] for row in m.detach()]


def _matmul(a: list[list[Fraction]], b: list[list[Fraction]]) -> list[list[Fraction]]:
    return [[sum((x * y for x, y in zip(row, col)), Fraction(0)) for col in zip(*b)] for row in a]


class _Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2), nn.Linear(2, 1)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc1(x))
        return self.fc4(torch.nn.functional.gelu(self.fc3(h + self.fc2(h))))


def _cancelling(kind: str) -> tuple[nn.Module, list[list[Fraction]]]:
    """A net whose second activation reads the first through a product ``W_b A`` that cancels to
    ~1e-10 of its factors (the rows of ``W_b`` are nearly orthogonal to the columns of ``A``), and
    that product in rationals. ``"fused"``: two consecutive Linear layers (``A = W_a``, fused into
    one operator); ``"residual"``: ``A = I + W_2`` of a skip connection, ``A`` of rank 2."""
    torch.manual_seed(0)
    if kind == "fused":
        net = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Linear(2, 3), nn.Linear(3, 2), nn.GELU(),
                            nn.Linear(2, 1)).double().eval()
        span, w_b = net[2].weight.detach().clone(), net[3].weight
    else:
        net = _Skip().double().eval()
        span = torch.randn(3, 2, dtype=torch.float64)
        with torch.no_grad():
            net.fc2.weight.copy_(span @ torch.randn(2, 3, dtype=torch.float64) - torch.eye(3))
        w_b = net.fc3.weight
    normal = torch.linalg.cross(span[:, 0], span[:, 1])
    with torch.no_grad():
        w_b.copy_(normal / normal.norm() + 1e-10 * torch.randn(2, 3, dtype=torch.float64))
    if kind == "fused":
        return net, _matmul(_exact(net[3].weight), _exact(net[2].weight))
    eye_plus = [[x + (1 if i == j else 0) for j, x in enumerate(row)] for i, row in enumerate(_exact(net.fc2.weight))]
    return net, _matmul(_exact(net.fc3.weight), eye_plus)


@pytest.mark.parametrize("kind", ["fused", "residual"])
def test_certificates_hold_for_the_exact_composed_maps(kind):
    """The stored product is off by ~1e-7 relative, far more than the assembly's rounding: it is
    within its error bound, and every accepted certificate holds for the exact product."""
    net, product = _cancelling(kind)
    lmi = lmi_of_graph(lipbound.as_graph(net, (2,)))
    stored = lmi.blocks[2].pre[1]
    scale = Fraction(2.0 ** round(math.log2(np.linalg.norm(stored) / np.linalg.norm(np.array(product, dtype=float)))))
    exact = [[scale * x for x in row] for row in product]  # the stored map is W_b A times a power of two
    err2 = sum((Fraction(float(stored[i, j])) - exact[i][j]) ** 2 for i in range(2) for j in range(2))
    assert 1e-20 < err2 <= sum(Fraction(float(e)) ** 2 for e in lmi.blocks[2].pre_err[1])
    t, _ = fast_multipliers(lmi)
    least = lmi.schur(t).rho
    accepted = 0
    for rel in [k * 1e-9 for k in range(-100, 101)] + [k * 1e-4 for k in range(1, 31)]:
        rho = least * (1 + rel)
        if is_certificate(lmi, rho, t):
            accepted += 1
            assert exactly_positive_definite(exact_N(lmi, rho, t, pre={2: {1: exact}})), rel
    assert accepted > 0


def test_certify_refuses_the_reduced_lmi():
    lmi = lmi_of_graph(lipbound.as_graph(mlp([6, 5, 2], seed=1), (6,)))
    t, rho, _ = solve_cvxpy(lmi.reduced(), solver="clarabel")
    with pytest.raises(CertificateRejected, match="reduced"):
        certify(lmi.reduced(), t)
    assert not is_certificate(lmi.reduced(), rho * 2, t)
    assert certify(lmi, t).value > 0


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


def test_bad_solver_answer_falls_back_to_the_start(monkeypatch):
    """Zero multipliers and half the optimum from the solver: the check proves other multipliers
    (the strictly feasible start's, or a mix with them), never the claim, never below the optimum."""
    net, lmi, t, rho = _solved()
    monkeypatch.setattr(lipsdp_module, "solve_cvxpy", lambda red, **k: (np.zeros_like(t), rho * 0.5, {"solver_status": "optimal"}))
    res = lipsdp(lipbound.as_graph(net, (6,)), solver="clarabel")
    assert res.kind == "certified_upper" and res.details["verify_candidate"] != "solver"
    assert res.value >= lmi.scale * math.sqrt(rho) * (1 - 1e-6)


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
    res = lipsdp(g)  # auto falls back to lipbound's own interior point (a chain)
    assert res.details["solver"] == "ipm" and res.kind == "certified_upper"


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


def test_first_order_respects_time_budget():
    net = mlp([6, 12, 12, 2], act=nn.SiLU, seed=1)
    g = lipbound.as_graph(net, (6,))
    lmi = lmi_of_graph(g)
    t, rho, info = solve_first_order(lmi.reduced(), time_budget=0.0)
    assert info["solver_status"] == "time limit"
    assert certify(lmi, t).rho >= rho * (1 - 1e-9)
    quick = lipsdp(g, solver="first-order", time_budget=0.0)  # one step, still checked
    assert quick.kind == "certified_upper" and quick.details["solver_status"] == "time limit"
    full = lipsdp(g, solver="first-order")  # the default time limit
    assert full.kind == "certified_upper" and full.details["solver_status"].startswith("converged")
    assert witnessed(net, 6) <= full.value <= quick.value
    assert quick.value <= eclipse_fast(g).value * (1 + 1e-6)


def test_best_takes_the_least_certified():
    net = mlp([5, 8, 8, 2], seed=9)
    rep = lipbound.estimate(net, (5,), methods=("autolip", "eclipse-fast", "lipsdp", "best"), progress=False,
                            method_options={"best": {"methods": ("autolip", "eclipse-fast", "lipsdp"), "tol": None}})
    b = rep.result("best")
    assert b.kind == "certified_upper"
    assert b.value == min(rep.result(m).value for m in ("autolip", "eclipse-fast", "lipsdp"))
    assert [r["method"] for r in b.details["ran"]] == ["autolip", "eclipse-fast", "lipsdp"]
    assert b.details["chosen"] == "lipsdp"


def test_best_default_order_on_a_small_relu_net():
    net = mlp([6, 5, 2], seed=4)
    res = best(lipbound.as_graph(net, (6,)), time_budget=60, tol=None)  # every member runs
    ran = [r["method"] for r in res.details["ran"]]
    assert ran[:2] == ["autolip", "eclipse-fast"] and ran[-1] == "exact"
    certified = [r["upper"] for r in res.details["ran"] if r.get("upper") is not None]  # exact: its bracket's upper end
    assert res.value == min(certified)
    assert res.value >= exact_one_hidden(net) * (1 - 1e-9)


def test_best_skips_what_does_not_apply_and_respects_budget():
    g = lipbound.as_graph(mlp([4, 6, 2], act=nn.GELU), (4,))
    res = best(g, time_budget=60)
    ran = {r["method"]: r for r in res.details["ran"]}
    assert "skipped" not in ran["eclipse-fast"] and "skipped" not in ran["lipsdp"]  # slopes across 0 are fine
    assert ran["lipsdp"]["kind"] == ran["eclipse-fast"]["kind"] == "certified_upper"
    assert res.value == min(r["value"] for r in ran.values() if r.get("kind") == "certified_upper")
    assert ran["exact"]["skipped"]  # exact needs piecewise-linear activations
    assert res.value <= autolip(g).value
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        best(g, methods=("nope",))
    with pytest.raises(ValueError, match="best cannot run"):
        best(g, methods=("autolip", "lower"))  # not an upper bound
    with pytest.raises(NotApplicable, match="no certified method"):
        best(g, time_budget=0)


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
