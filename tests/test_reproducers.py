"""The audit's soundness reproducers (``../shared/soundness/``), one test each, self-contained.

Every expected value here is derived by hand from the tiny network (derivation in the comments) or
computed by an oracle that does not use lipbound (pair quotients and power iterations on the
original ``nn.Module``). Each test failed on main before the soundness fixes (2026-11-29).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbound
from lipbound.errors import InvalidInput, NotApplicable
from oracles import ZeroNet

UPPER_KINDS = ("exact", "certified_upper")


def _mlp(act: nn.Module, w1, b1, w2, b2=None) -> nn.Sequential:
    w1, w2 = torch.tensor(w1, dtype=torch.float64), torch.tensor(w2, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), act, nn.Linear(w2.shape[1], w2.shape[0])).double()
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[0].bias.copy_(torch.tensor(b1, dtype=torch.float64))
        net[2].weight.copy_(w2)
        net[2].bias.copy_(torch.zeros(w2.shape[0]) if b2 is None else torch.tensor(b2, dtype=torch.float64))
    return net


def _pair(net: nn.Module, x: float, y: float) -> float:
    with torch.no_grad():
        fx, fy = net(torch.tensor([[x]], dtype=torch.float64)), net(torch.tensor([[y]], dtype=torch.float64))
    return float((fx - fy).norm()) / abs(y - x)


def _assert_bracket_sound(report, true_value: float) -> None:
    """Every certified or exact value is >= the true constant, every witnessed one <= it."""
    for r in report.results:
        if r.kind in UPPER_KINDS:
            assert r.value >= true_value * (1 - 1e-7), (r.method, r.kind, r.value, true_value)
        if r.kind in ("exact", "witnessed_lower"):
            assert r.value <= true_value * (1 + 1e-7) + 1e-12, (r.method, r.kind, r.value, true_value)
    assert report.lower is None or report.lower <= report.upper


# ---- 1. saturating activations: ReLU6 and Hardtanh(-5, 5) are not ReLU / identity --------------
@pytest.mark.parametrize("case", ["relu6", "hardtanh5"])
def test_saturating_activations_are_not_taken_for_relu(case):
    if case == "relu6":
        # f(x) = 2 relu6(x) - relu6(2x): slopes 0 (x<0), 0 (0<x<3), 2 (3<x<6), 0 (x>6): L = 2
        net, x, y, true = _mlp(nn.ReLU6(), [[1.0], [2.0]], [0.0, 0.0], [[2.0, -1.0]]), 4.0, 5.0, 2.0
    else:
        # g(x) = ht5(x) - ht5(x + 2): slopes 0 (x<-7), -1 (-7<x<-5), 0 (-5<x<3), 1 (3<x<5), 0: L = 1
        net, x, y, true = _mlp(nn.Hardtanh(-5.0, 5.0), [[1.0], [1.0]], [0.0, 2.0], [[1.0, -1.0]]), 3.5, 4.5, 1.0
    assert _pair(net, x, y) == pytest.approx(true, rel=1e-12)  # the hand derivation, checked
    report = lipbound.estimate(net, (1,), progress=False)
    _assert_bracket_sound(report, true)
    report = lipbound.estimate(net, (1,), methods=["exact"], progress=False)
    _assert_bracket_sound(report, true)


def test_certify_radius_on_relu6_net_holds():
    # logits (2.1 relu6(x) - relu6(2x), 1): the class changes between x = 2.9 and 3.9
    net = _mlp(nn.ReLU6(), [[1.0], [2.0]], [0.0, 0.0], [[2.1, -1.0], [0.0, 0.0]], [0.0, 1.0])
    x = torch.tensor([[2.9]], dtype=torch.float64)
    cert = lipbound.certify(net, x)
    radius = float(cert.radius[0])
    assert math.isfinite(radius) and radius >= 0
    with torch.no_grad():
        label = int(net(x).argmax(1))
        ts = torch.linspace(-radius, radius, 20001, dtype=torch.float64).reshape(-1, 1) * (1 - 1e-9)
        assert bool((net(x + ts).argmax(1) == label).all()), "a point within the certified radius changes class"


# ---- 2. box domains: a witness on the box's face uses the slope of the region outside ----------
def test_box_face_witness_is_not_counted():
    # f(x) = relu(x + 10) - 0.5 relu(x) = 10 + 0.5 x on [0, 1]: L on the box is 0.5 (outside: 1)
    net = _mlp(nn.ReLU(), [[1.0], [1.0]], [10.0, 0.0], [[1.0, -0.5]])
    assert _pair(net, 0.25, 0.75) == pytest.approx(0.5, rel=1e-12)
    for method in ("lower", "exact"):
        report = lipbound.estimate(net, (1,), methods=[method], progress=False, domain=(0.0, 1.0))
        _assert_bracket_sound(report, 0.5)


# ---- 3. exact must not drop thin linear regions ------------------------------------------------
@pytest.mark.parametrize("lower_budget", [None, 0.0])
def test_exact_keeps_a_thin_region_1d(lower_budget):
    # f(x) = relu(x) - relu(-x) + K (relu(x) - relu(x - eps)): slope 1 + K on (0, eps), 1 elsewhere
    k, eps = 9.0, 1e-9
    net = _mlp(nn.ReLU(), [[1.0], [-1.0], [1.0]], [0.0, 0.0, -eps], [[1.0 + k, -1.0, -k]])
    assert _pair(net, 0.0, eps) == pytest.approx(1 + k, rel=1e-6)
    options = {} if lower_budget is None else {"exact": {"lower_budget": lower_budget}}
    report = lipbound.estimate(net, (1,), methods=["exact"], progress=False, method_options=options)
    _assert_bracket_sound(report, 1 + k)


@pytest.mark.parametrize("width,big", [(1e-7, 1e3), (1e-9, 1.0)])
def test_exact_keeps_a_thin_slab_4d(width, big):
    # relu(u.x) - relu(-u.x) + K (relu(u.x) - relu(u.x - w)) (+ a neuron that only inflates the
    # biases' scale): slope 1 + K across the slab 0 < u.x < w, 1 elsewhere, along u
    k, n = 9.0, 4
    u = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u /= u.norm()
    w1 = torch.stack([u, -u, u, torch.eye(n, dtype=torch.float64)[0]]).tolist()
    net = _mlp(nn.ReLU(), w1, [0.0, 0.0, -width, big], [[1.0 + k, -1.0, -k, 0.0]])
    with torch.no_grad():
        q = float(net((width * u).reshape(1, n)) - net(torch.zeros(1, n, dtype=torch.float64))) / width
    assert q == pytest.approx(1 + k, rel=1e-5)
    report = lipbound.estimate(net, (n,), methods=["exact", "lower"], progress=False)
    _assert_bracket_sound(report, 1 + k)


# ---- 4. bicubic interpolation has negative weights ---------------------------------------------
class _Resize(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


def _power_lower(net: nn.Module, shape, steps: int = 300) -> float:
    """``||A v||`` after power iterations on the linear map ``net`` (float64): a lower bound of ``||A||``."""
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(steps):
        x = x.requires_grad_(True)
        y = net(x)
        (g,) = torch.autograd.grad(y, x, y.detach())
        x = (g / g.norm()).detach()
    with torch.no_grad():
        return float(net(x).norm())


@pytest.mark.parametrize("scale,hw", [(2, 8), (2, 40), (0.5, 80)])
def test_bicubic_resize_bound_is_certified(scale, hw):
    net = _Resize(scale)
    sigma = _power_lower(net, (1, hw, hw))
    try:
        r = lipbound.autolip(net, (1, hw, hw), certified=True)
    except (NotApplicable, lipbound.UnsupportedOperation):
        return  # a refusal is sound
    assert r.kind == "certified_upper"
    assert r.value >= sigma * (1 - 1e-9)


# ---- 5. pair witnesses and float64 rounding ----------------------------------------------------
def test_pair_witness_with_large_offset_stays_below_certified_bounds():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        net[2].weight.mul_(1e-3)
        net[2].bias.fill_(1e9)
    report = lipbound.estimate(net, (3,), methods=["autolip", "seqlip", "lower"], progress=False)
    low = report.result("lower")
    for r in report.results:
        if r.kind in UPPER_KINDS:
            assert low.value <= r.value, (r.method, r.value, low.value)
    # the same network without the offset has the same constant: the witness must stay below it too
    free = nn.Sequential(net[0], net[1], nn.Linear(4, 1)).double()
    with torch.no_grad():
        free[2].weight.copy_(net[2].weight)
        free[2].bias.zero_()
    assert low.value <= lipbound.autolip(free, (3,), certified=True).value


# ---- 6. Jacobian witnesses at coinciding kinks --------------------------------------------------
def test_witness_at_coinciding_kinks_is_rejected():
    f = ZeroNet()  # identically 0 (L = 0)
    with torch.no_grad():
        assert float(f(torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(-1, 1)).abs().max()) == 0.0
    witness = {"form": "jacobian", "x": torch.zeros(1, dtype=torch.float64), "v": torch.ones(1, dtype=torch.float64)}
    try:
        value = lipbound.witness_value(f, witness)
    except InvalidInput:
        value = None
    assert value is None or value <= 1e-12
    r = lipbound.lower_bound(f, (1,), data=torch.zeros(8, 1, dtype=torch.float64), time_budget=2)
    assert r.value <= 1e-12


# ---- 7. activation-free networks ----------------------------------------------------------------
def test_activation_free_conv_net_does_not_crash():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(18, 1)).double()
    jac = torch.autograd.functional.jacobian(net, torch.zeros(1, 2, 6, dtype=torch.float64)).reshape(1, 12)
    true = float(torch.linalg.matrix_norm(jac, ord=2))  # the net is linear: L = ||J||_2
    for methods in (["lower"], ["exact"], None):
        try:
            report = lipbound.estimate(net, (2, 6), methods=methods, progress=False)
        except NotApplicable:
            assert methods == ["exact"]
            continue
        _assert_bracket_sound(report, true)
        if report.lower is not None:
            assert report.lower >= true * (1 - 1e-6)
