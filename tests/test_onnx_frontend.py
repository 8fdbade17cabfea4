"""ONNX frontend: every supported operator against onnx.reference, built with onnx.helper.

Oracles: ``onnx.reference.ReferenceEvaluator`` (the forward pass), dense Jacobians of the
original function (a certified bound must exceed them) and the torch frontend on the same network
exported by ``torch.onnx``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import lipbound  # noqa: E402
from lipbound.errors import InvalidInput, UnsupportedOperation  # noqa: E402
from lipbound.frontends.from_onnx import from_onnx, reference_evaluator  # noqa: E402
from lipbound.graph.ir import Activation, MaxPool  # noqa: E402
from lipbound.linalg.operators import Conv, Dense, Diagonal, Permute, Reshape  # noqa: E402
from lipbound.linalg.structured import Kronecker  # noqa: E402

RNG = np.random.default_rng(0)


def w(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make(nodes, inits: dict[str, np.ndarray], in_shape, out="y", opset=17, in_name="x", out_shape=None):
    """A one-input one-output float model; ``in_shape`` may hold symbolic names."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # give the output its shape (the checker wants one), computed by the reference evaluator
    zeros = np.zeros([d if isinstance(d, int) else 1 for d in in_shape], np.float32)
    shape = out_shape or list(np.asarray(ReferenceEvaluator(model).run([out], {in_name: zeros})[0]).shape)
    if in_shape and not isinstance(in_shape[0], int):
        shape[0] = in_shape[0]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
    return model


def reference(model, x: np.ndarray, out=None) -> np.ndarray:
    ev = reference_evaluator(model)  # onnx.reference, BatchNormalization in test mode as the spec says
    name = model.graph.input[0].name
    return np.asarray(ev.run([out] if out else None, {name: x})[0])


def check_forward(model, input_shape=None, batched=True, out=None, samples=3, **kw):
    """The graph equals onnx.reference to 1e-5 (relative to the output's size) on random inputs."""
    g = from_onnx(model, input_shape, **kw)
    for _ in range(samples):
        x = RNG.standard_normal(g.input_shape).astype(np.float32)
        ref = reference(model, x[None] if batched else x, out).reshape(-1)
        got = g.forward(torch.as_tensor(x)[None]).detach().numpy().reshape(-1)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), (got, ref)
    return g


def jacobian_lower(g, trials=4) -> float:
    """Largest Jacobian norm of the graph at random points (a lower bound of its constant)."""
    g64 = g.to(dtype=torch.float64)
    best = 0.0
    for _ in range(trials):
        x = torch.as_tensor(RNG.standard_normal(g.input_shape))
        j = torch.autograd.functional.jacobian(lambda z: g64.forward(z[None]).reshape(-1), x)
        best = max(best, torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2).item())
    return best


def certified(g) -> float:
    return lipbound.autolip(g, certified=True).value


# ---- affine layers ------------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(1, 1.0, 1.0, (3,)), (0, 0.5, 2.0, (1, 3)), (1, 2.0, 0.0, (3,))])
def test_gemm(trans_b, alpha, beta, c_shape):
    b = w(3, 6) if trans_b else w(6, 3)
    m = make([helper.make_node("Gemm", ["x", "B", "C"], ["y"], transB=trans_b, alpha=alpha, beta=beta)],
             {"B": b, "C": w(*c_shape)}, [1, 6])
    g = check_forward(m)
    (aff,) = g.affine_nodes()
    assert isinstance(aff.op, Dense)
    wmat = alpha * (b if trans_b else b.T)
    assert certified(g) == pytest.approx(np.linalg.norm(wmat, 2), rel=1e-5)


