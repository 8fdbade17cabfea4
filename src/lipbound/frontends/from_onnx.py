"""ONNX frontend: an ONNX model -> :class:`~lipbound.graph.ir.Graph` (DESIGN §2).

The file is read by :func:`~lipbound.frontends.onnx_file.read_onnx` (safe parsing, external-data
checks, opset upgrade) and translated node by node, in the file's topological order, with the
``onnx`` package only (no onnx2torch, no onnxruntime):

* a node whose inputs are all constants (initializers, ``Constant``, ``Shape`` of a tensor of
  static shape, ...) is folded: ``onnx.reference`` evaluates it once;
* a node that reads the network input is translated into the IR, reusing the operators of
  :mod:`lipbound.linalg.operators` so that every method works unchanged: ``Gemm``/``MatMul``
  (both ``x @ W`` and ``W @ x``) -> :class:`Dense`, ``Conv``/``ConvTranspose`` -> :class:`Conv`
  (asymmetric or ``auto_pad`` padding as an explicit zero pad or crop), ``BatchNormalization`` and
  products/quotients by constants -> :class:`Diagonal`, ``Pad``/``AveragePool``/``GlobalAveragePool``,
  ``ReduceMean``/``ReduceSum`` over non-batch axes and ``Resize`` (nearest, linear, cubic, antialias;
  :mod:`~lipbound.frontends.onnx_resize`) -> :class:`Kronecker`, ``Slice``/``Split``/``Gather`` with
  constant indices -> :class:`Gather`,
  ``Flatten``/``Reshape``/``Squeeze``/``Unsqueeze`` -> :class:`Reshape`,
  ``Transpose`` -> :class:`Permute`; element-wise activations with the slope ranges of
  :mod:`lipbound.graph.activations`; ``MaxPool``; sums of branches; ``Concat``. Every affine node's
  bias is ``f(0)``, so the graph computes the model exactly;
* activations that exporters write with several primitive operators (SiLU as
  ``x * Sigmoid(x)``, GELU with ``Erf`` or its tanh form, Mish, Hardswish below opset 14) are
  recognised as one activation when the subgraph is exactly the formula
  (:mod:`lipbound.frontends.onnx_composites`); any other product of two input-dependent tensors is
  refused;
* circular padding, which ``torch.onnx`` writes as ``Concat(x[.., n-l:], x, x[.., :r])`` per axis,
  becomes one circular pad (the operator the torch frontend builds), not a concatenation of slices.

Batch axis. The graph works on one sample (``input_shape`` has no batch axis). An ONNX input whose
first axis is symbolic or 1 (and that has at least two axes) is taken as batched: that axis is
dropped, and an operation that would mix it with the others (``Transpose`` moving it, a ``MatMul``
contracting it, ``Concat`` along it) is refused. Any other input (e.g. ERAN's ``[5]``) is one
sample without batch axis. Because the ONNX model is evaluated on one sample at a time, this is
exact for models exported with a fixed batch of 1.

Softmax. A final ``Softmax``/``LogSoftmax`` is removed (with a line in ``graph.notes``) so that the
bound is the one of the logits, the usual quantity for robustness certificates. A softmax anywhere
else is refused. ``keep_softmax=True`` is refused too, with the bound to use instead: the Jacobian
of the softmax, ``diag(p) - p p^T``, is the covariance matrix of a distribution on the classes,
so ``v^T J v = Var_p(v) <= (max_i v_i - min_i v_i)^2 / 4 <= 1/2`` for ``||v|| = 1`` (Popoviciu);
hence ``L(softmax o f) <= L(f) / 2``.

Anything else raises :class:`~lipbound.errors.UnsupportedOperation` with the ONNX operator and the
node's name; a hostile or inconsistent model (bad attributes, pads or sizes) raises
:class:`~lipbound.errors.InvalidInput`, never a raw exception. The finished graph is compared with
``onnx.reference.ReferenceEvaluator`` on random inputs (``check=True``), with the corrections of
:func:`~lipbound.frontends.onnx_reference._reference_ops` for the operators it gets wrong; a model it cannot evaluate is refused with
the name of the failing node (``check=False`` skips the check).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidInput
from ..graph.ir import Graph
from .onnx_builder import OnnxBuilder
from .onnx_file import check_and_upgrade, read_onnx
from .onnx_reference import check_against_reference, reference_evaluator

__all__ = ["from_onnx", "reference_evaluator", "check_against_reference"]


def from_onnx(model: str | os.PathLike | Any, input_shape: Sequence[int] | None = None, *,
              keep_softmax: bool = False, output: str | None = None, name: str | None = None,
              check: bool = True) -> Graph:
    """Build the graph of an ONNX model (a path or an ``onnx.ModelProto``).

    Args:
        model: path of a ``.onnx`` file, or a loaded ``onnx.ModelProto``.
        input_shape: the input shape without batch axis; default: the model's own static shape
            (required when the model's input has symbolic axes other than the batch axis).
        keep_softmax: keep a final softmax instead of removing it; refused (see the module
            docstring for the bound ``L(f) / 2`` to use instead).
        output: name of the graph output to bound when the model has several.
        name: the graph's name (default: the file's stem).
        check: compare the graph with ``onnx.reference.ReferenceEvaluator`` on two random inputs
            (run on the model as given, before any opset upgrade).

    Raises:
        InvalidInput: unreadable or hostile file, bad or missing input shape, NaN/inf or empty
            weights.
        UnsupportedOperation: an operator lipbound cannot bound, with the node's name.
    """
    notes: list[str] = []
    if isinstance(model, (str, os.PathLike)):
        name = name or Path(model).stem
        original, proto = read_onnx(model, notes)
    elif type(model).__name__ == "ModelProto":
        original, proto = check_and_upgrade(model, "the ONNX model", notes)
    else:
        raise InvalidInput(f"expected a path to an .onnx file or an onnx.ModelProto, got {type(model).__name__}")
    builder = OnnxBuilder(proto, input_shape, name or proto.graph.name or "onnx_model", keep_softmax, output, notes)
    graph = builder.build()
    if check:  # against the model as given, so that an opset upgrade is checked too
        check_against_reference(original, graph, builder.batched, builder.bounded_output)
    return graph

