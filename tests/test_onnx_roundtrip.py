"""Round trips torch -> ONNX -> lipbound: the ONNX graph computes the torch net, and AutoLip and
SeqLip certify the same numbers as on the torch frontend's graph of the same net.

Oracles: the torch net itself (forward), the torch frontend (a separate translation of the same
net: same graph => same certified numbers), and Jacobian norms of the torch net at random points
(a certified value must exceed them). ``torch.onnx.export(..., dynamo=False)`` (the TorchScript
exporter) works offline with torch 2.13; the dynamo exporter would need onnxscript, which is not
installed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")

import lipbound  # noqa: E402
from lipbound.frontends.from_onnx import from_onnx  # noqa: E402
from lipbound.graph.ir import Activation, Affine, Concat  # noqa: E402


def export(net: nn.Module, shape, opset: int = 17):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, *shape), buf, dynamo=False, opset_version=opset)
    return onnx.load_from_string(buf.getvalue())


def jacobian_lower(net: nn.Module, shape, points: int = 3) -> float:
    """Largest Jacobian norm of the torch net at random points (a lower bound of its constant)."""
    net64 = net.double()
    gen = torch.Generator().manual_seed(3)
    best = 0.0
    for _ in range(points):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        j = torch.autograd.functional.jacobian(lambda z: net64(z[None]).reshape(-1), x)
        best = max(best, torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2).item())
    net.float()
    return best


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def conv_net(act: nn.Module, padding_mode: str = "zeros") -> nn.Module:
    """(1, 3, 3) -> Conv (2 channels) -> act -> Linear: 18 hidden neurons, so that SeqLip's
    certified solver enumerates every pattern (deterministic)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode=padding_mode), act, nn.Flatten(),
                         nn.Linear(18, 3))


