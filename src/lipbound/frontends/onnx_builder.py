"""The ONNX builder: walks a checked ONNX model node by node into a
:class:`~lipbound.graph.ir.Graph` (see :mod:`lipbound.frontends.from_onnx` for what it accepts).
Element-wise activations come from the registry (:data:`lipbound.graph.activations.ONNX`) through
one generic handler; affine, shape and pooling operators from the mixins."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InvalidInput, LipboundError, UnsupportedOperation
from ..linalg.operators import LinearOperator
from ..graph import activations
from ..graph.ir import Activation, Affine, Graph, Input, Node
from .onnx_affine import AffineOps
from .onnx_common import (BATCH, MAX_INPUT_NUMEL, OnnxTensor as _Tensor, Shape, dependent as _dependent,
                          first_line as _first_line, input_dtype as _input_dtype, prune as _prune,
                          resolve_input as _resolve_input, where as _where)
from .onnx_composites import Composite, find_composites
from .onnx_pooling import PoolingOps
from .onnx_reference import reference_evaluator
from .onnx_resize import ResizeOps
from .onnx_shapes import ShapeOps

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
    "Round": "it jumps: not Lipschitz",
    "ArgMax": "it is piecewise constant with jumps: not Lipschitz",
    "ArgMin": "it is piecewise constant with jumps: not Lipschitz",
    "Dropout": "dropout in training mode is random",
    "If": "control flow", "Loop": "control flow", "Scan": "control flow",
}
_SHAPE_ONLY = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Cast"}


class OnnxBuilder(AffineOps, ShapeOps, PoolingOps, ResizeOps):
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
        if composite:
            handler = partial(self._composite, composite=composite)
        elif op in activations.ONNX:
            handler = partial(self._registered, entry=activations.ONNX[op])
        else:
            handler = getattr(self, f"_op_{op}", None)
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

    # ---- element-wise activations: the registry's ONNX entries -----------------------------
    def _activation(self, node, label: str, fn: Callable, facts: activations.ActivationFacts,
                    src: _Tensor | None = None, origin: str | None = None) -> None:
        src = src or self.dep[node.input[0]]
        out = node.output[0]
        with torch.no_grad():
            value = fn(src.value)
        origin = origin or f"{node.op_type} '{node.name or out}'"
        self._add(Activation(out, [src.node], src.shape, origin, fn, facts, label), src.batched, value)

    def _registered(self, node, entry: activations.ActivationOp) -> None:
        """An activation of the registry: its parameters from the node's attributes and constant
        inputs (:class:`_OnnxArgs`), its facts and function from the entry."""
        try:
            params = entry.onnx_params(_OnnxArgs(self, node))
            facts = entry.facts(**params)
        except LipboundError:
            raise
        except ValueError as exc:
            raise UnsupportedOperation(node.op_type, _where(node), str(exc)) from None
        self._activation(node, entry.onnx_label or entry.name, entry.function(**params), facts)

    def _composite(self, node, composite: Composite) -> None:
        """A composite activation (:mod:`lipbound.frontends.onnx_composites`) ending at ``node``."""
        src = self.dep[composite.variable]
        act = composite.activation
        if composite.const_rank > len(src.onnx_shape):
            raise UnsupportedOperation(act.label, _where(node), "a constant of the subgraph has more axes than its "
                                       "input and broadcasts it to a larger shape")
        origin = f"{act.label} from {len(composite.nodes)} ONNX nodes ending at '{node.name or node.output[0]}'"
        self._activation(node, act.label, act.fn, act.facts, src, origin)

    def _scalar(self, node, position: int, what: str, default: float | None) -> float | None:
        """An optional scalar input (None when absent or ``""``: then ``default``)."""
        value = self._const(node.input[position], node, what) if len(node.input) > position else None
        if value is None:
            return None if default is None else float(default)
        if value.size != 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: its {what} must be a scalar, "
                               f"got shape {value.shape}")
        return float(value.reshape(-1)[0])

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


class _OnnxArgs:
    """The parameters of one ONNX node as a registry entry reads them (:class:`~lipbound.graph.activations.OnnxArgs`)."""

    def __init__(self, builder: OnnxBuilder, node) -> None:
        self.builder, self.node = builder, node
        self.attrs = builder._attrs(node)

    def attr(self, name: str, default: Any) -> Any:
        return self.attrs.get(name, default)

    def scalar(self, position: int, what: str, default: float | None) -> float | None:
        return self.builder._scalar(self.node, position, what, default)

    def tensor(self, position: int, what: str) -> torch.Tensor:
        src = self.builder.dep[self.node.input[0]]
        value = self.builder._const(self.node.input[position], self.node, what)
        return self.builder._align(value, src.onnx_shape, src.batched, self.node)