def test_matmul_both_layouts_and_unbatched_input():
    # ERAN layout: input [5] without batch axis, W @ x then Add
    m = make([helper.make_node("MatMul", ["W", "x"], ["h"]), helper.make_node("Add", ["h", "b"], ["r"]),
              helper.make_node("Relu", ["r"], ["z"]), helper.make_node("MatMul", ["z", "V"], ["y"])],
             {"W": w(7, 5), "b": w(7), "V": w(7, 2)}, [5])
    g = check_forward(m, batched=False)
    assert g.input_shape == (5,)
    # x @ W on a batched 3-D input and W @ x contracting its second-to-last axis
    wm, vm = w(4, 3), w(2, 5)
    m = make([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["V", "h"], ["y"])],
             {"W": wm, "V": vm}, ["N", 5, 4])
    g = check_forward(m)
    assert g.input_shape == (5, 4) and g.output_shape == (2, 3)
    # x -> V x W is a Kronecker product: its norm is ||V|| ||W||, and the fused node is exact
    assert certified(g) == pytest.approx(np.linalg.norm(wm, 2) * np.linalg.norm(vm, 2), rel=1e-4)


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 2, 0, 1], strides=[2, 1]),
    dict(pads=[1, 1, 1, 1], dilations=[2, 2], group=2),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 3]),
    dict(auto_pad="VALID"),
])
def test_conv_padding_forms(attrs):
    group = attrs.get("group", 1)
    m = make([helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], **attrs)],
             {"W": w(4, 4 // group, 3, 3), "B": w(4)}, [1, 4, 9, 8])
    g = check_forward(m)
    assert certified(g) >= jacobian_lower(g, 1) * (1 - 1e-6)
    assert any(isinstance(op, Conv) for n in g.affine_nodes()
               for op in getattr(n.op, "ops", [n.op]))


def test_conv1d_and_batchnorm():
    m = make([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1]),
              helper.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["y"], epsilon=1e-3)],
             {"W": w(3, 2, 3), "s": w(3), "b": w(3), "mu": w(3), "var": np.abs(w(3)) + 0.1}, [1, 2, 10])
    g = check_forward(m)
    assert isinstance(g.nodes["y"].op, Diagonal) and g.nodes["y"].op.label == "BatchNorm"
    assert len(g.fused().affine_nodes()) == 1  # BatchNorm folded into the convolution


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(strides=[2, 1], pads=[0, 1, 2, 0]),
    dict(strides=[2, 2], output_shape=[10, 8], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], output_shape=[10, 8], auto_pad="SAME_LOWER"),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[1, 1], dilations=[2, 1]),
])
def test_conv_transpose(attrs):
    m = make([helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], **attrs)],
             {"W": w(4, 3, 3, 3), "B": w(3)}, [1, 4, 5, 4])
    g = check_forward(m)
    assert certified(g) >= jacobian_lower(g, 1) * (1 - 1e-6)


def test_grouped_conv_transpose_against_torch():
    # onnx.reference mishandles groups in ConvTranspose: torch is the oracle here
    weight, bias = w(4, 3, 3, 3), w(6)
    m = make([helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 1], pads=[1, 0, 1, 0], group=2,
                               dilations=[1, 2])], {"W": weight, "B": bias}, [1, 4, 5, 4], out_shape=[1, 6, 9, 8])
    g = from_onnx(m, check=False)
    x = torch.randn(3, 4, 5, 4)
    want = torch.nn.functional.conv_transpose2d(x, torch.as_tensor(weight), torch.as_tensor(bias), (2, 1), (1, 0),
                                                groups=2, dilation=(1, 2))
    assert torch.allclose(g.forward(x), want, atol=1e-5)


def test_conv_transpose_output_shape_equals_explicit_pads():
    weight = {"W": w(2, 3, 3, 3)}
    by_shape = make([helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], output_shape=[9, 7])],
                    weight, [1, 2, 5, 4], out_shape=[1, 3, 9, 7])
    by_pads = make([helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
                   weight, [1, 2, 5, 4])
    x = torch.randn(3, 2, 5, 4)
    assert torch.allclose(from_onnx(by_shape, check=False).forward(x), from_onnx(by_pads).forward(x))
    odd = make([helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], output_shape=[10, 7])],
               weight, [1, 2, 5, 4], out_shape=[1, 3, 10, 7])
    with pytest.raises(UnsupportedOperation, match="ambiguous"):
        from_onnx(odd, check=False)


# ---- activations --------------------------------------------------------------------------------
ACTS = [
    ("Relu", {}, 17), ("LeakyRelu", {"alpha": 0.2}, 17), ("Elu", {"alpha": 0.7}, 17), ("Celu", {"alpha": 2.0}, 17),
    ("Selu", {}, 17), ("Sigmoid", {}, 17), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17), ("Tanh", {}, 17),
    ("Softplus", {}, 17), ("Softsign", {}, 17), ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20),
    ("HardSwish", {}, 17), ("Mish", {}, 18), ("Abs", {}, 17),
]


