"""Bad and hostile model files: each gets a clear lipbound error (exit 2 and one line in the CLI),
never a traceback or a number. The hostile ONNX files are built here with onnx.helper."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lipbound  # noqa: E402
from lipbound.cli import main  # noqa: E402
from lipbound.errors import InvalidInput, LipboundError, UnsupportedOperation  # noqa: E402

RNG = np.random.default_rng(1)


def model(nodes, inits, in_shape=(1, 4), out_shape=None, opset=17, inputs=None, outputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    g = helper.make_graph(nodes, "hostile", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def mlp(w1=None, w2=None):
    """x (1,4) -> Gemm -> Relu -> Gemm -> y (1,3): a valid model to break."""
    w1 = RNG.standard_normal((5, 4)).astype(np.float32) if w1 is None else w1
    w2 = RNG.standard_normal((3, 5)).astype(np.float32) if w2 is None else w2
    return model([helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1, name="fc1"),
                  helper.make_node("Relu", ["h"], ["r"], name="act"),
                  helper.make_node("Gemm", ["r", "W2"], ["y"], transB=1, name="fc2")],
                 {"W1": w1, "W2": w2}, out_shape=[1, w2.shape[0]])


def save(m, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def assert_refused(path, capsys, message, error=LipboundError, extra=()):
    """The API raises ``error`` naming ``message``; the CLI exits 2 with one line."""
    with pytest.raises(error, match=message):
        lipbound.load(path, *extra[:1])
    code, err = cli(["estimate", path, "-q", "-m", "autolip"] + (["-s", ",".join(map(str, extra[0]))] if extra else []),
                    capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lipbound: error:"), err
    assert any(word in lines[0] for word in message.split("|")), lines[0]


def test_valid_model_loads_and_runs(tmp_path, capsys):
    path = save(mlp(), tmp_path / "ok.onnx")
    assert lipbound.load(path).input_shape == (4,)
    code, _ = cli(["estimate", path, "-q", "-m", "autolip"], capsys)
    assert code == 0


# ---- files that are not models ----------------------------------------------------------------
def test_truncated_file(tmp_path, capsys):
    data = mlp().SerializeToString()
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, capsys, "not a readable ONNX model|not a valid ONNX model|holds no ONNX graph", InvalidInput)


def test_corrupt_bytes_and_empty_file(tmp_path, capsys):
    path = tmp_path / "noise.onnx"
    path.write_bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_refused(path, capsys, "ONNX", InvalidInput)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_refused(empty, capsys, "empty", InvalidInput)


def test_wrong_extensions(tmp_path, capsys):
    txt = tmp_path / "model.txt"
    txt.write_text("hello")
    assert_refused(txt, capsys, "cannot tell the format", InvalidInput)
    torch_as_onnx = tmp_path / "weights.onnx"
    torch.save({"w": torch.zeros(2)}, torch_as_onnx)
    assert_refused(torch_as_onnx, capsys, "ONNX", InvalidInput)
    onnx_as_pt = save(mlp(), tmp_path / "model.pt")
    assert_refused(onnx_as_pt, capsys, "not a readable PyTorch file", InvalidInput)
    assert_refused(tmp_path / "missing.onnx", capsys, "not found", InvalidInput)


# ---- shapes -----------------------------------------------------------------------------------
def test_dynamic_shape_needs_input_shape(tmp_path, capsys):
    m = model([helper.make_node("Conv", ["x", "W"], ["y"])], {"W": RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)},
              in_shape=("N", 3, "H", "W"), out_shape=["N", 2, "h", "w"])
    path = save(m, tmp_path / "dyn.onnx")
    assert_refused(path, capsys, "dynamic shape", InvalidInput)
    assert lipbound.load(path, (3, 8, 8)).output_shape == (2, 6, 6)
    code, _ = cli(["estimate", path, "-s", "3,8,8", "-q", "-m", "autolip"], capsys)
    assert code == 0
    # a shape that contradicts the model's static axes
    with pytest.raises(InvalidInput, match="does not fit"):
        lipbound.load(path, (4, 8, 8))


def test_zero_size_tensors(tmp_path, capsys):
    empty_weight = save(mlp(w2=np.zeros((0, 5), np.float32)), tmp_path / "zero_w.onnx")
    assert_refused(empty_weight, capsys, "no elements|zero-size", InvalidInput)
    zero_input = model([helper.make_node("Relu", ["x"], ["y"])], {}, in_shape=(1, 0), out_shape=[1, 0])
    assert_refused(save(zero_input, tmp_path / "zero_in.onnx"), capsys, "zero-size", InvalidInput)


# ---- weights ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_initializers(tmp_path, capsys, bad):
    w1 = RNG.standard_normal((5, 4)).astype(np.float32)
    w1[2, 1] = bad
    assert_refused(save(mlp(w1=w1), tmp_path / "nan.onnx"), capsys, "NaN or infinite", InvalidInput)


def test_nan_in_a_constant_node(tmp_path, capsys):
    c = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([1.0, np.nan, 2.0, 3.0],
                                                                                       np.float32)))
    m = model([c, helper.make_node("Mul", ["x", "k"], ["y"])], {}, out_shape=[1, 4])
    assert_refused(save(m, tmp_path / "nanconst.onnx"), capsys, "NaN or infinite", InvalidInput)


# ---- operations that have no global Lipschitz bound -------------------------------------------
def _two_branches(op_nodes, extra_inits=None):
    inits = {"A": RNG.standard_normal((4, 4)).astype(np.float32), "B": RNG.standard_normal((4, 4)).astype(np.float32)}
    inits.update(extra_inits or {})
    nodes = [helper.make_node("Gemm", ["x", "A"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Gemm", ["x", "B"], ["b"], transB=1), helper.make_node("Tanh", ["b"], ["tb"])]
    return nodes + op_nodes, inits


@pytest.mark.parametrize("case,message", [
    ("mul", "Mul at ONNX node 'gate'.*product"),
    ("attention", "MatMul at ONNX node 'scores'.*attention"),
    ("layernorm", "LayerNormalization at ONNX node 'ln'"),
    ("div", "Div at ONNX node 'ratio'"),
    ("unknown", "Einsum at ONNX node 'ein'"),
])
def test_non_lipschitz_ops_in_the_middle(tmp_path, capsys, case, message):
    if case == "mul":
        nodes, inits = _two_branches([helper.make_node("Mul", ["ra", "tb"], ["m"], name="gate"),
                                      helper.make_node("Gemm", ["m", "A"], ["y"], transB=1)])
    elif case == "attention":  # (x W_q)(x W_k)^T: a product of two activations
        nodes, inits = _two_branches([helper.make_node("Unsqueeze", ["ra", "ax"], ["q"]),
                                      helper.make_node("Unsqueeze", ["tb", "ax0"], ["k"]),
                                      helper.make_node("MatMul", ["q", "k"], ["s"], name="scores"),
                                      helper.make_node("Flatten", ["s"], ["y"])],
                                     {"ax": np.array([2], np.int64), "ax0": np.array([1], np.int64)})
    elif case == "layernorm":
        nodes, inits = _two_branches([helper.make_node("LayerNormalization", ["ra", "g", "beta"], ["y"], name="ln")],
                                     {"g": np.ones(4, np.float32), "beta": np.zeros(4, np.float32)})
    elif case == "div":
        nodes, inits = _two_branches([helper.make_node("Div", ["x", "tb"], ["y"], name="ratio")])
    else:
        nodes, inits = _two_branches([helper.make_node("Einsum", ["ra"], ["y"], equation="bi->bi", name="ein")])
    m = model(nodes, inits, out_shape=["N", "k"])
    path = tmp_path / f"{case}.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedOperation, match=message):
        lipbound.load(path)
    code, err = cli(["estimate", path, "-q"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not supported" in err


def test_several_inputs_or_outputs_are_refused(tmp_path):
    two_in = model([helper.make_node("Add", ["x", "z"], ["y"])], {},
                   inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], out_shape=[1, 4])
    with pytest.raises(UnsupportedOperation, match="2 inputs"):
        lipbound.load(save(two_in, tmp_path / "two_in.onnx"))
    two_out = model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Tanh", ["x"], ["t"])], {},
                    outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                             helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(UnsupportedOperation, match="2 outputs"):
        lipbound.load(save(two_out, tmp_path / "two_out.onnx"))
    from lipbound.frontends.from_onnx import from_onnx
    assert from_onnx(tmp_path / "two_out.onnx", output="t").nodes["t"].label == "Tanh"


# ---- external data ----------------------------------------------------------------------------
def _external(tmp_path: Path, location: str) -> Path:
    """A valid model whose W1 lives in an external file named ``location``."""
    m = mlp()
    w1 = next(t for t in m.graph.initializer if t.name == "W1")
    raw = numpy_helper.to_array(w1).tobytes()
    target = (tmp_path / "models" / location) if not os.path.isabs(location) else Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(raw)
    w1.ClearField("float_data")
    w1.ClearField("raw_data")
    w1.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = w1.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "models" / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_inside_the_folder_is_read(tmp_path):
    g = lipbound.load(_external(tmp_path, "weights.bin"))
    assert g.output_shape == (3,)


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, capsys, location):
    path = _external(tmp_path, location)
    assert (tmp_path / "outside.bin").is_file()  # the data exists and is valid: still refused
    assert_refused(path, capsys, "outside the model's folder", InvalidInput)


def test_external_data_absolute_path_and_symlink_are_refused(tmp_path, capsys):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 80)
    assert_refused(_external(tmp_path, str(outside)), capsys, "outside the model's folder", InvalidInput)
    link_dir = tmp_path / "second"
    path = _external(link_dir, "link.bin")
    (link_dir / "models" / "link.bin").unlink()
    os.symlink(outside, link_dir / "models" / "link.bin")
    assert_refused(path, capsys, "resolves outside", InvalidInput)


def test_external_data_missing_file_or_bad_range(tmp_path, capsys):
    path = _external(tmp_path, "w.bin")
    (tmp_path / "models" / "w.bin").write_bytes(b"\0" * 8)  # shorter than the tensor
    assert_refused(path, capsys, "past its end", InvalidInput)
    (tmp_path / "models" / "w.bin").unlink()
    assert_refused(path, capsys, "does not exist", InvalidInput)


# ---- pickles and state dicts -------------------------------------------------------------------
class PickledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def test_pickled_model_needs_trust_pickle(tmp_path, capsys):
    path = tmp_path / "full.pt"
    torch.save(PickledNet(), path)
    with pytest.raises(InvalidInput, match="trust_pickle"):
        lipbound.load(path, (4,))
    code, err = cli(["estimate", path, "-s", "4", "-q"], capsys)
    assert code == 2 and "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    g = lipbound.load(path, (4,), trust_pickle=True)
    assert g.output_shape == (2,)
    code, _ = cli(["estimate", path, "-s", "4", "-q", "--trust-pickle", "-m", "autolip"], capsys)
    assert code == 0


def test_state_dict_needs_a_factory(tmp_path, capsys):
    path = tmp_path / "sd.pth"
    torch.save(PickledNet().state_dict(), path)
    assert_refused(path, capsys, "factory", InvalidInput, extra=((4,),))
    corrupt = tmp_path / "bad.pth"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    assert_refused(corrupt, capsys, "not a readable PyTorch file", InvalidInput, extra=((4,),))


def test_huge_declared_input_and_control_flow_are_refused(tmp_path, capsys):
    huge = model([helper.make_node("Relu", ["x"], ["y"])], {}, in_shape=(1, 100000, 100000), out_shape=[1, 100000, 100000])
    assert_refused(save(huge, tmp_path / "huge.onnx"), capsys, "elements per sample", InvalidInput)
    body = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "then", [],
                             [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4])])
    cond = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True)))
    branch = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body, name="branch")
    m = model([cond, branch], {}, out_shape=[1, 4])
    with pytest.raises(UnsupportedOperation, match="If at ONNX node 'branch'.*control flow"):
        lipbound.load(save(m, tmp_path / "if.onnx"))


# ---- onnx.reference failures ------------------------------------------------------------------
def _grouped_conv_transpose():
    weight = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    return model([helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], group=2, name="up")],
                 {"W": weight}, in_shape=(1, 4, 3, 3), out_shape=[1, 6, 7, 7])


def test_a_model_onnx_reference_cannot_run_is_refused_naming_the_node(monkeypatch):
    from lipbound.frontends import from_onnx as frontend, onnx_reference
    assert frontend.from_onnx(_grouped_conv_transpose()).output_shape == (6, 7, 7)  # with the corrected reference
    monkeypatch.setattr(onnx_reference, "_reference_ops", lambda: [])  # the stock evaluator: grouped ConvTranspose fails
    with pytest.raises(UnsupportedOperation, match="ConvTranspose at ONNX node 'up'.*onnx.reference.*check=False"):
        frontend.from_onnx(_grouped_conv_transpose())
    assert frontend.from_onnx(_grouped_conv_transpose(), check=False).output_shape == (6, 7, 7)


def test_constant_folding_failure_names_the_node(tmp_path):
    bad = model([helper.make_node("Gather", ["table", "idx"], ["k"], axis=0, name="lookup"),
                 helper.make_node("Mul", ["x", "k"], ["y"])],
                {"table": np.ones(3, np.float32), "idx": np.array([7], np.int64)}, out_shape=[1, 4])
    with pytest.raises(UnsupportedOperation, match="Gather at ONNX node 'lookup'"):
        lipbound.load(save(bad, tmp_path / "gather_oob.onnx"))


# ---- a fixed-seed fuzz: mutated models get a lipbound error or a correct graph -------------------
def _fuzz_seeds():
    conv = model([helper.make_node("Conv", ["x", "W", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 0, 1, 2],
                                   strides=[2, 1]),
                  helper.make_node("Clip", ["c", "", "six"], ["r"]),
                  helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1),
                  helper.make_node("Pad", ["p", "pads", "v"], ["q"], mode="constant"),
                  helper.make_node("Flatten", ["q"], ["f"]), helper.make_node("MatMul", ["f", "M"], ["y"])],
                 {"W": RNG.standard_normal((3, 2, 3, 3)).astype(np.float32), "b": np.ones(3, np.float32),
                  "six": np.array(6, np.float32), "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64),
                  "v": np.array(0.5, np.float32), "M": RNG.standard_normal((72, 2)).astype(np.float32)},
                 in_shape=(1, 2, 6, 5), out_shape=[1, 2])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")
            self.t = nn.ConvTranspose2d(2, 2, 2, stride=2, groups=2)
            self.fc = nn.Linear(72, 3)

        def forward(self, x):
            h = nn.functional.silu(self.c(x)) + nn.functional.gelu(x)
            return self.fc(nn.functional.hardswish(self.t(h)).flatten(1))

    import io
    import warnings
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), torch.zeros(1, 2, 3, 3), buf, dynamo=False, opset_version=13)
    return [mlp(), conv, onnx.load_from_string(buf.getvalue())]


def _mutate(m, rng):
    """One random change: an attribute, an input name, an initializer's shape or values, an
    operator type, or the declared input shape."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    g = m.graph
    pos = int(rng.integers(len(g.node)))
    n = g.node[pos]
    kind = int(rng.integers(5))
    if kind == 0 and n.attribute:
        a = n.attribute[int(rng.integers(len(n.attribute)))]
        if a.type == onnx.AttributeProto.INT:
            a.i = int(rng.choice([-1, 0, 2, 7, 1 << 40]))
        elif a.type == onnx.AttributeProto.INTS and a.ints:
            a.ints[int(rng.integers(len(a.ints)))] = int(rng.choice([-2, 0, 3, 1 << 40]))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = float(rng.choice([np.nan, -1.0, 0.0, 1e30]))
        elif a.type == onnx.AttributeProto.STRING:
            a.s = [b"", b"SAME_LOWER", b"wrap", b"reflect"][int(rng.integers(4))]
    elif kind == 1 and n.input:
        names = ["", g.input[0].name] + [o for k in g.node[:pos] for o in k.output] + [t.name for t in g.initializer]
        n.input[int(rng.integers(len(n.input)))] = str(rng.choice(names))
    elif kind == 2 and g.initializer:
        t = g.initializer[int(rng.integers(len(g.initializer)))]
        arr = numpy_helper.to_array(t)
        shape = tuple(int(s) for s in rng.integers(0, 4, size=int(rng.integers(0, 4))))
        new = rng.integers(-3, 8, size=shape) if arr.dtype.kind in "iu" else rng.standard_normal(shape)
        t.CopyFrom(numpy_helper.from_array(np.asarray(new).astype(arr.dtype), t.name))
    elif kind == 3:
        n.op_type = str(rng.choice(["Relu", "Mul", "Div", "Concat", "Slice", "Pad", "Sigmoid", "Erf", "Clip", "Tanh"]))
    else:
        dim = g.input[0].type.tensor_type.shape.dim
        dim[int(rng.integers(len(dim)))].dim_value = int(rng.choice([0, 1, 2, 9]))
    return m


def test_fuzzed_models_give_a_lipbound_error_or_a_correct_graph():
    from lipbound.frontends.from_onnx import from_onnx
    rng = np.random.default_rng(7)
    seeds = _fuzz_seeds()
    assert all(from_onnx(m).input_shape for m in seeds)
    loaded = 0
    for i in range(240):
        m = seeds[i % len(seeds)]
        for _ in range(int(rng.integers(1, 3))):
            m = _mutate(m, rng)
        try:
            g = from_onnx(m)  # check=True: compared with onnx.reference on random inputs
        except LipboundError as exc:
            assert "internal check failed" not in str(exc), (i, str(exc))
            continue
        loaded += 1
        x = torch.randn(g.input_shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        j = torch.autograd.functional.jacobian(lambda z: g.to(dtype=torch.float64).forward(z[None]).reshape(-1), x)
        lower = torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2).item()
        assert lipbound.autolip(g, certified=True).value >= lower * (1 - 1e-6), i
    assert loaded >= 20  # the mutants are not all refused
