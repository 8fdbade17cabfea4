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
  products/quotients by constants -> :class:`Diagonal`, ``Pad``/``AveragePool``/``GlobalAveragePool``
  -> :class:`Kronecker`, ``Slice`` -> :class:`Gather`,
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
:func:`_reference_ops` for the operators it gets wrong; a model it cannot evaluate is refused with
the name of the failing node (``check=False`` skips the check).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput, LipboundError, UnsupportedOperation
from ..linalg.operators import Conv, Dense, Diagonal, LinearOperator, Permute, Reshape, compose
from ..linalg.structured import Kronecker, selection, separable
from ..graph import activations
from .from_torch import _check_shape, _pool_multiplicity
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node
from .onnx_composites import Composite, find_composites
from .onnx_file import check_and_upgrade, read_onnx

__all__ = ["from_onnx"]

BATCH = 2  # size of the recording batch
Shape = tuple[int, ...]

# Operators refused on purpose, with the reason given to the user.
_REFUSED = {
    "LayerNormalization": "it divides by the input's own standard deviation, which has no global Lipschitz bound",
    "InstanceNormalization": "it divides by the input's own standard deviation, which has no global Lipschitz bound",
    "GroupNormalization": "it divides by the input's own standard deviation, which has no global Lipschitz bound",
    "LpNormalization": "normalising by the input's own norm has no global Lipschitz bound",
    "Attention": "attention multiplies input-dependent tensors: not globally Lipschitz",
    "MultiHeadAttention": "attention multiplies input-dependent tensors: not globally Lipschitz",
    "Exp": "exp is not globally Lipschitz", "Log": "log is not Lipschitz", "Pow": "powers are not globally Lipschitz",
    "Sqrt": "sqrt is not Lipschitz at 0", "Reciprocal": "1/x is not Lipschitz",
    "Sign": "it jumps: not Lipschitz", "Floor": "it jumps: not Lipschitz", "Ceil": "it jumps: not Lipschitz",
    "Round": "it jumps: not Lipschitz", "ThresholdedRelu": "it jumps at alpha: not Lipschitz",
    "ArgMax": "it is piecewise constant with jumps: not Lipschitz",
    "ArgMin": "it is piecewise constant with jumps: not Lipschitz",
    "Dropout": "dropout in training mode is random",
    "If": "control flow", "Loop": "control flow", "Scan": "control flow",
}
MAX_INPUT_NUMEL = 1 << 27  # a larger declared input is refused (hostile shapes would exhaust memory)
_SHAPE_ONLY = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Cast"}


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
    builder = _Builder(proto, input_shape, name or proto.graph.name or "onnx_model", keep_softmax, output, notes)
    graph = builder.build()
    if check:  # against the model as given, so that an opset upgrade is checked too
        check_against_reference(original, graph, builder.batched, builder.bounded_output)
    return graph


@dataclass
class _Tensor:
    """An input-dependent ONNX tensor: the IR node holding it, its shape per sample, whether its
    first ONNX axis is the batch axis, and its value on the recording batch."""

    node: str
    shape: Shape
    batched: bool
    value: torch.Tensor

    @property
    def onnx_shape(self) -> Shape:
        return ((1,) if self.batched else ()) + self.shape


class _Fn(nn.Module):
    """A torch function with constant tensors kept as buffers (``Graph.to`` moves them)."""

    def __init__(self, fn: Callable[..., torch.Tensor], *consts: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.n = len(consts)
        for i, c in enumerate(consts):
            self.register_buffer(f"c{i}", c)

    def forward(self, x):
        return self.fn(x, *(getattr(self, f"c{i}") for i in range(self.n)))


def _torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX per-axis (begin, end) lists -> ``F.pad``'s order (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(list(begin)), reversed(list(end))):
        out += [int(b), int(e)]
    return out


def _pool_sizes(sizes: Sequence[int], k, stride, dil, begin, end, ceil_mode: bool) -> list[int]:
    """Output sizes of an ONNX MaxPool / AveragePool (spec, opset 19): with ``e = (k - 1) d + 1``,
    ``floor((h + pads - e) / s) + 1``; with ``ceil_mode`` the ceiling instead, less one when the
    last window would start in the end padding (``(out - 1) s >= h + begin``)."""
    out = []
    for h, kk, s, d, b, e in zip(sizes, k, stride, dil, begin, end):
        span = h + b + e - ((kk - 1) * d + 1)
        n = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (n - 1) * s >= h + b:
            n -= 1
        out.append(n)
    return out


class _PoolFn:
    """ONNX MaxPool or AveragePool on a batch: explicit padding (``-inf`` for max, 0 for the
    average's sums), torch's pooling with ``ceil_mode``, cropped to the ONNX output sizes (torch
    keeps a last window that starts in the end padding, ONNX does not). An average divides by the
    window's size, or with ``count_include_pad=0`` by its number of input elements."""

    def __init__(self, kind: str, kernel, stride, dilation, begin, end, out_sizes: Sequence[int], ceil_mode: bool,
                 count_include_pad: bool = False) -> None:
        self.kind, self.kernel, self.stride, self.dilation = kind, tuple(kernel), tuple(stride), tuple(dilation)
        self.pads = _torch_pads(begin, end) if any(begin) or any(end) else None
        self.crop = (slice(None), slice(None), *(slice(0, n) for n in out_sizes))
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.kernel)
        if self.kind == "max":
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
            return fn(x, self.kernel, self.stride, 0, self.dilation, self.ceil_mode)[self.crop]
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        return fn(x, self.kernel, self.stride, 0, self.ceil_mode)[self.crop]

    def __call__(self, x):
        if not self.pads:
            return self._pool(x)
        y = self._pool(F.pad(x, self.pads, value=-math.inf if self.kind == "max" else 0.0))
        if self.kind == "max" or self.count_include_pad:
            return y
        return y / self._pool(F.pad(torch.ones_like(x[:1]), self.pads))