@pytest.mark.parametrize("op,attrs,opset", ACTS)
def test_activations_and_their_slopes(op, attrs, opset):
    m = make([helper.make_node(op, ["x"], ["y"], **attrs)], {}, [1, 64], opset=opset)
    g = check_forward(m)
    act = g.nodes["y"]
    assert isinstance(act, Activation)
    # every difference quotient on a fine grid lies in the slope range
    t = torch.linspace(-8, 8, 64 * 63, dtype=torch.float64)
    g64 = g.to(dtype=torch.float64)
    s = g64.forward(t.reshape(-1, 64)).reshape(-1)
    q = (s[1:] - s[:-1]) / (t[1:] - t[:-1])
    q = q[(torch.arange(len(q)) + 1) % 64 != 0]  # quotients inside one row of 64
    a, b = act.slope
    assert q.min().item() >= a - 1e-6 and q.max().item() <= b + 1e-6


def test_prelu_and_clip():
    m = make([helper.make_node("PRelu", ["x", "slope"], ["p"]), helper.make_node("Clip", ["p", "lo", "hi"], ["y"])],
             {"slope": np.array([0.1, -0.3, 1.5], np.float32).reshape(3, 1, 1), "lo": np.array(-1.0, np.float32),
              "hi": np.array(2.0, np.float32)}, [1, 3, 4, 4])
    g = check_forward(m)
    assert g.nodes["p"].slope == (pytest.approx(-0.3), pytest.approx(1.5))


@pytest.mark.parametrize("lo,hi", [(None, 2.0), (-1.0, None), (None, None), (3.0, -1.0)])
@pytest.mark.parametrize("omitted", ["empty name", "absent"])
def test_clip_with_omitted_bounds(lo, hi, omitted):
    """Clip's optional min / max, omitted as "" (torch.clamp(x, max=...) exports Clip(x, "", hi)) or
    by leaving the trailing inputs out; min > max makes the constant max (ONNX and torch)."""
    inputs, inits = ["x"], {}
    for name, v in (("lo", lo), ("hi", hi)):
        inputs.append(name if v is not None else "")
        if v is not None:
            inits[name] = np.array(v, np.float32)
    if omitted == "absent":
        while inputs[-1] == "":
            inputs.pop()
    m = make([helper.make_node("Clip", inputs, ["y"])], inits, [1, 64])
    g = check_forward(m)
    act = g.nodes["y"]
    # hand-derived pieces of t -> min(max(t, lo), hi)
    if lo is not None and hi is not None and lo > hi:
        assert act.slope == (0.0, 0.0) and act.pieces.breakpoints == ()
    else:
        ends = tuple(v for v in (lo, hi) if v is not None)
        assert act.slope == ((0.0, 1.0) if ends else (1.0, 1.0)) and act.pieces.breakpoints == ends


def test_clip_and_pad_need_scalar_bounds():
    m = make([helper.make_node("Clip", ["x", "lo"], ["y"])], {"lo": np.zeros(2, np.float32)}, [1, 2],
             out_shape=[1, 2])
    with pytest.raises(InvalidInput, match="Clip.*min must be a scalar"):
        from_onnx(m)
    m = make([helper.make_node("Pad", ["x", "pads", "v"], ["y"])],
             {"pads": np.array([0, 1, 0, 1], np.int64), "v": np.zeros(2, np.float32)}, [1, 2], out_shape=[1, 4])
    with pytest.raises(InvalidInput, match="Pad.*constant_value must be a scalar"):
        from_onnx(m)


# ---- pooling, padding, shapes ---------------------------------------------------------------------
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
])
def test_maxpool(attrs):
    m = make([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], {}, [1, 2, 7, 8])
    g = check_forward(m)
    node = g.nodes["y"]
    assert isinstance(node, MaxPool)
    assert certified(g) >= jacobian_lower(g, 2) * (1 - 1e-6)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_LOWER"),
])
def test_average_pool(attrs):
    m = make([helper.make_node("AveragePool", ["x"], ["y"], **attrs)], {}, [1, 2, 7, 8])
    g = check_forward(m)
    assert isinstance(g.nodes["y"].op, Kronecker)
    assert certified(g) >= jacobian_lower(g, 1) * (1 - 1e-6)


