"""GLipSDP's Scalability networks (``../shared/realnets/glipsdp_scalability``, skipped when absent):
every file loads, a few compute what ``onnx.reference`` computes, and the loaded architecture is
the one the file name states.

Oracles: ``onnx.reference.ReferenceEvaluator`` on the file (forward pass); the file name
(``mlp_L{L}_W{W}``: L hidden layers of width W; ``cnn_C{C}_CH{CH}``: C 3x3 convolutions of CH
channels) and the ONNX node list (the activation of each net) for the architecture.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx.reference import ReferenceEvaluator  # noqa: E402

from lipbound.frontends.from_onnx import from_onnx  # noqa: E402
from lipbound.graph.ir import Activation, Affine  # noqa: E402
from lipbound.linalg.operators import Conv, Dense  # noqa: E402

FOLDER = "glipsdp_scalability"
NAME = re.compile(r"(mlp)_L(\d+)_W(\d+)|(cnn)_C(\d+)_CH(\d+)")
ACTIVATIONS = {"Relu": "ReLU", "LeakyRelu": "LeakyReLU"}


@pytest.fixture
def scalability(realnets) -> Path:
    folder = realnets / FOLDER
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return folder


def _nets(folder: Path) -> list[Path]:
    nets = sorted(folder.glob("*.onnx"))
    assert nets, f"no .onnx file in {folder}"
    return nets


def _layers(g, kind) -> list:
    return [n for n in g if isinstance(n, Affine) and isinstance(n.op, kind)]


def test_every_net_loads_with_the_architecture_of_its_name(scalability):
    for path in _nets(scalability):
        family, *numbers = [m for m in NAME.fullmatch(path.stem).groups() if m]
        depth, width = int(numbers[0]), int(numbers[1])
        g = from_onnx(path, check=False)  # the forward pass is checked below, on a few nets
        assert g.input_shape == (1, 28, 28) and g.output_shape == (10,), path.name
        acts = [n for n in g if isinstance(n, Activation)]
        onnx_acts = {ACTIVATIONS[n.op_type] for n in onnx.load(str(path), load_external_data=False).graph.node
                     if n.op_type in ACTIVATIONS}
        assert len(acts) == depth and {a.label for a in acts} == onnx_acts, path.name
        if family == "mlp":
            assert all(a.shape == (width,) for a in acts), path.name
            dims = [(d.op.in_numel, d.op.out_numel) for d in _layers(g, Dense)]
            assert dims == [(784, width)] + [(width, width)] * (depth - 1) + [(width, 10)], path.name
        else:
            assert all(a.shape == (width, 28, 28) for a in acts), path.name
            convs = _layers(g, Conv)
            assert len(convs) == depth and all(tuple(c.op.weight.shape[2:]) == (3, 3) for c in convs), path.name
            assert [d.op.in_numel for d in _layers(g, Dense)] == [width], path.name  # the global average pool


@pytest.mark.parametrize("stem", ["mlp_L3_W16", "mlp_L65_W32", "cnn_C3_CH8", "cnn_C16_CH16"])
def test_forward_matches_onnx_reference(scalability, stem):
    path = scalability / f"{stem}.onnx"
    g = from_onnx(path, check=False)
    x = np.random.default_rng(0).random((1, *g.input_shape), dtype=np.float32)
    ref = ReferenceEvaluator(str(path)).run(None, {"input": x})[0]
    with torch.no_grad():
        got = g.forward(torch.as_tensor(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
