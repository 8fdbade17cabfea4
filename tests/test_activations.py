"""The activation registry: every slope range (global, and on an interval) encloses the derivative
that autograd computes on torch's own function; the smoothed forms stay within tau; the entries
added through the registry (Softshrink / Shrink, RReLU, ThresholdedRelu, Hardshrink, Threshold)
match torch and onnx.reference or are refused as discontinuous."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipbound.errors import UnsupportedOperation
from lipbound.frontends.from_torch import from_torch
from lipbound.graph.activations import MODULES, smoothed

# one continuous instance of every registered module (refused settings are tested below)
KWARGS = {nn.LeakyReLU: {"negative_slope": 0.2}, nn.ELU: {"alpha": 1.7}, nn.CELU: {"alpha": 0.5},
          nn.Hardshrink: {"lambd": 0.0}, nn.Threshold: {"threshold": 0.3, "value": 0.3},
          nn.Softshrink: {"lambd": 0.7}, nn.RReLU: {"lower": 0.1, "upper": 0.3}}
CLASSES = list(MODULES)


def module_and_facts(cls):
    module = cls(**KWARGS.get(cls, {})).double().eval()
    if cls is nn.PReLU:
        module.weight.data.fill_(-0.3)
    entry = MODULES[cls]
    params = entry.module_params(module)
    fn = entry.function(**params) if entry.replaces_torch else module  # Softplus: the mathematical one
    return fn, entry.facts(**params)


def derivative(fn, t):
    """``s'`` by autograd on torch's function (the oracle, independent of the registry's formulas)."""
    t = t.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(t).sum(), t)
    return g


@pytest.mark.parametrize("cls", CLASSES)
def test_slope_range_encloses_the_derivative(cls):
    fn, facts = module_and_facts(cls)
    a, b = facts.slope
    g = derivative(fn, torch.linspace(-30, 30, 600_001, dtype=torch.float64))
    # (1e-7: torch computes some derivatives with float32 constants, e.g. 1/6 for Hardsigmoid)
    assert g.min().item() >= a - 1e-7 * abs(a) - 1e-12 and g.max().item() <= b + 1e-7 * abs(b) + 1e-12
    # the range is not loose by more than the outward rounding
    assert g.min().item() <= a + 1e-4 or a == 0.0
    assert g.max().item() >= b - 1e-4


def random_intervals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals of widths from 1e-6 to 20 placed in [-12, 12], some degenerate, some on kinks."""
    gen = torch.Generator().manual_seed(seed)
    centre = 24 * torch.rand(n, generator=gen, dtype=torch.float64) - 12
    width = 10 ** (7.3 * torch.rand(n, generator=gen, dtype=torch.float64) - 6)
    l, u = centre - width / 2, centre + width / 2
    l[:8] = torch.tensor([0.0, -3.0, 3.0, -1.0, -0.5, 0.3, 0.7, -0.7], dtype=torch.float64)  # ends on kinks
    u[:4] = l[:4]  # degenerate
    u[4:8] = l[4:8] + width[4:8]
    return l, u


@pytest.mark.parametrize("cls", CLASSES)
def test_slope_rule_on_intervals_is_sound_and_tight(cls):
    fn, facts = module_and_facts(cls)
    l, u = random_intervals(300, seed=hash(cls.__name__) % 1000)
    lo, hi = facts.slopes_on(l, u)
    frac = torch.linspace(0, 1, 4001, dtype=torch.float64)
    t = l[:, None] + (u - l)[:, None] * frac[None, :]
    inner = (l < u)  # autograd's value exactly at a kink belongs to no side: sample the open interval
    t = torch.where(inner[:, None], t.clamp_min(torch.nextafter(l, u)[:, None]).clamp_max(torch.nextafter(u, l)[:, None]), t)
    g = derivative(fn, t)
    tol = 1e-7 * torch.maximum(lo.abs(), hi.abs()) + 1e-12
    assert bool((g[inner] >= (lo - tol)[inner, None]).all()) and bool((g[inner] <= (hi + tol)[inner, None]).all())
    if facts.derivative is None and facts.pieces is None:
        return  # PReLU with several weights: the global range
    # tight: the sampled extremes reach the range (within 1e-6 where s' is monotone on [l, u])
    special = torch.tensor([*facts.kinks, *facts.critical_points], dtype=torch.float64)
    monotone = ~((special[None, :] > l[:, None]) & (special[None, :] < u[:, None])).any(1) if len(special) else inner
    # elsewhere the grid (step (u - l) / 4000) misses the extremum by at most max|s''| step (|s''| <= 2 here)
    slack = torch.where(monotone, 1e-6, 2 * (u - l) / 4000 + 1e-6)
    gap = torch.maximum(g.amin(1) - lo, hi - g.amax(1))
    assert bool((gap[inner] <= slack[inner]).all()), float(gap[inner].max())


def test_slope_rule_of_relu_from_the_design():
    """DESIGN §7: ReLU's slopes on [l, u] are {1} if l >= 0, {0} if u <= 0, else [0, 1]."""
    _, facts = module_and_facts(nn.ReLU)
    l = torch.tensor([0.0, -2.0, -1.0, 0.5])
    u = torch.tensor([2.0, 0.0, 1.0, 0.5])
    lo, hi = facts.slopes_on(l, u)
    assert lo.tolist() == [1.0, 0.0, 0.0, 1.0] and hi.tolist() == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("cls", [c for c in CLASSES if MODULES[c].facts is not None])
