"""ONNX operators ReduceMean/ReduceSum, Resize, Split, Gather and constant-operand arithmetic.

Each tiny model is built with ``onnx.helper`` and checked against independent oracles:

* the stock ``onnx.reference.ReferenceEvaluator`` on random inputs (the graph's forward pass);
* the matrix of the model's map, materialised by running the reference on the basis vectors
  (batched), against our operator's ``to_dense()`` and its SVD norm against our certified bound;
* torch (``F.interpolate``, ``torch.mean``, indexing) on random inputs where it has the same mode.

The models are built with ``check=False`` so that the builder's own comparison with
``onnx.reference`` is not what makes these tests pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import lipbound  # noqa: E402
from lipbound.errors import InvalidInput, UnsupportedOperation  # noqa: E402
from lipbound.frontends.from_onnx import from_onnx  # noqa: E402

RNG = np.random.default_rng(12)


def model(nodes, shape, inits=None, opset=18, out="y", out_shape=None):
    """A one-input float model; ``shape`` is the input's ONNX shape (``"N"``: a symbolic batch)."""
    inits = {k: np.asarray(v) for k, v in (inits or {}).items()}
    graph = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    zeros = np.zeros([1 if d == "N" else d for d in shape], np.float32)  # the checker wants the output's shape
    out_shape = out_shape or list(ReferenceEvaluator(m).run([out], {"x": zeros})[0].shape)
    if shape and shape[0] == "N":
        out_shape[0] = "N"
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape))
    return m


def run_reference(m, x: np.ndarray) -> np.ndarray:
    return np.asarray(ReferenceEvaluator(m).run(None, {"x": x.astype(np.float32)})[0], np.float64)


def reference_matrix(m, shape) -> np.ndarray:
    """The ``(out, in)`` matrix of a linear model with a batch axis, from the reference on the basis
    vectors (one at a time: Resize's ``sizes`` fix the batch to 1)."""
    n = int(np.prod(shape))
    return np.stack([run_reference(m, e.reshape(1, *shape)).reshape(-1) for e in np.eye(n)], axis=1)


def graph_matrix(g) -> np.ndarray:
    """The graph's map as a matrix (one affine node, or the Jacobian of a linear graph)."""
    g64 = g.to(dtype=torch.float64)
    n = int(np.prod(g.input_shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *g.input_shape)
    with torch.no_grad():
        return g64.forward(eye).reshape(n, -1).T.numpy()


def check(m, shape, batched=True, samples=2, **kw):
    """The graph equals the reference on random inputs; returns the graph."""
    g = from_onnx(m, check=False, **kw)
    assert g.input_shape == tuple(shape)
    for _ in range(samples):
        x = RNG.standard_normal(shape)
        ref = run_reference(m, x[None] if batched else x)
        got = g.forward(torch.as_tensor(x, dtype=torch.float32)[None]).double().numpy()
        assert got.size == ref.size
        assert np.abs(got.reshape(-1) - ref.reshape(-1)).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    return g


def check_linear(m, shape):
    """Forward, dense matrix against the reference's, and certified norm against its SVD."""
    g = check(m, shape)
    ref = reference_matrix(m, shape)
    (node,) = g.affine_nodes()
    assert np.allclose(node.op.to(dtype=torch.float64).to_dense().numpy(), ref, atol=1e-6)
    exact = np.linalg.norm(ref, 2)
    assert lipbound.autolip(g, certified=True).value == pytest.approx(exact, rel=1e-5)
    return g, ref


# ---- ReduceMean / ReduceSum -------------------------------------------------------------------
def _reduce(op, shape, axes, keepdims, opset):
    if (opset >= 18 or op == "ReduceSum") and axes is not None:  # ReduceSum: axes as an input from opset 13
        return model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], ["N", *shape],
                     {"axes": np.array(axes, np.int64)}, opset)
    kw = {} if axes is None else {"axes": axes}
    return model([helper.make_node(op, ["x"], ["y"], keepdims=keepdims, **kw)], ["N", *shape], opset=opset)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([-1, -2], 0), ([1], 1), ([1, 3], 0)])
