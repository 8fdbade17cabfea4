"""Composite activations written with primitive ONNX operators, in the orders exporters emit:
recognised as one activation when the subgraph is exactly the formula, refused otherwise.

Oracles: ``onnx.reference`` (the forward pass of the model as written), difference quotients of
the graph on a fine grid (they must lie in the activation's slope range), and the formulas
themselves (hand-written near misses must be refused).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lipbound.errors import UnsupportedOperation  # noqa: E402
from lipbound.frontends.from_onnx import from_onnx, reference_evaluator  # noqa: E402
from lipbound.graph.ir import Activation  # noqa: E402

N = 64  # width of the input
RT2 = math.sqrt(2.0)
K = math.sqrt(2.0 / math.pi)


def c(value, shape=()):
    return np.full(shape, value, np.float32)


def model(nodes, consts: dict, outputs=("y",)):
    """x [1, N] -> nodes -> y; ``consts`` become initializers."""
    graph = helper.make_graph(
        nodes, "composite", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = np.zeros((1, N), np.float32)
    for out, value in zip(outputs, reference_evaluator(m).run(list(outputs), {"x": x})):
        m.graph.output[list(outputs).index(out)].CopyFrom(
            helper.make_tensor_value_info(out, TensorProto.FLOAT, list(value.shape)))
    return m


def node(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], **attrs)


def accepted(m, label: str, **kw):
    """The model loads as one activation ``label``, equals onnx.reference, and every difference
    quotient of the graph on [-8, 8] lies in the activation's slope range."""
    g = from_onnx(m, **kw)
    acts = [n for n in g if isinstance(n, Activation)]
    assert [a.label for a in acts] == [label] and len(g.nodes) == 2  # input and the activation
    t = torch.linspace(-8, 8, N * 64, dtype=torch.float32).reshape(-1, N)
    ref = reference_evaluator(m).run(["y"], {"x": t[:1].numpy()})[0]
    assert np.allclose(g.forward(t[:1]).numpy(), ref, atol=1e-6)
    s = g.to(dtype=torch.float64).forward(t.double()).reshape(-1)
    tt = t.double().reshape(-1)
    q = ((s[1:] - s[:-1]) / (tt[1:] - tt[:-1]))[(torch.arange(len(tt) - 1) + 1) % N != 0]
    a, b = acts[0].slope
    assert a - 1e-9 <= q.min().item() and q.max().item() <= b + 1e-9
    return g


# ---- accepted: the formula, in every order --------------------------------------------------------
def test_silu_both_operand_orders():
    accepted(model([node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"], "y")], {}), "SiLU")
    accepted(model([node("Sigmoid", ["x"], "s"), node("Mul", ["s", "x"], "y")], {}), "SiLU")


GELU_FORMS = {
    # torch.onnx: ((x / sqrt 2) -> erf -> + 1) * x * 0.5
    "torch": [node("Div", ["x", "rt2"], "a"), node("Erf", ["a"], "e"), node("Add", ["e", "one"], "p"),
              node("Mul", ["x", "p"], "m"), node("Mul", ["m", "half"], "y")],
    # 0.5 first, erf of x * (1 / sqrt 2), 1 + erf
    "half-first": [node("Mul", ["half", "x"], "h"), node("Mul", ["x", "irt2"], "a"), node("Erf", ["a"], "e"),
                   node("Add", ["one", "e"], "p"), node("Mul", ["h", "p"], "y")],
    # x * (0.5 + 0.5 erf): the sum distributed
    "distributed": [node("Mul", ["x", "irt2"], "a"), node("Erf", ["a"], "e"), node("Mul", ["e", "half"], "he"),
                    node("Add", ["he", "half"], "p"), node("Mul", ["p", "x"], "y")],
    # (x * (erf + 1)) / 2
    "divided": [node("Div", ["x", "rt2"], "a"), node("Erf", ["a"], "e"), node("Add", ["e", "one"], "p"),
                node("Mul", ["p", "x"], "m"), node("Div", ["m", "two"], "y")],
}
GELU_CONSTS = {"rt2": c(RT2), "irt2": c(1 / RT2), "one": c(1.0), "half": c(0.5), "two": c(2.0)}


@pytest.mark.parametrize("form", list(GELU_FORMS))
def test_gelu_erf_forms(form):
    nodes = GELU_FORMS[form]
    used = {i for n in nodes for i in n.input}
    accepted(model(nodes, {k: v for k, v in GELU_CONSTS.items() if k in used}), "GELU")


def test_gelu_with_constant_nodes():
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v)) for k, v in GELU_CONSTS.items()
             if k in ("rt2", "one", "half")]
    accepted(model(nodes + GELU_FORMS["torch"], {}), "GELU")