INF = float("inf")
# name: (net, opset, label of its activation in the ONNX graph, twin activation for the torch
# frontend when it has no handler for the net's own: torch.clamp)
CASES = {
    "silu": (lambda: conv_net(nn.SiLU()), 17, "SiLU"),
    "gelu-erf": (lambda: conv_net(nn.GELU()), 17, "GELU"),
    "gelu-tanh": (lambda: conv_net(nn.GELU(approximate="tanh")), 17, "GELU(tanh)"),
    "mish": (lambda: conv_net(nn.Mish()), 17, "Mish"),
    "hardswish-opset13": (lambda: conv_net(nn.Hardswish()), 13, "Hardswish"),  # HardSigmoid + Mul
    "hardswish-opset17": (lambda: conv_net(nn.Hardswish()), 17, "Hardswish"),  # HardSwish
    "hardsigmoid": (lambda: conv_net(nn.Hardsigmoid()), 17, "HardSigmoid"),
    "relu6": (lambda: conv_net(nn.ReLU6()), 17, "Clip"),
    "clamp-min": (lambda: conv_net(Lambda(lambda x: torch.clamp(x, min=-0.2))), 17, "Clip",  # Clip(x, lo, "")
                  nn.Hardtanh(-0.2, INF)),
    "clamp-max": (lambda: conv_net(Lambda(lambda x: torch.clamp(x, max=0.3))), 17, "Clip",  # Clip(x, "", hi)
                  nn.Hardtanh(-INF, 0.3)),
    "circular-conv": (lambda: conv_net(nn.ReLU(), "circular"), 17, "ReLU"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_same_function_and_same_certified_numbers(case):
    make, opset, label, *twin = CASES[case]
    net = make()
    g = from_onnx(export(net, (1, 3, 3), opset))
    if twin:
        net[1] = twin[0]
    gt = lipbound.as_graph(net, (1, 3, 3))
    # the composite became one activation, with the right facts
    (act,) = [n for n in g if isinstance(n, Activation)]
    (act_t,) = [n for n in gt if isinstance(n, Activation)]
    assert act.label == label
    assert act.slope == pytest.approx(act_t.slope, rel=1e-6, abs=1e-12)
    assert (act.pieces is None) == (act_t.pieces is None)
    x = torch.randn(5, 1, 3, 3)
    with torch.no_grad():
        assert torch.allclose(g.forward(x), net(x), atol=1e-5, rtol=1e-5)
    auto = lipbound.autolip(g, certified=True).value
    assert auto == pytest.approx(lipbound.autolip(gt, certified=True).value, rel=1e-6)
    seq = lipbound.seqlip(g)
    assert seq.details["pairs"]["exact"] == 1
    assert seq.value == pytest.approx(lipbound.seqlip(gt).value, rel=1e-6)
    assert seq.value >= jacobian_lower(net, (1, 3, 3)) * (1 - 1e-6)


def test_circular_padding_is_one_circular_pad_not_a_concatenation():
    # Conv1d and a 2-D F.pad(mode="circular") with unequal pads on the two axes and both sides
    torch.manual_seed(1)
    nets = {(2, 7): nn.Sequential(nn.Conv1d(2, 3, 3, padding=2, padding_mode="circular"), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(27, 2)),
            (2, 4, 5): nn.Sequential(Lambda(lambda x: nn.functional.pad(x, (1, 2, 2, 0), mode="circular")),
                                     nn.Conv2d(2, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 6, 2))}
    for shape, net in nets.items():
        g = from_onnx(export(net, shape))
        assert not any(isinstance(n, Concat) for n in g)
        pads = [n for n in g if isinstance(n, Affine) and "wrap" in n.op.label]
        assert len(pads) == 1  # the per-axis pads of the export merged into one
        x = torch.randn(4, *shape)
        with torch.no_grad():
            assert torch.allclose(g.forward(x), net(x), atol=1e-5)
        gt = lipbound.as_graph(net, shape)
        auto = lipbound.autolip(g, certified=True).value
        # before: 2.9x the torch frontend's value (a Concat of slices costs sqrt(3) per axis)
        assert auto == pytest.approx(lipbound.autolip(gt, certified=True).value, rel=1e-6)
        assert auto >= jacobian_lower(net, shape) * (1 - 1e-6)


def test_grouped_conv_transpose_loads_with_the_reference_check():
    # onnx.reference 1.23 mixes up groups in ConvTranspose (a raw ValueError before)
    torch.manual_seed(2)
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 6 * 6, 2))
    g = from_onnx(export(net, (4, 3, 3)))  # check=True: compared with the corrected onnx.reference
    x = torch.randn(3, 4, 3, 3)
    with torch.no_grad():
        assert torch.allclose(g.forward(x), net(x), atol=1e-5)
    gt = lipbound.as_graph(net, (4, 3, 3))
    assert lipbound.autolip(g, certified=True).value == pytest.approx(lipbound.autolip(gt, certified=True).value,
                                                                      rel=1e-6)


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2, 2, padding=1, ceil_mode=True),  # the last window would start in the end padding: dropped
    nn.AvgPool2d(2, 2, padding=1, ceil_mode=True),
    nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
    nn.MaxPool2d(2, 2, ceil_mode=True),
    nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
    nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True),
])
def test_pooling_with_ceil_mode_round_trip(pool):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), pool, nn.Flatten())
    shape = (1, 8, 7)
    g = from_onnx(export(net, shape))
    x = torch.randn(3, *shape)
    with torch.no_grad():
        want = net(x).reshape(3, -1)
        assert g.forward(x).shape == want.shape
        assert torch.allclose(g.forward(x), want, atol=1e-5)
    assert lipbound.autolip(g, certified=True).value >= jacobian_lower(net, shape) * (1 - 1e-6)


def test_spec_pool_of_the_reference_check_agrees_with_torch_pooling():
    """The numpy MaxPool / AveragePool the reference check uses, against torch's own pooling
    (ONNX and torch agree for symmetric padding, also in ceil mode)."""
    from lipbound.frontends.onnx_reference import _spec_pool
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 8)).astype(np.float32)
    t = torch.as_tensor(x)
    for k, s, p, ceil in [(3, 2, 1, True), (2, 2, 0, True), (3, 3, 1, False), (2, 1, 1, True)]:
        pads = [p] * 4
        want = nn.functional.max_pool2d(t, k, s, p, ceil_mode=ceil).numpy()
        assert np.allclose(_spec_pool(x, "max", [k, k], [s, s], None, pads, None, ceil), want, atol=1e-6)
        for include in (True, False):
            want = nn.functional.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=include).numpy()
            kind = "average with pads" if include else "average"
            assert np.allclose(_spec_pool(x, kind, [k, k], [s, s], None, pads, None, ceil), want, atol=1e-6)
    # dilation
    want = nn.functional.max_pool2d(t, 2, 1, 1, dilation=2).numpy()
    assert np.allclose(_spec_pool(x, "max", [2, 2], [1, 1], [2, 2], [1] * 4, None, 0), want, atol=1e-6)