@pytest.mark.parametrize("op,attrs", [("MaxPool", {}), ("AveragePool", {}), ("AveragePool", {"count_include_pad": 1})])
def test_pool_window_entirely_in_the_padding(op, attrs):
    # kernel 2, stride 2, 2 units of padding in front: the first window holds no input element,
    # its maximum would be -inf and its average without the pads 0 / 0; with the pads it is 0
    m = make([helper.make_node(op, ["x"], ["y"], kernel_shape=[2], strides=[2], pads=[2, 0], **attrs)], {},
             [1, 1, 4], out_shape=[1, 1, 3])
    if attrs:
        g = check_forward(m)
        assert certified(g) >= jacobian_lower(g, 1) * (1 - 1e-6)
    else:
        with pytest.raises(InvalidInput, match="entirely in the padding"):
            from_onnx(m)


def test_global_pools():
    m = make([helper.make_node("GlobalAveragePool", ["x"], ["a"]), helper.make_node("GlobalMaxPool", ["x"], ["b"]),
              helper.make_node("Concat", ["a", "b"], ["y"], axis=1)], {}, [1, 3, 5, 5])
    g = check_forward(m)
    assert g.output_shape == (6, 1, 1)


@pytest.mark.parametrize("mode,value", [("constant", 0.0), ("constant", 1.5), ("reflect", None), ("edge", None)])
def test_pad(mode, value):
    inputs = ["x", "pads"] + (["v"] if value is not None else [])
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
    if value is not None:
        inits["v"] = np.array(value, np.float32)
    m = make([helper.make_node("Pad", inputs, ["y"], mode=mode)], inits, [1, 2, 4, 5])
    g = check_forward(m)
    assert certified(g) >= jacobian_lower(g, 1) * (1 - 1e-6)


def test_nhwc_transpose_reshape_flatten_squeeze():
    m = make([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
              helper.make_node("Conv", ["t", "W"], ["c"], kernel_shape=[2, 2]),
              helper.make_node("Unsqueeze", ["c", "ax"], ["u"]),
              helper.make_node("Squeeze", ["u", "ax"], ["s"]),
              helper.make_node("Reshape", ["s", "shape"], ["r"]),
              helper.make_node("Flatten", ["r"], ["y"], axis=1)],
             {"W": w(2, 3, 2, 2), "ax": np.array([2], np.int64), "shape": np.array([1, -1, 3], np.int64)},
             ["batch", 4, 4, 3])
    g = check_forward(m)
    assert g.input_shape == (4, 4, 3) and g.output_shape == (18,)
    assert isinstance(g.nodes["t"].op, Permute) and isinstance(g.nodes["r"].op, Reshape)