def test_gelu_tanh_forms():
    # torch.onnx's (x * x * x) and a Pow(x, 3), the inner sum factored or distributed
    torch_form = [node("Mul", ["x", "x"], "x2"), node("Mul", ["x", "x2"], "x3"), node("Mul", ["k3", "x3"], "a"),
                  node("Add", ["x", "a"], "s"), node("Mul", ["k", "s"], "u"), node("Tanh", ["u"], "t"),
                  node("Add", ["one", "t"], "p"), node("Mul", ["x", "p"], "m"), node("Mul", ["half", "m"], "y")]
    pow_form = [node("Pow", ["x", "three"], "x3"), node("Mul", ["x3", "kk3"], "a"), node("Mul", ["x", "k"], "b"),
                node("Add", ["b", "a"], "u"), node("Tanh", ["u"], "t"), node("Add", ["t", "one"], "p"),
                node("Mul", ["x", "half"], "h"), node("Mul", ["h", "p"], "y")]
    consts = {"k3": c(0.044715), "k": c(K), "kk3": c(K * 0.044715), "one": c(1.0), "half": c(0.5), "three": c(3.0)}
    for nodes in (torch_form, pow_form):
        used = {i for n in nodes for i in n.input}
        accepted(model(nodes, {k: v for k, v in consts.items() if k in used}), "GELU(tanh)")


def test_mish_and_hardswish_forms():
    accepted(model([node("Softplus", ["x"], "sp"), node("Tanh", ["sp"], "t"), node("Mul", ["x", "t"], "y")], {}),
             "Mish")
    accepted(model([node("HardSigmoid", ["x"], "h", alpha=1 / 6, beta=0.5), node("Mul", ["x", "h"], "y")], {}),
             "Hardswish")
    # Keras: x * relu6(x + 3) / 6, relu6 as Clip(0, 6)
    accepted(model([node("Add", ["x", "three"], "a"), helper.make_node("Clip", ["a", "zero", "six"], ["r"]),
                    node("Mul", ["x", "r"], "m"), node("Div", ["m", "six"], "y")],
                   {"three": c(3.0), "zero": c(0.0), "six": c(6.0)}), "Hardswish")


def test_composite_of_an_inner_tensor_then_a_scaling():
    # Gemm -> SiLU -> * 2: the SiLU of the Gemm's output, the scaling stays an affine node
    w = np.random.default_rng(0).standard_normal((N, N)).astype(np.float32)
    m = model([node("Gemm", ["x", "W"], "h"), node("Sigmoid", ["h"], "s"), node("Mul", ["h", "s"], "m"),
               node("Mul", ["m", "two"], "y")], {"W": w, "two": c(2.0)})
    g = from_onnx(m)
    assert [n.label for n in g if isinstance(n, Activation)] == ["SiLU"]
    x = np.random.default_rng(1).standard_normal((1, N)).astype(np.float32)
    assert np.allclose(g.forward(torch.as_tensor(x)).numpy(), reference_evaluator(m).run(["y"], {"x": x})[0],
                       atol=1e-5)


# ---- refused: anything but the exact formula -------------------------------------------------------
def refused(m, **kw):
    with pytest.raises(UnsupportedOperation):
        from_onnx(m, **kw)


@pytest.mark.parametrize("irt2", [0.7, 0.7071])  # 1 / sqrt 2 = 0.70710678: off by 1% and by 1.5e-5
def test_gelu_with_wrong_constants_is_refused(irt2):
    nodes = GELU_FORMS["half-first"]
    refused(model(nodes, {"irt2": c(irt2), "one": c(1.0), "half": c(0.5)}))


def test_gelu_with_a_vector_or_broadcasting_constant_is_refused():
    nodes = GELU_FORMS["torch"]
    refused(model(nodes, {"rt2": c(RT2), "one": c(1.0), "half": c(0.5, (N,))}))  # 0.5 per element
    refused(model(nodes, {"rt2": c(RT2), "one": c(1.0), "half": c(0.5, (1, 1, 1))}))  # makes y 3-D


def test_other_gates_are_refused():
    # x * sigmoid(1.702 x) (the sigmoid approximation of GELU), x * sigmoid(y) with y another branch
    refused(model([node("Mul", ["x", "a"], "ax"), node("Sigmoid", ["ax"], "s"), node("Mul", ["x", "s"], "y")],
                  {"a": c(1.702)}))
    refused(model([node("Neg", ["x"], "n"), node("Sigmoid", ["n"], "s"), node("Mul", ["x", "s"], "y")], {}))
    refused(model([node("Relu", ["x"], "r"), node("Sigmoid", ["r"], "s"), node("Mul", ["x", "s"], "y")], {}))
    # HardSigmoid with onnx's default alpha 0.2: x * hardsigmoid is not Hardswish
    refused(model([node("HardSigmoid", ["x"], "h"), node("Mul", ["x", "h"], "y")], {}))


def test_intermediate_used_elsewhere_is_refused():
    # the Sigmoid's output also feeds an Add, and in the second model it is a graph output
    refused(model([node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"], "m"), node("Add", ["m", "s"], "y")], {}))
    two = model([node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"], "y")], {}, outputs=("y", "s"))
    refused(two, output="y")