class _Builder:
    """Translates one checked ONNX model into a Graph (one ``_op_<OpType>`` handler per operator)."""

    def __init__(self, model, input_shape, name: str, keep_softmax: bool, output: str | None,
                 notes: list[str]) -> None:
        from onnx import numpy_helper
        self.model = model
        self.name = name
        self.keep_softmax = keep_softmax
        self.notes = notes
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        g = model.graph
        if len(g.sparse_initializer):
            raise UnsupportedOperation("sparse initializers", f"model '{name}'", "store the weights densely")
        self.consts: dict[str, np.ndarray] = {}
        for init in g.initializer:
            self.consts[init.name] = self._checked(numpy_helper.to_array(init), f"initializer '{init.name}'")
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise UnsupportedOperation(f"a graph with {len(inputs)} inputs", f"model '{name}'",
                                       "lipbound bounds functions of one input tensor")
        self.input = inputs[0]
        outputs = [o.name for o in g.output]
        if output is not None and output not in outputs:
            raise InvalidInput(f"output {output!r} is not an output of the model; its outputs: {', '.join(outputs)}")
        if output is None and len(outputs) != 1:
            raise UnsupportedOperation(f"a graph with {len(outputs)} outputs", f"model '{name}'",
                                       f"choose one with output= (one of {', '.join(outputs)})")
        self.output = output or outputs[0]
        self.dtype = _input_dtype(self.input)
        self.input_shape, self.batched = _resolve_input(self.input, input_shape)
        if math.prod(self.input_shape) > MAX_INPUT_NUMEL:
            raise InvalidInput(f"input shape {self.input_shape} has more than {MAX_INPUT_NUMEL} elements per sample")
        self.nodes: dict[str, Node] = {}
        self.dep: dict[str, _Tensor] = {}
        self.after_softmax: set[str] = set()
        self.slices: dict[str, tuple[str, tuple[range, ...]]] = {}  # Slice output -> (source, per-axis indices)
        self.circular: dict[str, tuple[_Tensor, list[int], list[int]]] = {}  # circular pad -> (source, begin, end)
        self.bounded_output = self.output  # the ONNX tensor the graph computes (the logits)

    # ---- helpers ----------------------------------------------------------------------
    def _checked(self, arr: np.ndarray, what: str) -> np.ndarray:
        if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
            raise InvalidInput(f"{what} of the ONNX model contains NaN or infinite values")
        return arr

    def _t(self, arr: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.array(arr, dtype=np.float64)).to(self.dtype)

    def _const(self, name: str, node, what: str) -> np.ndarray | None:
        """The value of a constant input (None when the optional input is absent)."""
        if not name:
            return None
        if name in self.dep:
            raise UnsupportedOperation(node.op_type, _where(node), f"its {what} must be a constant, "
                                       "not a function of the network input")
        return self.consts[name]

    def _add(self, irnode: Node, batched: bool, value: torch.Tensor) -> None:
        self.nodes[irnode.name] = irnode
        self.dep[irnode.name] = _Tensor(irnode.name, tuple(value.shape[1:]), batched, value)

    def _alias(self, out: str, src: _Tensor) -> None:
        self.dep[out] = src

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.nodes or name in self.dep or name in self.consts:
            name, i = f"{base}#{i}", i + 1
        return name

    def _bounded(self, node, shape: Sequence[int], what: str) -> None:
        """Refuse a tensor of more than :data:`MAX_INPUT_NUMEL` elements per sample before it is
        built (hostile pads or strides would exhaust memory)."""
        if math.prod(shape) > MAX_INPUT_NUMEL:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: its {what} would have shape {tuple(shape)}, "
                               f"more than {MAX_INPUT_NUMEL} elements per sample")

    def _affine(self, node, src: _Tensor, op: LinearOperator, bias: torch.Tensor | None = None,
                batched: bool | None = None, out: str | None = None) -> None:
        out = out or node.output[0]
        value = op.matvec(src.value)
        if bias is not None:
            bias = torch.broadcast_to(bias.to(self.dtype), op.out_shape).clone()
            if bool(bias.any()):
                value = value + bias
            else:
                bias = None
        origin = f"{node.op_type} '{node.name or out}'"
        self._add(Affine(out, [src.node], op.out_shape, origin, op, bias),
                  src.batched if batched is None else batched, value)

    def _align(self, c: np.ndarray, onnx_shape: Shape, batched: bool, node) -> torch.Tensor:
        """A constant that broadcasts against a tensor of ``onnx_shape``, as a per-sample tensor."""
        try:
            full = tuple(np.broadcast_shapes(c.shape, onnx_shape))
        except ValueError:
            raise UnsupportedOperation(node.op_type, _where(node), f"a constant of shape {c.shape} does not "
                                       f"broadcast against the input-dependent tensor of shape {onnx_shape}") from None
        if full != tuple(onnx_shape):
            raise UnsupportedOperation(node.op_type, _where(node), f"the constant of shape {c.shape} broadcasts "
                                       f"the input-dependent tensor {onnx_shape} to the larger shape {full}")
        c = c.reshape((1,) * (len(onnx_shape) - c.ndim) + c.shape)
        return self._t(c[0] if batched else c)

    def _reference(self, node, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``node`` evaluated by ``onnx.reference`` (constant folding, shapes)."""
        try:
            with np.errstate(all="ignore"):
                return reference_evaluator(node, self.opset).run(None, feeds)
        except Exception as exc:
            raise UnsupportedOperation(node.op_type, _where(node), f"onnx.reference cannot evaluate it on "
                                       f"constants ({type(exc).__name__}: {_first_line(exc)})") from None

    def _attrs(self, node) -> dict[str, Any]:
        from onnx import helper
        out = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        return out

    # ---- the walk ---------------------------------------------------------------------
    def build(self) -> Graph:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((BATCH, *self.input_shape), generator=gen, dtype=self.dtype)
        name = self.input.name
        self.nodes[name] = Input(name, [], self.input_shape, "input")
        self.dep[name] = _Tensor(name, self.input_shape, self.batched, x)
        onnx_nodes = list(self.model.graph.node)
        folded = self._fold_constants(onnx_nodes)
        composites = find_composites(onnx_nodes, self.consts, _dependent(onnx_nodes, name),
                                     [o.name for o in self.model.graph.output])
        absorbed = {i for c in composites.values() for i in c.nodes if i != c.root}
        for i, node in enumerate(onnx_nodes):
            if i not in folded and i not in absorbed:
                self._visit(node, composites.get(i))
        if self.output not in self.dep:
            raise UnsupportedOperation("a constant output", f"model '{self.name}'",
                                       f"output '{self.output}' does not depend on the input")
        out = self.dep[self.output]
        if out.node == self.input.name:
            raise UnsupportedOperation("the identity", f"model '{self.name}'", "the model has no layers")
        graph = Graph(self.nodes, self.input.name, out.node, self.name, list(self.notes))
        return _prune(graph)

    def _fold_constants(self, onnx_nodes) -> set[int]:
        """Evaluate, in order, every node whose inputs are all constants (initializers,
        ``Constant``, folded nodes), so that composite activations see their constants; returns
        their indices. Constants computed from the ``Shape`` of an input-dependent tensor are
        folded later, during the walk. Control flow is left to :meth:`_visit`, which refuses it."""
        folded = set()
        for i, node in enumerate(onnx_nodes):
            if node.op_type not in ("If", "Loop", "Scan") and all(n in self.consts for n in node.input if n):
                self._fold(node)
                folded.add(i)
        return folded

    def _visit(self, node, composite: Composite | None = None) -> None:
        where = _where(node)
        if node.op_type in ("If", "Loop", "Scan"):  # their bodies may read the input implicitly
            raise UnsupportedOperation(node.op_type, where, _REFUSED[node.op_type])
        inputs = [composite.variable] if composite else [i for i in node.input if i]
        if composite and composite.variable not in self.dep:
            raise UnsupportedOperation(composite.activation.label, where, f"its input '{composite.variable}' "
                                       "is not a tensor lipbound follows")
        if not any(i in self.dep for i in inputs):
            self._fold(node)
            return
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperation(f"{node.domain}.{op}", where, "operators outside the standard ONNX domain")
        for i in inputs:
            if i in self.after_softmax and op not in _SHAPE_ONLY:
                raise UnsupportedOperation("Softmax", f"the input of {where}",
                                           "a softmax is only accepted as the last operation (it is then removed)")
        if op in ("Shape", "Size"):
            src = self.dep[node.input[0]]
            value = self._reference(node, {node.input[0]: np.zeros(src.onnx_shape, np.float32)})[0]
            self.consts[node.output[0]] = value
            return
        handler = partial(self._composite, composite=composite) if composite else getattr(self, f"_op_{op}", None)
        if handler is None:
            raise UnsupportedOperation(op, where, _REFUSED.get(op, "no lipbound handler for this ONNX operator"))
        try:
            handler(node)
        except LipboundError:
            raise
        except (ValueError, RuntimeError, IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError) as exc:
            first = self.dep.get(inputs[0]) if inputs else None
            raise InvalidInput(f"{op} at {where} does not fit its input of shape "
                               f"{first.onnx_shape if first else '?'}: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        for out in node.output:
            if out in self.dep and 0 in self.dep[out].shape:
                raise InvalidInput(f"{op} at {where} produces a tensor with no elements, shape {self.dep[out].onnx_shape}")
            if out in self.dep and not self.dep[out].shape:
                raise UnsupportedOperation(op, where, "it reduces each sample to a scalar without an axis; "
                                           "keep at least one axis (e.g. shape [1])")

    def _fold(self, node) -> None:
        feeds = {i: self.consts[i] for i in node.input if i}
        for out, value in zip(node.output, self._reference(node, feeds)):
            if out:
                self.consts[out] = self._checked(np.asarray(value), f"the constant '{out}' ({node.op_type})")

    # ---- pass-through -----------------------------------------------------------------
    def _op_Identity(self, node) -> None:
        self._alias(node.output[0], self.dep[node.input[0]])

    def _op_Dropout(self, node) -> None:
        training = self._const(node.input[2], node, "training_mode") if len(node.input) > 2 else None
        if training is not None and bool(training):
            raise UnsupportedOperation("Dropout", _where(node), _REFUSED["Dropout"])
        self._alias(node.output[0], self.dep[node.input[0]])

    def _op_Cast(self, node) -> None:
        from onnx import TensorProto
        if self._attrs(node).get("to") not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                               TensorProto.BFLOAT16):
            raise UnsupportedOperation("Cast", _where(node), "a cast to a non-float type rounds: not Lipschitz")
        self._alias(node.output[0], self.dep[node.input[0]])

    # ---- element-wise activations (facts from lipbound.graph.activations) ------------------
    def _activation(self, node, label: str, fn: Callable, facts: activations.ActivationFacts,
                    src: _Tensor | None = None, origin: str | None = None) -> None:
        src = src or self.dep[node.input[0]]
        out = node.output[0]
        with torch.no_grad():
            value = fn(src.value)
        origin = origin or f"{node.op_type} '{node.name or out}'"
        self._add(Activation(out, [src.node], src.shape, origin, fn, facts, label), src.batched, value)

    def _composite(self, node, composite: Composite) -> None:
        """A composite activation (:mod:`lipbound.frontends.onnx_composites`) ending at ``node``."""
        src = self.dep[composite.variable]
        act = composite.activation
        if composite.const_rank > len(src.onnx_shape):
            raise UnsupportedOperation(act.label, _where(node), "a constant of the subgraph has more axes than its "
                                       "input and broadcasts it to a larger shape")
        origin = f"{act.label} from {len(composite.nodes)} ONNX nodes ending at '{node.name or node.output[0]}'"
        self._activation(node, act.label, act.fn, act.facts, src, origin)

    def _op_Relu(self, node):
        self._activation(node, "ReLU", torch.relu, activations.relu())

    def _op_LeakyRelu(self, node):
        alpha = float(self._attrs(node).get("alpha", 0.01))
        self._activation(node, "LeakyReLU", lambda x, a=alpha: F.leaky_relu(x, a), activations.leaky_relu(alpha))

    def _op_PRelu(self, node):
        src = self.dep[node.input[0]]
        w = self._align(self._const(node.input[1], node, "slope"), src.onnx_shape, src.batched, node)
        self._activation(node, "PReLU", _Fn(lambda x, c: torch.where(x >= 0, x, x * c), w), activations.prelu(w))

    def _op_Elu(self, node):
        alpha = float(self._attrs(node).get("alpha", 1.0))
        self._activation(node, "ELU", lambda x, a=alpha: F.elu(x, a), activations.elu(alpha))

    def _op_Celu(self, node):
        alpha = float(self._attrs(node).get("alpha", 1.0))
        self._activation(node, "CELU", lambda x, a=alpha: F.celu(x, a), activations.celu(alpha))

    def _op_Selu(self, node):
        a = self._attrs(node)
        alpha, gamma = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
        self._activation(node, "SELU", lambda x: gamma * torch.where(x > 0, x, alpha * torch.expm1(x)),
                         activations.selu(alpha, gamma))

    def _op_Sigmoid(self, node):
        self._activation(node, "Sigmoid", torch.sigmoid, activations.MODULES[nn.Sigmoid].facts(None))

    def _op_HardSigmoid(self, node):
        a = self._attrs(node)
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        self._activation(node, "HardSigmoid", lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0),
                         activations.hard_sigmoid(alpha, beta))

    def _op_Tanh(self, node):
        self._activation(node, "Tanh", torch.tanh, activations.MODULES[nn.Tanh].facts(None))

    def _op_Softplus(self, node):
        # ONNX Softplus is log(1 + e^x) exactly (torch's F.softplus switches to x above 20)
        self._activation(node, "Softplus", activations.softplus_function(), activations.softplus())

    def _op_Softsign(self, node):
        self._activation(node, "Softsign", F.softsign, activations.MODULES[nn.Softsign].facts(None))

    def _op_Gelu(self, node):
        approx = self._attrs(node).get("approximate", "none")
        self._activation(node, "GELU", lambda x: F.gelu(x, approximate=approx), activations.MODULES[nn.GELU].facts(None))

    def _op_HardSwish(self, node):
        self._activation(node, "Hardswish", F.hardswish, activations.HARDSWISH)

    def _op_Mish(self, node):
        self._activation(node, "Mish", F.mish, activations.MODULES[nn.Mish].facts(None))

    def _op_Abs(self, node):
        self._activation(node, "Abs", torch.abs, activations.absolute())

    def _op_Clip(self, node):
        """``min(max(x, lo), hi)``; an omitted bound (no input, ``""``, no attribute) is none.
        With ``lo > hi`` it is the constant ``hi`` (ONNX's order of min and max, and torch's)."""
        a = self._attrs(node)
        lo = self._scalar(node, 1, "min", a.get("min"))
        hi = self._scalar(node, 2, "max", a.get("max"))
        if lo is not None and hi is not None and lo > hi:
            lo = hi
        fn = (lambda x: x) if lo is None and hi is None else (lambda x: torch.clamp(x, lo, hi))  # noqa: E731
        self._activation(node, "Clip", fn, activations.hardtanh(lo, hi))

    def _scalar(self, node, position: int, what: str, default: float | None) -> float | None:
        """An optional scalar input (None when absent or ``""``: then ``default``)."""
        value = self._const(node.input[position], node, what) if len(node.input) > position else None
        if value is None:
            return None if default is None else float(default)
        if value.size != 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: its {what} must be a scalar, "
                               f"got shape {value.shape}")
        return float(value.reshape(-1)[0])

    # ---- affine layers ----------------------------------------------------------------
    def _op_Gemm(self, node):
        a = self._attrs(node)
        if node.input[0] not in self.dep:
            raise UnsupportedOperation("Gemm", _where(node), "only Gemm(x, W) with x the input-dependent tensor "
                                       "is supported (W @ x: export as MatMul)")
        src = self.dep[node.input[0]]
        w = self._const(node.input[1], node, "second operand B")
        c = self._const(node.input[2], node, "bias C") if len(node.input) > 2 else None
        if len(src.onnx_shape) != 2 or w.ndim != 2:
            raise InvalidInput(f"Gemm at {_where(node)} needs 2-D operands, got {src.onnx_shape} and {w.shape}")
        w = float(a.get("alpha", 1.0)) * (w.T if a.get("transB", 0) else w)  # (K, N)
        first: LinearOperator | None = None
        shape = src.shape
        if a.get("transA", 0):
            if src.batched:
                raise UnsupportedOperation("Gemm", _where(node), "transA=1 would move the batch axis")
            first = Permute((1, 0), src.shape)
            shape = first.out_shape
        op: LinearOperator = Dense(self._t(w.T), shape)
        if first is not None:
            op = compose(first, op)
        bias = None
        if c is not None:
            out_onnx = ((1,) if src.batched else ()) + op.out_shape
            bias = self._align(float(a.get("beta", 1.0)) * c, out_onnx, src.batched, node)
        self._affine(node, src, op, bias)

    def _op_MatMul(self, node):
        a, b = node.input[0], node.input[1]
        if a in self.dep and b in self.dep:
            raise UnsupportedOperation("MatMul", _where(node), "a product of two input-dependent tensors "
                                       "(attention-like) is not globally Lipschitz")
        if a in self.dep:
            src, w = self.dep[a], self.consts[b]
            if w.ndim != 2:
                raise UnsupportedOperation("MatMul", _where(node), f"only x @ W with a 2-D constant W (got {w.shape})")
            self._affine(node, src, Dense(self._t(w.T), src.shape))
            return
        src, w = self.dep[b], self.consts[a]
        if w.ndim != 2:
            raise UnsupportedOperation("MatMul", _where(node), f"only W @ x with a 2-D constant W (got {w.shape})")
        if len(src.onnx_shape) == 1:  # matrix times vector
            self._affine(node, src, Dense(self._t(w), src.shape))
            return
        if len(src.shape) < 2:
            raise UnsupportedOperation("MatMul", _where(node), "W @ x would contract the batch axis")
        nd = len(src.shape)
        swap = (*range(nd - 2), nd - 1, nd - 2)
        first = Permute(swap, src.shape)
        dense = Dense(self._t(w), first.out_shape)
        self._affine(node, src, compose(compose(first, dense), Permute(swap, dense.out_shape)))

    def _spatial(self, node, nd: int) -> _Tensor:
        src = self.dep[node.input[0]]
        if not src.batched or len(src.shape) != nd + 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)} expects an input (N, C, {nd} spatial axes), "
                               f"got shape {src.onnx_shape}")
        return src

    def _conv_parts(self, node):
        """Attributes, weight, bias (or None), number of spatial axes, input, strides, dilations
        and groups of a Conv or ConvTranspose node, checked."""
        a = self._attrs(node)
        w = self._t(self._const(node.input[1], node, "weight"))
        b = self._const(node.input[2], node, "bias") if len(node.input) > 2 else None
        nd = w.dim() - 2
        src = self._spatial(node, nd)
        stride, dil = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
        groups = int(a.get("group", 1))
        if not len(stride) == len(dil) == nd or min(stride + dil + [groups]) < 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: strides {stride}, dilations {dil} and group "
                               f"{groups} must be positive, with {nd} strides and dilations")
        return a, w, b, nd, src, stride, dil, groups

    def _op_Conv(self, node):
        a, w, b, nd, src, stride, dil, groups = self._conv_parts(node)
        k = tuple(w.shape[2:])
        begin, end = _pads(a, src.shape[1:], k, stride, dil)
        self._bounded(node, [src.shape[0], *(h + p + q for h, p, q in zip(src.shape[1:], begin, end))], "padded input")
        if begin == end:
            op: LinearOperator = Conv(w, src.shape, stride, begin, dil, groups)
        else:
            pad = self._pad_op(node, src.shape, begin, end, "constant")
            op = compose(pad, Conv(w, pad.out_shape, stride, [0] * nd, dil, groups))
        self._affine(node, src, op, None if b is None else self._t(b).reshape(-1, *[1] * nd))

    def _op_ConvTranspose(self, node):
        a, w, b, nd, src, stride, dil, groups = self._conv_parts(node)
        k = list(w.shape[2:])
        outpad = list(a.get("output_padding", [0] * nd))
        sizes = src.shape[1:]
        full = [(h - 1) * s + (kk - 1) * d + 1 for h, s, kk, d in zip(sizes, stride, k, dil)]
        self._bounded(node, [w.shape[1] * groups, *(f + max(op, 0) for f, op in zip(full, outpad))], "output")
        auto = a.get("auto_pad", "NOTSET")
        if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
            target = list(a["output_shape"])[-nd:] if "output_shape" in a else [h * s for h, s in zip(sizes, stride)]
            total = [f + op - t for f, op, t in zip(full, outpad, target)]
            if auto not in ("SAME_UPPER", "SAME_LOWER") and any(t % 2 for t in total):
                raise UnsupportedOperation("ConvTranspose", _where(node), "output_shape with an odd total padding "
                                           "is ambiguous (the ONNX spec and onnxruntime split it differently); "
                                           "give explicit pads")
            upper = auto != "SAME_LOWER"
            begin = [t // 2 if upper else t - t // 2 for t in total]
            end = [t - t // 2 if upper else t // 2 for t in total]
        elif auto == "VALID":
            begin, end = [0] * nd, [0] * nd
        else:
            pads = list(a.get("pads", [0] * 2 * nd))
            begin, end = pads[:nd], pads[nd:]
        if begin == end and all(op < max(s, d) for op, s, d in zip(outpad, stride, dil)):
            op_: LinearOperator = Conv(w, src.shape, stride, begin, dil, groups, transposed=True, output_padding=outpad)
        else:
            conv = Conv(w, src.shape, stride, [0] * nd, dil, groups, transposed=True)
            crop = self._pad_op(node, conv.out_shape, [-x for x in begin], [op - e for op, e in zip(outpad, end)],
                                "constant")
            op_ = compose(conv, crop)
        self._affine(node, src, op_, None if b is None else self._t(b).reshape(-1, *[1] * nd))

    def _op_BatchNormalization(self, node):
        a = self._attrs(node)
        if a.get("training_mode", 0) or any(o for o in node.output[1:]):
            raise UnsupportedOperation("BatchNormalization", _where(node), "training mode uses batch statistics")
        src = self.dep[node.input[0]]
        if len(src.onnx_shape) < 2:
            raise InvalidInput(f"BatchNormalization at {_where(node)} needs an input (N, C, ...), got {src.onnx_shape}")
        scale, bias, mean, var = (self._const(n, node, what) for n, what in
                                  zip(node.input[1:5], ("scale", "bias", "mean", "variance")))
        s = scale / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        axis = 0 if src.batched else 1  # the channel axis per sample
        shape = (-1,) + (1,) * (len(src.shape) - axis - 1)
        op = Diagonal(self._t(s).reshape(shape), src.shape, "BatchNorm")
        self._affine(node, src, op, self._t(bias - mean * s).reshape(shape))

    # ---- arithmetic with constants, sums of branches ------------------------------------
    def _binary(self, node, kind: str) -> None:
        a, b = node.input[0], node.input[1]
        where = _where(node)
        out = node.output[0]
        if a in self.dep and b in self.dep:
            if kind in ("Mul", "Div"):
                raise UnsupportedOperation(kind, where, "a product or quotient of two input-dependent tensors "
                                           "is not globally Lipschitz")
            ta, tb = self.dep[a], self.dep[b]
            if ta.shape != tb.shape or ta.batched != tb.batched:
                raise UnsupportedOperation(kind, where, f"the two branches must have the same shape "
                                           f"(got {ta.onnx_shape} and {tb.onnx_shape})")
            if kind == "Sub":
                neg = self._fresh(f"{out}/negate")
                self._affine(node, tb, Diagonal(self._t(-1.0), tb.shape, "Negate"), out=neg)
                tb = self.dep[neg]
            origin = f"{node.op_type} '{node.name or out}'"
            self._add(Add(out, [ta.node, tb.node], ta.shape, origin), ta.batched, ta.value + tb.value)
            return
        x_first = a in self.dep
        src = self.dep[a if x_first else b]
        c = self._align(self._const(b if x_first else a, node, "constant operand"), src.onnx_shape, src.batched, node)
        one = self._t(1.0)
        if kind == "Add":
            self._affine(node, src, Diagonal(one, src.shape, "Shift"), c)
        elif kind == "Sub":
            self._affine(node, src, Diagonal(one if x_first else -one, src.shape, "Shift" if x_first else "Negate"),
                         -c if x_first else c)
        elif kind == "Mul":
            self._affine(node, src, Diagonal(c, src.shape, "Multiply"))
        else:
            if not x_first:
                raise UnsupportedOperation("Div", where, "division by an input-dependent tensor is not Lipschitz")
            if not bool((c != 0).all()):
                raise InvalidInput(f"Div at {where} divides by zero")
            self._affine(node, src, Diagonal(1.0 / c, src.shape, "Divide"))

    def _op_Add(self, node):
        self._binary(node, "Add")

    def _op_Sub(self, node):
        self._binary(node, "Sub")

    def _op_Mul(self, node):
        self._binary(node, "Mul")

    def _op_Div(self, node):
        self._binary(node, "Div")

    def _op_Neg(self, node):
        src = self.dep[node.input[0]]
        self._affine(node, src, Diagonal(self._t(-1.0), src.shape, "Negate"))

    def _op_Sum(self, node):
        if len(node.input) == 1:
            self._op_Identity(node)
        elif len(node.input) == 2:
            self._binary(node, "Add")
        else:
            raise UnsupportedOperation("Sum", _where(node), "Sum of more than two tensors; use Add")

    def _op_Concat(self, node):
        axis = int(self._attrs(node)["axis"])
        if not all(i in self.dep for i in node.input):
            raise UnsupportedOperation("Concat", _where(node), "concatenation with constant tensors")
        ts = [self.dep[i] for i in node.input]
        if len({t.batched for t in ts}) != 1 or len({len(t.shape) for t in ts}) != 1:
            raise UnsupportedOperation("Concat", _where(node), "the tensors have different batch layouts")
        axis = axis % len(ts[0].onnx_shape)
        if ts[0].batched and axis == 0:
            raise UnsupportedOperation("Concat", _where(node), "concatenation along the batch axis")
        axis -= 1 if ts[0].batched else 0
        if self._circular_pad(node, axis):
            return
        out = node.output[0]
        value = torch.cat([t.value for t in ts], dim=axis + 1)
        self._add(Concat(out, [t.node for t in ts], tuple(value.shape[1:]), f"Concat '{node.name or out}'", axis),
                  ts[0].batched, value)

    def _circular_pad(self, node, axis: int) -> bool:
        """Translate ``Concat([x[.., n-l:n], x, x[.., 0:r]], axis)`` (how ``torch.onnx`` writes
        circular padding, one axis at a time) as the circular pad operator the torch
        frontend builds, merged with a circular pad of ``x`` along other axes; returns False
        (a plain concatenation) for any other Concat. Exact: both compute the same map, and one
        operator gets one norm where a Concat of slices gets ``sqrt(sum of squares)``."""
        names = list(node.input)
        for k, name in enumerate(names):
            parts = [self.slices.get(n) for n in names[:k] + names[k + 1:]]
            if any(p is None or p[0] != name for p in parts):
                continue
            src = self.dep[name]
            full = [range(n) for n in src.shape]
            if any(r != f for p in parts for ax, (r, f) in enumerate(zip(p[1], full)) if ax != axis):
                return False
            n = src.shape[axis]
            left = [i for p in parts[:k] for i in p[1][axis]]
            right = [i for p in parts[k:] for i in p[1][axis]]
            if left != list(range(n - len(left), n)) or right != list(range(len(right))) or not (left or right):
                return False
            base, begin, end = self.circular.get(name, (src, [0] * len(src.shape), [0] * len(src.shape)))
            if begin[axis] or end[axis]:  # padded along this axis already: pad the padded tensor
                base, begin, end = src, [0] * len(src.shape), [0] * len(src.shape)
            begin, end = list(begin), list(end)
            begin[axis], end[axis] = len(left), len(right)
            try:
                op = self._pad_op(node, base.shape, begin, end, "wrap")
            except (RuntimeError, NotImplementedError, ValueError):  # circular padding torch cannot do
                return False
            self._affine(node, base, op)
            self.circular[node.output[0]] = (base, begin, end)
            return True
        return False

    # ---- pooling and padding ------------------------------------------------------------
    def _pool(self, node, kind: str) -> tuple[_Tensor, _PoolFn, list[int], list[int], list[int]]:
        """The input, the pooling function and ``kernel``, ``stride``, ``dilation`` of a MaxPool
        or AveragePool node, checked."""
        src = self.dep[node.input[0]]
        nd = len(src.shape) - 1
        src = self._spatial(node, nd)
        a = self._attrs(node)
        k = list(a.get("kernel_shape", []))
        stride, dil = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
        if not len(k) == len(stride) == len(dil) == nd or min(k + stride + dil) < 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: kernel_shape {k}, strides {stride} and dilations "
                               f"{dil} must have {nd} positive entries")
        begin, end = _pads(a, src.shape[1:], k, stride, dil)
        ceil_mode = bool(a.get("ceil_mode", 0)) and (a.get("auto_pad", "NOTSET") or "NOTSET") == "NOTSET"
        sizes = _pool_sizes(src.shape[1:], k, stride, dil, begin, end, ceil_mode)
        self._bounded(node, [src.shape[0], *(h + b + e for h, b, e in zip(src.shape[1:], begin, end))], "padded input")
        if min(begin + end) < 0 or min(sizes) < 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: pads {begin} / {end} do not fit the input of "
                               f"spatial shape {src.shape[1:]}")
        fn = _PoolFn(kind, k, stride, dil, begin, end, sizes, ceil_mode, bool(a.get("count_include_pad", 0)))
        with torch.no_grad():
            probe = fn(torch.zeros((1, *src.shape), dtype=self.dtype))
        if not bool(torch.isfinite(probe).all()):  # -inf (max) or 0 / 0 (average without the pads)
            raise InvalidInput(f"{node.op_type} at {_where(node)}: some windows lie entirely in the padding "
                               f"(pads {begin} / {end}, input of spatial shape {src.shape[1:]})")
        return src, fn, k, stride, dil

    def _op_MaxPool(self, node):
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedOperation("MaxPool", _where(node), "the Indices output is not supported")
        src, fn, k, stride, dil = self._pool(node, "max")
        with torch.no_grad():
            value = fn(src.value)
        out = node.output[0]
        self._add(MaxPool(out, [src.node], tuple(value.shape[1:]), f"MaxPool '{node.name or out}'", fn,
                          _pool_multiplicity(k, stride, dil, len(k))), True, value)

    def _op_GlobalMaxPool(self, node):
        src = self.dep[node.input[0]]
        src = self._spatial(node, len(src.shape) - 1)
        dims = tuple(range(2, len(src.shape) + 1))
        fn = lambda x: torch.amax(x, dim=dims, keepdim=True)  # noqa: E731
        out = node.output[0]
        value = fn(src.value)
        self._add(MaxPool(out, [src.node], tuple(value.shape[1:]), f"GlobalMaxPool '{node.name or out}'", fn, 1),
                  True, value)

    def _op_AveragePool(self, node):
        src, fn, _, _, dil = self._pool(node, "average")
        if any(d != 1 for d in dil):
            raise UnsupportedOperation("AveragePool", _where(node), "dilated average pooling")
        self._affine(node, src, separable(fn, src.shape, "AveragePool", len(src.shape) - 1, self.dtype,
                                          where=_where(node)))

    def _op_GlobalAveragePool(self, node):
        src = self.dep[node.input[0]]
        src = self._spatial(node, len(src.shape) - 1)
        dims = tuple(range(2, len(src.shape) + 1))
        fn = lambda x: x.mean(dim=dims, keepdim=True)  # noqa: E731
        op = separable(fn, src.shape, "GlobalAveragePool", len(dims), self.dtype, where=_where(node))
        self._affine(node, src, op)

    def _pad_op(self, node, shape: Shape, begin: Sequence[int], end: Sequence[int], mode: str) -> Kronecker:
        """Padding (negative: cropping) of a per-sample tensor of ``shape`` in an ONNX Pad ``mode``."""
        out = [n + b + e for n, b, e in zip(shape, begin, end)]
        if min(out) < 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: pads {list(begin)} / {list(end)} leave no "
                               f"element of shape {tuple(shape)}")
        self._bounded(node, out, "padded input")
        pads = _torch_pads(begin, end)
        while len(pads) > 2 and pads[-2:] == [0, 0]:  # the leading axes it leaves alone
            pads = pads[:-2]
        torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
        label = "Crop" if all(p <= 0 for p in pads) else f"Pad({mode})"
        return separable(lambda z: F.pad(z, pads, mode=torch_mode), shape, label, len(pads) // 2, self.dtype)

    def _op_Pad(self, node):
        a = self._attrs(node)
        src = self.dep[node.input[0]]
        mode = a.get("mode", "constant")
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise UnsupportedOperation("Pad", _where(node), f"mode {mode!r}")
        pads = self._const(node.input[1], node, "pads") if len(node.input) > 1 else a.get("pads")
        value = self._scalar(node, 2, "constant_value", a.get("value", 0.0)) or 0.0
        axes = self._const(node.input[3], node, "axes") if len(node.input) > 3 else None
        rank = len(src.onnx_shape)
        if pads is None or np.asarray(pads).dtype.kind not in "iu":
            raise InvalidInput(f"Pad at {_where(node)} needs integer pads")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        axes = list(range(rank)) if axes is None else [int(x) % rank for x in np.asarray(axes).reshape(-1)]
        if len(pads) != 2 * len(axes):
            raise InvalidInput(f"Pad at {_where(node)}: {len(pads)} pads for {len(axes)} axes")
        begin, end = [0] * rank, [0] * rank
        for i, ax in enumerate(axes):
            begin[ax], end[ax] = pads[i], pads[len(axes) + i]
        if src.batched:
            if begin[0] or end[0]:
                raise UnsupportedOperation("Pad", _where(node), "padding along the batch axis")
            begin, end = begin[1:], end[1:]
        try:
            op = self._pad_op(node, src.shape, begin, end, mode)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            raise UnsupportedOperation("Pad", _where(node), f"mode {mode!r} on this shape: {exc}") from None
        bias = None
        if mode == "constant" and value != 0.0:
            bias = F.pad(torch.zeros((1, *src.shape), dtype=self.dtype), _torch_pads(begin, end), value=value)[0]
        self._affine(node, src, op, bias)

    # ---- shapes -----------------------------------------------------------------------------
    def _reshape_like(self, node) -> None:
        """Flatten / Reshape / Squeeze / Unsqueeze: the ONNX output shape for one sample (from the
        reference implementation), then a :class:`Reshape`."""
        src = self.dep[node.input[0]]
        feeds = {node.input[0]: np.zeros(src.onnx_shape, np.float32)}
        feeds.update({i: self._const(i, node, "shape argument") for i in node.input[1:] if i})
        out_shape = tuple(int(s) for s in self._reference(node, feeds)[0].shape)
        batched = src.batched and len(out_shape) >= 2 and out_shape[0] == 1
        shape = out_shape[1:] if batched else out_shape
        if shape == src.shape:
            self._alias(node.output[0], replace(src, batched=batched))
        elif not shape or 0 in shape:
            self._alias(node.output[0], replace(src, shape=shape, batched=batched))  # refused by _visit
        else:
            self._affine(node, src, Reshape(src.shape, shape), batched=batched)

    _op_Flatten = _op_Reshape = _op_Squeeze = _op_Unsqueeze = _reshape_like

    def _op_Transpose(self, node):
        src = self.dep[node.input[0]]
        rank = len(src.onnx_shape)
        perm = [int(p) % rank for p in self._attrs(node).get("perm", list(range(rank))[::-1])]
        if src.batched:
            if perm[0] != 0:
                raise UnsupportedOperation("Transpose", _where(node), "it moves the batch axis")
            perm = [p - 1 for p in perm[1:]]
        if perm == list(range(len(perm))):
            self._alias(node.output[0], src)
        else:
            self._affine(node, src, Permute(perm, src.shape))

    def _op_Slice(self, node):
        src = self.dep[node.input[0]]
        rank = len(src.onnx_shape)
        starts, ends = (self._const(i, node, w) for i, w in zip(node.input[1:3], ("starts", "ends")))
        axes = self._const(node.input[3], node, "axes") if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
        steps = self._const(node.input[4], node, "steps") if len(node.input) > 4 and node.input[4] else np.ones(len(starts), int)
        index: list[slice] = [slice(None)] * rank
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if st <= 0:
                raise UnsupportedOperation("Slice", _where(node), "non-positive steps")
            size = src.onnx_shape[int(ax) % rank]
            index[int(ax) % rank] = slice(*slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)),
                                                 int(st)).indices(size))
        if src.batched:
            if len(range(*index[0].indices(1))) != 1:
                raise UnsupportedOperation("Slice", _where(node), "slicing the batch axis")
            index = index[1:]
        sel = (slice(None), *index)
        self._affine(node, src, selection(lambda z: z[sel], src.shape, "Slice", self.dtype, where=_where(node)))
        self.slices[node.output[0]] = (node.input[0], tuple(range(*i.indices(n)) for i, n in zip(index, src.shape)))

    # ---- the final softmax ------------------------------------------------------------------
    def _op_Softmax(self, node):
        where = _where(node)
        if self.keep_softmax:
            raise UnsupportedOperation("Softmax", where, "no lipbound method bounds a softmax node; its Jacobian "
                                       "diag(p) - p p^T has norm <= 1/2, so L(softmax o f) <= L(f) / 2: "
                                       "bound the logits (the default) and halve")
        self._alias(node.output[0], self.dep[node.input[0]])
        self.after_softmax.add(node.output[0])
        self.bounded_output = node.input[0]
        self.notes.append(f"the final {node.op_type} ({where}) was removed: the bounds are those of the logits")

    _op_LogSoftmax = _op_Softmax


def _where(node) -> str:
    out = node.output[0] if node.output else "?"
    return f"ONNX node '{node.name}' (output '{out}')" if node.name else f"the ONNX node with output '{out}'"


def _pads(attrs: dict[str, Any], sizes: Sequence[int], k, stride, dil) -> tuple[list[int], list[int]]:
    """Per-axis (begin, end) padding of a convolution or pooling from ``pads`` or ``auto_pad``
    (SAME_*: output ``ceil(H / s)``, the odd unit at the end for SAME_UPPER, at the start for
    SAME_LOWER)."""
    nd = len(sizes)
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = [int(p) for p in attrs.get("pads", [0] * 2 * nd)]
        return pads[:nd], pads[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise InvalidInput(f"unknown auto_pad {auto!r}")
    begin, end = [], []
    for h, kk, s, d in zip(sizes, k, stride, dil):
        out = -(-h // s)
        total = max(0, (out - 1) * s + (kk - 1) * d + 1 - h)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin, end


def _input_dtype(vi) -> torch.dtype:
    from onnx import TensorProto
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedOperation("a non-tensor input", f"input '{vi.name}'", "lipbound needs one float tensor input")
    elem = vi.type.tensor_type.elem_type
    if elem == TensorProto.DOUBLE:
        return torch.float64
    if elem in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
        return torch.float32
    raise InvalidInput(f"the model's input '{vi.name}' is not a float tensor (ONNX type {elem}): "
                       "a network of integers has no Lipschitz constant in lipbound's sense")


def _resolve_input(vi, given: Sequence[int] | None) -> tuple[Shape, bool]:
    """The input shape per sample and whether the model's input has a batch axis."""
    tt = vi.type.tensor_type
    dims = None
    if tt.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    pretty = "unknown" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    if given is not None:
        given = _check_shape(given)
        if dims is None:
            return given, True
        if len(dims) == len(given) + 1:
            if dims[0] not in (None, 1):
                raise InvalidInput(f"the model's input '{vi.name}' {pretty} has a fixed batch of {dims[0]}; "
                                   "lipbound needs a batch axis of size 1 or symbolic")
            batched, rest = True, dims[1:]
        elif len(dims) == len(given):
            batched, rest = False, dims
        else:
            raise InvalidInput(f"input shape {given} does not fit the model's input '{vi.name}' of shape {pretty}")
        if any(r is not None and r != g for r, g in zip(rest, given)):
            raise InvalidInput(f"input shape {given} does not fit the model's input '{vi.name}' of shape {pretty}")
        return given, batched
    if dims is None or not dims:
        raise InvalidInput(f"the model's input '{vi.name}' has no static shape: give it without batch axis "
                           "(input_shape=..., CLI --input-shape)")
    batched = len(dims) >= 2 and dims[0] in (None, 1)
    rest = dims[1:] if batched else dims
    if any(d is None for d in rest):
        raise InvalidInput(f"the model's input '{vi.name}' has a dynamic shape {pretty}: give the input shape "
                           "without batch axis (input_shape=..., CLI --input-shape)")
    if any(d == 0 for d in rest):
        raise InvalidInput(f"the model's input '{vi.name}' has a zero-size shape {pretty}")
    return tuple(rest), batched


def _dependent(nodes, input_name: str) -> set[str]:
    """Names of the tensors that depend on the network input (``Shape`` and ``Size`` of such a
    tensor are constants: the shape per sample is fixed)."""
    dep = {input_name}
    for node in nodes:
        if node.op_type not in ("Shape", "Size") and any(i in dep for i in node.input):
            dep.update(o for o in node.output if o)
    return dep


def _prune(graph: Graph) -> Graph:
    """Drop nodes the output does not depend on (dead branches of the ONNX graph)."""
    keep = {graph.output}
    for node in reversed(list(graph)):
        if node.name in keep:
            keep.update(node.inputs)
    if len(keep) == len(graph.nodes):
        return graph
    nodes = {k: n for k, n in graph.nodes.items() if k in keep}
    return Graph(nodes, graph.input, graph.output, graph.name, graph.notes)


def _reference_ops() -> list:
    """Corrections to ``onnx.reference`` (1.23), passed to it as ``new_ops``:

    * BatchNormalization in inference mode: the stock evaluator of opsets 9-13 mixes in batch
      statistics whenever ``momentum`` is set (its schema default), although a one-output
      BatchNormalization is in test mode by the spec;
    * MaxPool and AveragePool: the stock evaluator reads 2-D ``pads`` in the wrong order
      (``[top, bottom, left, right]`` instead of ``[top, left, bottom, right]``) on some paths,
      gives SAME_LOWER the output size ``floor(h / s)`` and refuses ``ceil_mode`` with
      ``auto_pad``. :func:`_spec_pool` follows the spec instead, in numpy;
    * ConvTranspose with ``group > 1``: the stock evaluator slices the weight by output channel
      instead of input channel, adds the whole bias to every group and keeps one output channel
      per group. Each group is a ConvTranspose of its own channels (weight ``(C, M/group, k..)``:
      input channels ``C/group`` per group, output channels ``M/group``), evaluated by the stock
      code with ``group=1`` and concatenated.
    """
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_conv_transpose import ConvTranspose as StockConvTranspose

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None):
            if training_mode:
                raise NotImplementedError("BatchNormalization in training mode")
            shape = (-1,) + (1,) * (x.ndim - 2)
            eps = 1e-5 if epsilon is None else epsilon
            y = scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            return ((y + bias.reshape(shape)).astype(x.dtype),)

    class ConvTranspose(StockConvTranspose):
        op_domain = ""

        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,  # noqa: N803
                 output_padding=None, output_shape=None, pads=None, strides=None):
            attrs = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
                         output_padding=output_padding, output_shape=output_shape, pads=pads, strides=strides)
            group = group or 1
            if group == 1:
                return super()._run(X, W, B, group=1, **attrs)
            if X.shape[1] % group or W.shape[0] != X.shape[1] or (B is not None and B.shape[0] != W.shape[1] * group):
                raise ValueError(f"ConvTranspose with group={group}: input {X.shape}, weight {W.shape}")
            parts = zip(np.split(X, group, axis=1), np.split(W, group, axis=0),
                        np.split(B, group) if B is not None else [None] * group)
            return (np.concatenate([super(ConvTranspose, self)._run(x, w, b, group=1, **attrs)[0]
                                    for x, w, b in parts], axis=1),)

    class MaxPool(OpRun):
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
                 storage_order=None, strides=None):
            if len(self.onnx_node.output) > 1:
                raise NotImplementedError("MaxPool with the Indices output")
            return (_spec_pool(x, "max", kernel_shape, strides, dilations, pads, auto_pad, ceil_mode),)

    class AveragePool(OpRun):
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
            kind = "average with pads" if count_include_pad else "average"
            return (_spec_pool(x, kind, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode),)

    return [BatchNormalization, ConvTranspose, MaxPool, AveragePool]