def test_shape_arithmetic_is_folded():
    # the torch.onnx pattern: Shape -> Gather -> Unsqueeze -> Concat -> Reshape
    m = make([helper.make_node("Shape", ["x"], ["sh"]),
              helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
              helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
              helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"])],
             {"zero": np.array(0, np.int64), "ax": np.array([0], np.int64), "minus1": np.array([-1], np.int64)},
             [1, 2, 3])
    g = check_forward(m)
    assert g.output_shape == (6,)


def test_slice():
    m = make([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
             {"st": np.array([1, 0], np.int64), "en": np.array([5, 100], np.int64), "ax": np.array([1, 2], np.int64),
              "sp": np.array([2, 3], np.int64)}, [1, 6, 7])
    g = check_forward(m)
    assert g.output_shape == (2, 3)


# ---- arithmetic, branches -------------------------------------------------------------------------
def test_constants_shift_scale_and_input_normalisation():
    m = make([helper.make_node("Sub", ["x", "mean"], ["a"]), helper.make_node("Div", ["a", "std"], ["b"]),
              helper.make_node("Mul", ["k", "b"], ["c"]), helper.make_node("Sub", ["one", "c"], ["d"]),
              helper.make_node("Add", ["d", "one"], ["e"]), helper.make_node("Neg", ["e"], ["y"])],
             {"mean": w(3, 1, 1), "std": np.array([0.5, 0.25, 2.0], np.float32).reshape(3, 1, 1),
              "k": np.array(3.0, np.float32), "one": np.array(1.0, np.float32)}, [1, 3, 2, 2])
    g = check_forward(m)
    # in-graph normalisation is part of the function: the constant is 3 / min(std)
    assert certified(g) == pytest.approx(3 / 0.25, rel=1e-6)


def test_branches_add_sub_concat():
    m = make([helper.make_node("Gemm", ["x", "A"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["r"]),
              helper.make_node("Gemm", ["r", "B"], ["b"], transB=1),
              helper.make_node("Add", ["b", "x"], ["s"]), helper.make_node("Sub", ["s", "r"], ["d"]),
              helper.make_node("Concat", ["d", "x"], ["y"], axis=-1)],
             {"A": w(4, 4), "B": w(4, 4)}, [1, 4])
    g = check_forward(m)
    assert certified(g) >= jacobian_lower(g) * (1 - 1e-6)


def test_identity_dropout_cast_constant_and_dead_branches():
    m = make([helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Dropout", ["i"], ["d"]),
              helper.make_node("Cast", ["d"], ["c"], to=TensorProto.FLOAT),
              helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
              helper.make_node("Mul", ["c", "k"], ["y"]), helper.make_node("Relu", ["x"], ["unused"])],
             {}, [1, 3])
    g = check_forward(m)
    assert "unused" not in g.nodes and certified(g) == pytest.approx(2.0)


def test_softmax_stripped_with_a_note_and_refused_elsewhere():
    nodes = [helper.make_node("Gemm", ["x", "A"], ["z"], transB=1), helper.make_node("Softmax", ["z"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    m = make(nodes, {"A": w(3, 4)}, [1, 4])
    g = check_forward(m, out="z")
    assert any("Softmax" in n and "logits" in n for n in g.notes)
    with pytest.raises(UnsupportedOperation, match="L\\(f\\) / 2"):
        from_onnx(m, keep_softmax=True)
    middle = make([helper.make_node("Softmax", ["x"], ["p"]), helper.make_node("Gemm", ["p", "A"], ["y"], transB=1)],
                  {"A": w(3, 4)}, [1, 4])
    with pytest.raises(UnsupportedOperation, match="Softmax.*only accepted as the last"):
        from_onnx(middle)


def test_old_opset_is_upgraded():
    # opset 9: Pad with attribute pads, BatchNormalization, Flatten, Gemm
    m = make([helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1]),
              helper.make_node("Conv", ["p", "W"], ["c"], kernel_shape=[3, 3]),
              helper.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["n"]),
              helper.make_node("Flatten", ["n"], ["f"]),
              helper.make_node("Gemm", ["f", "A", "C"], ["y"], transB=1)],
             {"W": w(2, 1, 3, 3), "s": w(2), "b": w(2), "mu": w(2), "var": np.abs(w(2)) + 0.5, "A": w(3, 32),
              "C": w(3)},
             [1, 1, 4, 4], opset=9)
    g = check_forward(m)
    assert any("opset 9 upgraded" in n for n in g.notes)


def test_symbolic_batch_and_given_input_shape():
    m = make([helper.make_node("Gemm", ["x", "A"], ["y"], transB=1)], {"A": w(2, 5)}, ["N", 5])
    assert from_onnx(m).input_shape == (5,)
    dyn = make([helper.make_node("Relu", ["x"], ["y"])], {}, ["N", "C"])
    g = from_onnx(dyn, (7,))
    assert g.input_shape == (7,)


# ---- the torch exporter as an independent oracle ------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.nn.functional.leaky_relu(self.conv2(h) + h, 0.1)
        h = torch.nn.functional.max_pool2d(h, 2, 1, padding=1)[:, :, :4, :4]
        return self.head(h.flatten(1))


def test_torch_export_matches_torch_frontend(tmp_path):
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 2, 8, 8), str(path), dynamo=False)
    g = lipbound.load(path)
    assert g.input_shape == (2, 8, 8)
    x = torch.rand(4, 2, 8, 8)
    assert torch.allclose(g.forward(x), net(x), atol=1e-5, rtol=1e-5)
    gt = lipbound.as_graph(net, (2, 8, 8))
    assert certified(g) == pytest.approx(certified(gt), rel=1e-4)
    assert certified(g) >= jacobian_lower(g, 2) * (1 - 1e-6)


def test_graph_from_onnx_round_trip_through_bytes():
    m = make([helper.make_node("Gemm", ["x", "A"], ["y"], transB=1)], {"A": w(2, 3)}, [1, 3])
    buf = io.BytesIO(m.SerializeToString())
    again = onnx.load_model(buf)
    assert from_onnx(again).output_shape == (2,)