def test_smoothed_form_is_within_tau(cls):
    fn, facts = module_and_facts(cls)
    if facts.pieces is None and facts.kinks:
        with pytest.raises(ValueError, match="no smoothed form"):
            smoothed(facts, fn, 0.1)
        return
    t = torch.linspace(-12, 12, 240_001, dtype=torch.float64)
    for tau in (1e-1, 1e-3):
        err = (smoothed(facts, fn, tau)(t) - fn(t)).abs().max().item()
        assert err <= tau * (1 + 1e-9)
        if facts.pieces is not None and facts.kinks:  # really smooth: the gap at a kink is of order tau
            assert err >= tau / 10
            g = derivative(smoothed(facts, fn, tau), t)
            assert (g[1:] - g[:-1]).abs().max().item() < 0.05  # no jump of the slope on a grid of step 1e-4


# ---- entries added through the registry ---------------------------------------------------------
def net(act: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), act, nn.Linear(16, 3)).double()


@pytest.mark.parametrize("act,slope", [(nn.Softshrink(0.4), (0.0, 1.0)), (nn.RReLU(0.1, 0.3), (0.2, 1.0)),
                                       (nn.Threshold(0.2, 0.2), (0.0, 1.0)), (nn.Hardshrink(0.0), (1.0, 1.0))])
def test_new_torch_activations_match_torch(act, slope):
    model = net(act).eval()
    g = from_torch(model, (4,))  # from_torch itself checks the graph against the model
    x = 3 * torch.randn(64, 4, dtype=torch.float64)
    assert torch.allclose(g.forward(x), model(x), atol=1e-12)
    (node,) = [n for n in g if n.kind == "activation"]
    assert node.slope == pytest.approx(slope)


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.lin, self.fn = nn.Linear(16, 16).double(), fn

    def forward(self, x):
        return self.fn(self.lin(x))


@pytest.mark.parametrize("act,match", [
    (nn.Hardshrink(0.5), "Hardshrink.*discontinuous"), (nn.Threshold(0.1, 20.0), "Threshold.*discontinuous"),
    (_Call(lambda x: F.rrelu(x, 0.1, 0.3, True)), "RReLU in training mode"),
    (_Call(lambda x: F.threshold(x, 1.0, 0.0)), "Threshold.*discontinuous")])
def test_discontinuous_or_random_torch_activations_are_refused(act, match):
    with pytest.raises(UnsupportedOperation, match=match):
        from_torch(net(act), (4,))


onnx = pytest.importorskip("onnx")


def onnx_activation(op: str, **attrs):
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op,attrs,torch_fn", [
    ("Shrink", {"bias": 0.6, "lambd": 0.6}, lambda x: F.softshrink(x, 0.6)),
    ("ThresholdedRelu", {"alpha": 0.0}, torch.relu)])
def test_new_onnx_activations_match_the_reference(op, attrs, torch_fn):
    from lipbound.frontends.from_onnx import from_onnx, reference_evaluator
    model = onnx_activation(op, **attrs)
    g = from_onnx(model)  # checked against onnx.reference on random inputs in [0, 1)
    x = (4 * np.random.default_rng(0).standard_normal((1, 64))).astype(np.float32)
    ref = reference_evaluator(model).run(None, {"x": x})[0]
    got = g.forward(torch.from_numpy(x)).numpy()
    assert np.allclose(got, ref, atol=1e-6) and np.allclose(got, torch_fn(torch.from_numpy(x)).numpy(), atol=1e-6)
    assert g.nodes["y"].slope == (0.0, 1.0)


@pytest.mark.parametrize("op,attrs,match", [
    ("ThresholdedRelu", {}, "ThresholdedRelu.*alpha=1.*discontinuous"),
    ("ThresholdedRelu", {"alpha": 0.5}, "ThresholdedRelu.*discontinuous"),
    ("Shrink", {"bias": 0.0, "lambd": 0.5}, "Shrink.*discontinuous")])
def test_discontinuous_onnx_activations_are_refused(op, attrs, match):
    from lipbound.frontends.from_onnx import from_onnx
    with pytest.raises(UnsupportedOperation, match=match):
        from_onnx(onnx_activation(op, **attrs))


def test_registry_entries_reach_both_frontends():
    """Every entry with an ONNX operator is found by the ONNX frontend and labelled as declared."""
    from lipbound.graph.activations import ONNX
    assert {"Relu", "Shrink", "ThresholdedRelu", "Clip", "PRelu"} <= set(ONNX)
    assert math.isclose(MODULES[nn.RReLU].facts(lower=0.1, upper=0.3).slope[0], 0.2)


def test_smoothed_abs_within_tau():
    """|t| = -t + 2 relu(t): a slope jump of 2, so each softplus term needs h = tau / (2 log 2);
    the error at 0 is then exactly tau."""
    from lipbound.graph.activations import REGISTRY
    entry = REGISTRY["Abs"]
    t = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    tau = 1e-2
    err = (smoothed(entry.facts(), entry.function(), tau)(t) - t.abs()).abs().max().item()
    assert tau * 0.99 <= err <= tau * (1 + 1e-9)