def test_reduce_matches_reference_torch_and_norm(op, opset, axes, keepdims):
    shape = (3, 4, 5)
    m = _reduce(op, shape, axes, keepdims, opset)
    g, ref = check_linear(m, shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    reduce = torch.mean if op == "ReduceMean" else torch.sum
    expected = reduce(x, dim=axes, keepdim=bool(keepdims))
    assert torch.allclose(g.to(dtype=torch.float64).forward(x), expected, atol=1e-12)
    sizes = np.prod([shape[a % 4 - 1] for a in axes])  # the norm: sqrt(n)^(+-1) over the reduced axes
    assert np.linalg.norm(ref, 2) == pytest.approx(sizes ** (-0.5 if op == "ReduceMean" else 0.5))


def test_reduce_over_the_batch_axis_or_to_a_scalar_is_refused():
    with pytest.raises(UnsupportedOperation, match="ReduceMean at .*batch axis"):
        from_onnx(_reduce("ReduceMean", (3, 4), [0, 1], 1, 18), check=False)
    with pytest.raises(UnsupportedOperation, match="ReduceMean at .*scalar"):
        from_onnx(_reduce("ReduceMean", (3, 4), [1, 2], 0, 18), check=False)
    with pytest.raises(UnsupportedOperation, match="batch axis"):  # no axes: every axis, the batch included
        from_onnx(_reduce("ReduceMean", (3, 4), None, 1, 18), check=False)
    bad = model([helper.make_node("ReduceMean", ["x", "axes"], ["y"])], ["N", 3, 4], {"axes": np.array([5])},
                out_shape=["N", 3, 4])
    with pytest.raises(InvalidInput, match="out of range"):
        from_onnx(bad, check=False)


def test_reduce_with_no_axes_and_noop_is_the_identity_inside_a_net():
    m = model([helper.make_node("ReduceMean", ["x", ""], ["m"], noop_with_empty_axes=1),
               helper.make_node("Mul", ["m", "c"], ["y"])], ["N", 3, 2], {"c": np.float32(2.0)})
    g, ref = check_linear(m, (3, 2))
    assert np.allclose(ref, 2 * np.eye(6))


def test_reduce_on_an_unbatched_input_over_every_axis_keeps_its_axes():
    m = model([helper.make_node("ReduceMean", ["x"], ["y"], keepdims=1)], [3, 4], opset=13)
    g = check(m, (3, 4), batched=False)
    assert g.output_shape == (1, 1)
    assert lipbound.autolip(g, certified=True).value == pytest.approx(1 / np.sqrt(12))


def test_global_average_pool_of_a_cnn_as_reduce_mean_matches_torch():
    """conv -> relu -> mean over H, W -> gemm, the layout of GLipSDP's Scalability CNNs."""
    w, b, v = (RNG.standard_normal(s).astype(np.float32) for s in [(4, 2, 3, 3), (4,), (3, 4)])
    m = model([helper.make_node("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
               helper.make_node("Relu", ["c"], ["r"]),
               helper.make_node("ReduceMean", ["r", "axes"], ["p"], keepdims=1),
               helper.make_node("Flatten", ["p"], ["f"]),
               helper.make_node("Gemm", ["f", "V"], ["y"], transB=1)], ["N", 2, 6, 6],
              {"W": w, "b": b, "V": v, "axes": np.array([2, 3], np.int64)})
    g = check(m, (2, 6, 6))
    x = torch.randn(3, 2, 6, 6)
    expected = F.relu(F.conv2d(x, torch.as_tensor(w), torch.as_tensor(b), padding=1)).mean((2, 3)) @ torch.as_tensor(v).T
    assert torch.allclose(g.forward(x), expected, atol=1e-5)


# ---- Resize -------------------------------------------------------------------------------------
def _resize(shape, opset=18, scales=None, sizes=None, axes=None, **attrs):
    """A Resize of a batched input of per-sample ``shape`` by ``scales`` or to ``sizes``."""
    inits = {"roi": np.zeros(0, np.float32)}
    inputs = ["x", "roi", "", ""]
    if scales is not None:
        inits["scales"], inputs[2] = np.array(scales, np.float32), "scales"
    else:
        inits["sizes"], inputs[3] = np.array(sizes, np.int64), "sizes"
    if axes is not None:
        attrs["axes"] = axes
    return model([helper.make_node("Resize", inputs[:4 if sizes is not None else 3], ["y"], **attrs)],
                 ["N", *shape], inits, opset)


RESIZES = [  # (opset, resize arguments, attributes)
    (13, dict(scales=[1, 1, 2, 2]), dict(mode="nearest")),
    (13, dict(scales=[1, 1, 1.5, 0.75]), dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                               nearest_mode="floor")),
    (13, dict(sizes=[1, 2, 8, 3]), dict(mode="nearest", nearest_mode="round_prefer_ceil")),
    (13, dict(sizes=[1, 2, 7, 9]), dict(mode="nearest", coordinate_transformation_mode="align_corners",
                                        nearest_mode="ceil")),
    (13, dict(scales=[1, 1, 2, 3]), dict(mode="linear")),
    (13, dict(sizes=[1, 2, 3, 11]), dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    (13, dict(sizes=[1, 2, 1, 4]), dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    (13, dict(sizes=[1, 2, 9, 4]), dict(mode="linear", coordinate_transformation_mode="align_corners")),
    (13, dict(scales=[1, 1, 2, 0.5]), dict(mode="linear", coordinate_transformation_mode="align_corners")),
    (13, dict(scales=[1, 1, 2, 2]), dict(mode="cubic")),
    (13, dict(sizes=[1, 2, 9, 3]), dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1)),
    (13, dict(scales=[1, 2, 1.7, 1]), dict(mode="cubic", coordinate_transformation_mode="asymmetric")),
    (18, dict(scales=[1, 1, 0.5, 0.4]), dict(mode="linear", antialias=1)),
    (18, dict(sizes=[2, 3]), dict(mode="cubic", antialias=1, axes=[2, 3])),
    (18, dict(scales=[2.5]), dict(mode="cubic", axes=[3], exclude_outside=1)),
    (18, dict(sizes=[10, 10]), dict(mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger")),
    (18, dict(sizes=[7, 4]), dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_smaller")),
    (18, dict(scales=[1, 1, 1.3, 0.7]), dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric")),
]


@pytest.mark.parametrize("opset,args,attrs", RESIZES)
def test_resize_matrix_and_norm_match_the_reference(opset, args, attrs):
    check_linear(_resize((2, 5, 6), opset, **args, **attrs), (2, 5, 6))


TORCH_RESIZES = [  # (ONNX attributes, F.interpolate arguments)
    (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), dict(mode="nearest")),
    (dict(mode="nearest", nearest_mode="round_prefer_ceil"), dict(mode="nearest-exact")),
    (dict(mode="linear"), dict(mode="bilinear", align_corners=False)),
    (dict(mode="linear", coordinate_transformation_mode="align_corners"), dict(mode="bilinear", align_corners=True)),
    (dict(mode="cubic"), dict(mode="bicubic", align_corners=False)),
    (dict(mode="cubic", coordinate_transformation_mode="align_corners"), dict(mode="bicubic", align_corners=True)),
    (dict(mode="linear", antialias=1, exclude_outside=1), dict(mode="bilinear", antialias=True)),
    (dict(mode="cubic", antialias=1, cubic_coeff_a=-0.5, exclude_outside=1), dict(mode="bicubic", antialias=True)),
]


@pytest.mark.parametrize("size", [(11, 4), (3, 13)])
@pytest.mark.parametrize("attrs,torch_args", TORCH_RESIZES)
def test_resize_matches_torch_interpolate(attrs, torch_args, size):
    shape = (2, 6, 7)
    g = from_onnx(_resize(shape, sizes=[1, 2, *size], **attrs), check=False).to(dtype=torch.float64)
    x = torch.randn(3, *shape, dtype=torch.float64)
    assert torch.allclose(g.forward(x), F.interpolate(x, size=size, **torch_args), atol=1e-6)


def test_bicubic_norm_is_exact_where_row_sums_would_be_wrong():
    """Bicubic weights are negative: the norm exceeds 1, the bound of a non-negative average."""
    g, ref = check_linear(_resize((1, 6, 6), scales=[1, 1, 2, 2], mode="cubic"), (1, 6, 6))
    assert (ref < 0).any()
    assert np.linalg.norm(ref, 2) > 2.0  # an upscale by 2 x 2 repeats each pixel about 4 times


@pytest.mark.parametrize("args,attrs,error,match", [
    (dict(scales=[2, 1, 1, 1]), dict(mode="nearest"), UnsupportedOperation, "batch axis"),
    (dict(sizes=[1, 2, 4, 4]), dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"),
     UnsupportedOperation, "tf_crop_and_resize"),
    (dict(scales=[1, 1, 2, 2]), dict(mode="nearest", antialias=1), InvalidInput, "antialias"),
    (dict(scales=[1, 1, 1.5, 0.7]), dict(mode="linear", coordinate_transformation_mode="align_corners"),
     UnsupportedOperation, "fractional output length is ambiguous"),
    (dict(scales=[1, 1, 1, 0.3]), dict(mode="nearest", coordinate_transformation_mode="pytorch_half_pixel"),
     UnsupportedOperation, "fractional output length is ambiguous"),
])
def test_resize_refusals(args, attrs, error, match):
    inits = {"roi": np.zeros(0, np.float32), "scales": np.array(args.get("scales", []), np.float32)}
    if "sizes" in args:
        inits["sizes"] = np.array(args["sizes"], np.int64)
    m = model([helper.make_node("Resize", ["x", *inits], ["y"], **attrs)], ["N", 2, 5, 6], inits,
              out_shape=["N", 2, 4, 4])  # the reference refuses some of them: the output shape by hand
    with pytest.raises(error, match=f"Resize at .*{match}"):
        from_onnx(m, check=False)


def test_resize_with_input_dependent_scales_is_refused():
    m = model([helper.make_node("Resize", ["x", "", "x"], ["y"], mode="nearest")], ["N", 1, 2, 2],
              out_shape=["N", 1, 2, 2])
    with pytest.raises(UnsupportedOperation, match="Resize at .*scales must be a constant"):
        from_onnx(m, check=False)


# ---- Split and Gather: selections ---------------------------------------------------------------
SPLITS = [  # (opset, attributes, the split input or None, number of outputs)
    (13, dict(axis=2), [2, 3], 2),
    (13, dict(axis=-1), None, 2),
    (18, dict(axis=1, num_outputs=3), None, 3),
    (18, dict(axis=3), [1, 2, 3], 3),
]


@pytest.mark.parametrize("opset,attrs,split,parts", SPLITS)
def test_split_each_output_matches_the_reference_and_torch(opset, attrs, split, parts):
    shape = (7, 5, 6)
    inits = {} if split is None else {"split": np.array(split, np.int64)}
    outs = [f"p{k}" for k in range(parts)]
    sizes = split or -(-shape[attrs["axis"] % 4 - 1] // parts)  # torch.split: chunks of this size
    for k, out in enumerate(outs):
        m = model([helper.make_node("Split", ["x", *inits], outs, **attrs)], ["N", *shape], inits, opset, out=out)
        g, ref = check_linear(m, shape)
        assert np.linalg.norm(ref, 2) == pytest.approx(1.0)
        x = torch.randn(2, *shape)
        expected = torch.split(x, sizes, dim=attrs["axis"] % 4)[k]
        assert torch.equal(g.forward(x), expected)


def test_split_outputs_recombined_keep_the_map():
    """Split, then Concat of the parts in another order and a sum of two parts: both branches
    of the same selections, compared with the reference's matrix."""
    m = model([helper.make_node("Split", ["x", "split"], ["a", "b", "c"], axis=1),
               helper.make_node("Concat", ["c", "a", "b"], ["p"], axis=1),
               helper.make_node("Add", ["a", "b"], ["s"]),
               helper.make_node("Concat", ["p", "s"], ["y"], axis=1)], ["N", 6, 3], {"split": np.array([2, 2, 2])})
    g = check(m, (6, 3))
    ref = reference_matrix(m, (6, 3))
    assert np.allclose(graph_matrix(g), ref, atol=1e-6)
    assert lipbound.autolip(g, certified=True).value >= np.linalg.norm(ref, 2) * (1 - 1e-6)


GATHERS = [  # (axis, indices)
    (1, np.array(2)),
    (2, np.array([0, -1, 0, 2])),
    (-1, np.array([[1, 3], [3, 0]])),
    (3, np.array([-5])),
]


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axis,indices", GATHERS)
def test_gather_with_constant_indices_matches_the_reference_and_torch(axis, indices, opset):
    shape = (3, 4, 5)
    m = model([helper.make_node("Gather", ["x", "idx"], ["y"], axis=axis)], ["N", *shape],
              {"idx": indices.astype(np.int64)}, opset)
    g, ref = check_linear(m, shape)
    repeats = np.bincount((indices % shape[axis % 4 - 1]).reshape(-1)).max()
    assert np.linalg.norm(ref, 2) == pytest.approx(np.sqrt(repeats))  # a repeated index reads an input twice
    x = torch.randn(2, *shape)
    expected = torch.as_tensor(np.take(x.numpy(), indices, axis=axis))
    assert torch.equal(g.forward(x), expected)


def test_gather_on_an_unbatched_input():
    m = model([helper.make_node("Gather", ["x", "idx"], ["y"], axis=0)], [6], {"idx": np.array([5, 0, 5])})
    g = check(m, (6,), batched=False)
    assert lipbound.autolip(g, certified=True).value == pytest.approx(np.sqrt(2))


def test_selection_refusals_name_the_node():
    def gather(inputs, inits, axis=1, out_shape=None):
        return model([helper.make_node("Gather", inputs, ["y"], axis=axis, name="pick")], ["N", 4, 3], inits,
                     out_shape=out_shape)
    with pytest.raises(UnsupportedOperation, match="Gather at ONNX node 'pick'.*batch axis"):
        from_onnx(gather(["x", "i"], {"i": np.array([0])}, axis=0), check=False)
    with pytest.raises(UnsupportedOperation, match="Gather at ONNX node 'pick'.*indices must be a constant"):
        from_onnx(gather(["x", "x"], {}, out_shape=["N", 4, 3]), check=False)
    with pytest.raises(InvalidInput, match="Gather at ONNX node 'pick'.*indices must be integers in"):
        from_onnx(gather(["x", "i"], {"i": np.array([4])}, out_shape=["N", 1, 3]), check=False)
    split = model([helper.make_node("Split", ["x"], ["a", "b"], axis=0, name="cut")], ["N", 4], out="a",
                  out_shape=["N", 4])
    with pytest.raises(UnsupportedOperation, match="Split at ONNX node 'cut'.*batch axis"):
        from_onnx(split, check=False)


# ---- arithmetic with constant operands, and products of two data tensors -------------------------
def test_constant_div_mul_matmul_and_folded_weight_normalisation():
    """The Scalability nets' pattern: the weight divided by its power-iteration estimate
    ``u^T W v`` (MatMul/Div on constants, folded), then a Gemm and a scalar Mul, a Div by a
    per-feature constant and a MatMul by a constant."""
    wt, u, v = (RNG.standard_normal(s).astype(np.float32) for s in [(4, 6), (4,), (6,)])
    c, d, mm = np.float32(1.7), (RNG.random(4) + 0.5).astype(np.float32), RNG.standard_normal((4, 3)).astype(np.float32)
    m = model([helper.make_node("MatMul", ["W", "v"], ["wv"]), helper.make_node("MatMul", ["u", "wv"], ["sigma"]),
               helper.make_node("Div", ["W", "sigma"], ["Wn"]),
               helper.make_node("Gemm", ["x", "Wn"], ["h"], transB=1), helper.make_node("Mul", ["h", "c"], ["hc"]),
               helper.make_node("Div", ["hc", "d"], ["hd"]), helper.make_node("MatMul", ["hd", "M"], ["y"])],
              ["N", 6], {"W": wt, "u": u, "v": v, "c": c, "d": d, "M": mm})
    g = check(m, (6,))
    ref = reference_matrix(m, (6,))
    expected = (wt / (u @ wt @ v)).T @ np.diag(c / d) @ mm
    assert np.allclose(ref, expected.T, rtol=1e-4, atol=1e-6) and np.allclose(graph_matrix(g), ref, atol=1e-5)
    assert lipbound.autolip(g, certified=True).value >= np.linalg.norm(ref, 2) * (1 - 1e-6)


@pytest.mark.parametrize("op,inputs", [("Mul", ["x", "x"]), ("Div", ["x", "r"]), ("Div", ["c", "x"]),
                                       ("MatMul", ["x", "t"])])
def test_products_of_two_data_tensors_are_refused_naming_the_node(op, inputs):
    m = model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
               helper.make_node(op, inputs, ["y"], name="product")], ["N", 3, 3], {"c": np.float32(2.0)},
              out_shape=["N", 3, 3])
    with pytest.raises(UnsupportedOperation, match=f"{op} at ONNX node 'product'"):
        from_onnx(m, check=False)