def _spec_pool(x: np.ndarray, kind: str, kernel, strides, dilations, pads, auto_pad, ceil_mode) -> np.ndarray:
    """MaxPool / AveragePool as the ONNX spec (opset 19) states them, in numpy, for the reference
    check: the window starting at ``o s`` in the padded input, taps every ``d``. The output size
    is ``floor((h + pads - e) / s) + 1`` (``e = (k - 1) d + 1``); with ``ceil_mode`` and explicit
    pads the ceiling, less a last window that would start in the end padding; with SAME_* it is
    ``ceil(h / s)``, the odd unit of padding at the end (UPPER) or the start (LOWER). Padding
    counts as ``-inf`` for the maximum; for the average it counts as 0 when ``kind`` is
    ``"average with pads"`` (``count_include_pad=1``) and is left out otherwise. Window parts past
    the padded input (ceil mode) are always left out."""
    nd = x.ndim - 2
    sizes = x.shape[2:]
    strides, dilations = list(strides or [1] * nd), list(dilations or [1] * nd)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    auto_pad = auto_pad or "NOTSET"
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-h // s) for h, s in zip(sizes, strides)]
        total = [max(0, (o - 1) * s + e - h) for o, s, e, h in zip(out, strides, span, sizes)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
    else:
        pads = [0] * 2 * nd if auto_pad == "VALID" or pads is None else list(pads)
        begin, end = pads[:nd], pads[nd:]
        ceil = bool(ceil_mode) and auto_pad == "NOTSET"
        out = []
        for h, s, e, b, f in zip(sizes, strides, span, begin, end):
            n = (-(-(h + b + f - e) // s) if ceil else (h + b + f - e) // s) + 1
            out.append(n - 1 if ceil and (n - 1) * s >= h + b else n)
    pad_value = -np.inf if kind == "max" else 0.0 if kind == "average with pads" else np.nan
    beyond = [max(0, (o - 1) * s + e - (h + b + f)) for o, s, e, h, b, f in zip(out, strides, span, sizes, begin, end)]
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(zip(begin, end)), constant_values=pad_value)
    xp = np.pad(xp, [(0, 0), (0, 0)] + [(0, m) for m in beyond], constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    windows = windows[(slice(None), slice(None), *(slice(0, o * s, s) for o, s in zip(out, strides)),
                       *(slice(None, None, d) for d in dilations))]
    axes = tuple(range(-nd, 0))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: NaN, refused by the frontend anyway
        y = np.nanmax(windows, axis=axes) if kind == "max" else np.nanmean(windows, axis=axes)
    return y.astype(x.dtype)


def reference_evaluator(model, opset: int | None = None):
    """``onnx.reference.ReferenceEvaluator`` for ``model`` (a ModelProto, or a NodeProto with its
    ``opset``), with the corrections of :func:`_reference_ops`."""
    from onnx.reference import ReferenceEvaluator
    opsets = None if opset is None else {"": opset}
    return ReferenceEvaluator(model, opsets=opsets, new_ops=_reference_ops())


def _reference_failure(model, feeds: dict[str, np.ndarray], exc: Exception) -> UnsupportedOperation:
    """The error for a model ``onnx.reference`` cannot run: it names the first node that fails
    when the nodes are evaluated one by one."""
    reason = (f"onnx.reference, which checks lipbound's graph against the model, cannot evaluate it "
              f"({type(exc).__name__}: {_first_line(exc)}); check=False skips the check")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    from onnx import numpy_helper
    results: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    results.update(feeds)
    for node in model.graph.node:
        try:
            values = reference_evaluator(node, opset).run(None, {i: results[i] for i in node.input if i})
        except Exception as node_exc:
            return UnsupportedOperation(node.op_type, _where(node), f"onnx.reference, which checks lipbound's graph "
                                        f"against the model, cannot evaluate it ({type(node_exc).__name__}: "
                                        f"{_first_line(node_exc)}); check=False skips the check")
        results.update(zip(node.output, values))
    return UnsupportedOperation("the ONNX model", "its graph", reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_against_reference(model, graph: Graph, batched: bool, output: str, samples: int = 2,
                            tol: float = 1e-4) -> float:
    """Largest difference between ``graph`` and ``onnx.reference`` on ``samples`` random inputs in
    [0, 1), relative to the output's size; raises :class:`~lipbound.errors.LipboundError` above
    ``tol``, and :class:`~lipbound.errors.UnsupportedOperation` naming the node when
    ``onnx.reference`` cannot evaluate the model."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((samples, *graph.input_shape), generator=gen, dtype=graph.dtype)
    with torch.no_grad():
        got = graph.forward(x).double().numpy()
    inp = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    np_dtype = np.float64 if graph.dtype == torch.float64 else np.float32
    feeds = [{inp: (x[i:i + 1] if batched else x[i]).numpy().astype(np_dtype)} for i in range(samples)]
    try:
        ev = reference_evaluator(model)
        with np.errstate(all="ignore"):  # onnx.reference's sigmoid overflows harmlessly on large inputs
            refs = [np.asarray(ev.run([output], f)[0], dtype=np.float64) for f in feeds]
    except Exception as exc:  # a model onnx.reference cannot run: name the node
        raise _reference_failure(model, feeds[0], exc) from None
    worst = 0.0
    for ref, out in zip(refs, got):
        if ref.size != out.size:
            raise LipboundError(f"internal check failed: the graph of '{graph.name}' has {out.size} outputs per "
                                f"sample where the ONNX model has {ref.size}; please report this model")
        err = float(np.abs(ref.reshape(-1) - out.reshape(-1)).max()) / max(1.0, float(np.abs(ref).max()))
        worst = max(worst, err)
    if not worst <= tol:
        raise LipboundError(f"internal check failed: the graph of '{graph.name}' differs from the ONNX model by "
                            f"{worst:.3g} (relative); please report this model")
    return worst
