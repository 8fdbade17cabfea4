"""PyTorch frontend: ``nn.Module`` + input shape -> :class:`~lipbound.graph.ir.Graph`.

The model is copied, put in eval mode and traced with ``torch.fx``; one concrete forward pass on a
batch of two random inputs records every intermediate value, which gives shapes, tells which fx
nodes depend on the input (the others are constants: parameters, buffers, sizes), and lets the
finished graph be checked against the model. Each fx node is then translated by a handler:
modules by their class here, functions and tensor methods by their target
(:mod:`lipbound.frontends.torch_functions`). Anything without a handler
raises :class:`~lipbound.errors.UnsupportedOperation` naming the operation and its place.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from ..errors import InvalidInput, LipboundError, UnsupportedOperation
from ..linalg.operators import LinearOperator
from .torch_functions import FunctionCalls
from .torch_modules import (BATCH, _adaptive_multiplicity, _model_dtype, _pool_multiplicity, operator_of_module,
                            refusal_reason)
from ..graph import activations
from ..graph.ir import Activation, Affine, Graph, Input, MaxPool, Node


_PASS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def from_torch(model: nn.Module, input_shape: Sequence[int], name: str | None = None) -> Graph:
    """Build the graph of ``model`` for inputs of shape ``input_shape`` (without batch axis).

    The user's model is not modified: a copy is put in eval mode and traced.

    Raises:
        UnsupportedOperation: an operation lipbound cannot bound, with its place in the model.
        InvalidInput: a bad input shape, or weights that are NaN or infinite.
    """
    input_shape = _check_shape(input_shape)
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    _check_finite(model)
    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        raise UnsupportedOperation(type(model).__name__, "the model's forward",
                                   f"torch.fx cannot trace it ({type(exc).__name__}: {_first_line(exc)})") from None
    builder = _Builder(traced, input_shape, name or type(model).__name__)
    return builder.build()


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InvalidInput(f"input shape must be a sequence of positive integers, got {shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise InvalidInput(f"input shape must be non-empty positive integers (no batch axis), got {shape}")
    return shape


def _check_finite(model: nn.Module) -> None:
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidInput(f"weight '{pname}' contains NaN or infinite values")


class _Builder(FunctionCalls):
    """Translates one traced module into a Graph (one handler per kind of fx node)."""

    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...], name: str) -> None:
        self.gm = gm
        self.input_shape = input_shape
        self.name = name
        self.dtype = _model_dtype(gm)
        self.values: dict[str, Any] = {}
        self.dependent: set[str] = set()
        self.nodes: dict[str, Node] = {}
        self.alias: dict[str, str] = {}  # fx node -> graph node it equals (dropout, identity)
        self.notes: list[str] = []
        self.stripped: fx.Node | None = None  # the input of a removed final softmax

    # ---- recording pass ---------------------------------------------------------------
    def _record(self) -> tuple[torch.Tensor, Any]:
        gen = torch.Generator().manual_seed(0)
        device = next((p.device for p in self.gm.parameters()), torch.device("cpu"))
        x = torch.rand((BATCH, *self.input_shape), generator=gen, dtype=self.dtype).to(device)
        values = self.values
        builder = self

        class Recorder(fx.Interpreter):
            def run_node(self, n):
                try:
                    out = super().run_node(n)
                except LipboundError:
                    raise
                except Exception as exc:
                    raise InvalidInput(
                        f"input shape {builder.input_shape} does not fit the model: {builder._where(n)} "
                        f"failed with {type(exc).__name__}: {_first_line(exc)}") from None
                values[n.name] = out.detach().clone() if isinstance(out, torch.Tensor) else out
                return out

        with torch.no_grad():
            out = Recorder(self.gm).run(x)
        return x, out

    # ---- translation ------------------------------------------------------------------
    def build(self) -> Graph:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedOperation(f"a forward with {len(placeholders)} inputs", f"model '{self.name}'",
                                       "lipbound bounds functions of one input tensor")
        x, expected = self._record()
        output_name = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self._add(Input(n.name, [], self.input_shape, "input"))
                self.dependent.add(n.name)
            elif n.op == "output":
                output_name = self._output(n)
            elif n.op == "get_attr" or not self._depends(n):
                continue  # a constant: its recorded value is used where it is read
            else:
                self._check_batch(n)
                self.dependent.add(n.name)
                self._translate(n)
        graph = Graph(self.nodes, placeholders[0].name, output_name, self.name, self.notes)
        _check_reproduces(graph, x, expected if self.stripped is None else self.values[self.stripped.name])
        return graph

    def _depends(self, n: fx.Node) -> bool:
        """Whether ``n`` is a value of the input. Sizes, shapes and flags read from the input are
        constants; a tuple or list of input-dependent tensors (``nn.MultiheadAttention``,
        ``torch.split``) is refused here, since its items would otherwise pass for constants."""
        if not any(a.name in self.dependent for a in n.all_input_nodes):
            return False
        value = self.values.get(n.name)
        if isinstance(value, torch.Tensor):
            return True
        if any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(value)):
            module = self.gm.get_submodule(n.target) if n.op == "call_module" else None
            raise UnsupportedOperation(self._opname(n), self._where(n), refusal_reason(module) if module is not None
                                       else "it returns several tensors; lipbound handles operations with one output")
        return False

    def _check_batch(self, n: fx.Node) -> None:
        v = self.values[n.name]
        if v.dim() == 0 or v.shape[0] != BATCH:
            raise UnsupportedOperation(self._opname(n), self._where(n), "it mixes or removes the batch axis")

    def _output(self, n: fx.Node) -> str:
        arg = n.args[0]
        if not isinstance(arg, fx.Node) or arg.name not in self.dependent:
            raise UnsupportedOperation("an output that is not one tensor", f"model '{self.name}'",
                                       "lipbound bounds functions with one output tensor")
        return self._ref(arg)

    def _ref(self, n: fx.Node) -> str:
        return self.alias.get(n.name, n.name)

    def _shape(self, n: fx.Node | str) -> tuple[int, ...]:
        name = n if isinstance(n, str) else n.name
        return tuple(self.values[name].shape[1:])

    def _add(self, node: Node) -> None:
        self.nodes[node.name] = node

    def _where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return f"module '{n.target}' (fx node '{n.name}')"
        return f"fx node '{n.name}'"

    def _opname(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return type(self.gm.get_submodule(n.target)).__name__
        if n.op == "call_method":
            return f"Tensor.{n.target}"
        return getattr(n.target, "__name__", str(n.target))

    def _const(self, a: Any) -> Any:
        """The value of a constant argument (recorded for fx nodes; containers recursively)."""
        if isinstance(a, fx.Node):
            return self.values[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self._const(x) for x in a)
        if isinstance(a, dict):
            return {k: self._const(v) for k, v in a.items()}
        return a

    def _dep_args(self, n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if a.name in self.dependent]

    def _affine(self, n: fx.Node, src: fx.Node, op: LinearOperator, origin: str) -> None:
        """Add ``n`` as an affine node on ``src``; its bias is ``f(0)``: the node's own call
        evaluated with ``src`` replaced by zeros (``f(x) - A x`` on the recorded batch would carry
        the rounding of both terms as a spurious bias, moving every kink of the next activation)."""
        zero = torch.zeros_like(self.values[src.name])

        def at_zero(a: Any) -> Any:
            return (zero if a.name == src.name else self.values[a.name]) if isinstance(a, fx.Node) else a

        args, kwargs = fx.node.map_aggregate(n.args, at_zero), fx.node.map_aggregate(n.kwargs, at_zero)
        f0 = self._call(n, args, kwargs)
        bias = None if bool((f0 == 0).all()) else f0
        bias64 = None
        if bias is not None and bias.dtype != torch.float64:  # f(0) of the model's parameters, unrounded
            double = lambda a: a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a  # noqa: E731
            bias64 = self._call(n, fx.node.map_aggregate(args, double), fx.node.map_aggregate(kwargs, double),
                                float64=True)
        self._add(Affine(n.name, [self._ref(src)], self._shape(n), origin, op, bias, bias64))

    def _call(self, n: fx.Node, args: Any, kwargs: Any, float64: bool = False) -> torch.Tensor:
        """The first batch element of node ``n``'s own call on ``args`` (with ``float64``: of a
        float64 copy of its module)."""
        with torch.no_grad():
            if n.op == "call_module":
                module = self.gm.get_submodule(n.target)
                out = (copy.deepcopy(module).double() if float64 else module)(*args, **kwargs)
            elif n.op == "call_method":
                out = getattr(args[0], n.target)(*args[1:], **kwargs)
            else:
                out = n.target(*args, **kwargs)
        return out[0].detach().clone()

    def _translate(self, n: fx.Node) -> None:
        if n.op == "call_module":
            self._module(n, self.gm.get_submodule(n.target))
        else:
            self._function(n)

    # ---- modules ----------------------------------------------------------------------
    def _module(self, n: fx.Node, m: nn.Module) -> None:
        deps = self._dep_args(n)
        where = self._where(n)
        if len(deps) != 1 or n.args[0] is not deps[0]:
            raise UnsupportedOperation(type(m).__name__, where, "expected one input tensor")
        src = deps[0]
        in_shape = self._shape(src)
        origin = str(n.target)
        entry = activations.MODULES.get(type(m))
        if entry is not None:
            try:
                params = entry.module_params(m)
                facts = entry.facts(**params)
            except ValueError as exc:
                raise UnsupportedOperation(type(m).__name__, where, str(exc)) from None
            fn = entry.function(**params) if entry.replaces_torch else m
            self._add(Activation(n.name, [self._ref(src)], self._shape(n), origin, fn, facts, entry.name))
        elif isinstance(m, _PASS):
            self.alias[n.name] = self._ref(src)
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            self._softmax(n, src)
        elif isinstance(m, _MAXPOOL):
            self._maxpool(n, src, m, origin, _pool_multiplicity(m.kernel_size, m.stride, m.dilation, len(in_shape) - 1))
        elif isinstance(m, _ADAPTIVE_MAX):
            if m.return_indices:
                raise UnsupportedOperation(type(m).__name__, where, "return_indices=True")
            mult = _adaptive_multiplicity(in_shape[1:], self._shape(n)[1:])
            self._maxpool(n, src, m, origin, mult)
        else:
            op = operator_of_module(m, in_shape, where, self.dtype, self.values[src.name].device)
            self._affine(n, src, op, origin)

    def _softmax(self, n: fx.Node, src: fx.Node) -> None:
        """A final softmax (or log-softmax) is removed with a note, as the ONNX frontend does: the
        bounds are those of the logits, the quantity certificates use (``L(softmax o f) <= L(f) / 2``:
        the softmax's Jacobian ``diag(p) - p p^T`` has norm at most 1/2). Elsewhere it is refused."""
        name, where = self._opname(n), self._where(n)
        if [u.op for u in n.users] != ["output"]:
            raise UnsupportedOperation(name, where, "a softmax is only accepted as the last operation (it is then "
                                       "removed: lipbound bounds the logits)")
        self.alias[n.name] = self._ref(src)
        self.stripped = src
        self.notes.append(f"the final {name} ({where}) was removed: the bounds are those of the logits")

    def _maxpool(self, n, src, m, origin, multiplicity: int) -> None:
        if getattr(m, "return_indices", False):
            raise UnsupportedOperation(type(m).__name__, self._where(n), "return_indices=True")
        self._add(MaxPool(n.name, [self._ref(src)], self._shape(n), origin, m, multiplicity))

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _check_reproduces(graph: Graph, x: torch.Tensor, expected: Any) -> None:
    """The graph must compute what the model computes on the recording batch."""
    with torch.no_grad():
        got = graph.forward(x)
    scale = expected.abs().max().item() + 1e-12
    err = (got - expected).abs().max().item()
    tol = 1e-4 if expected.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
    if not err <= tol * max(scale, 1.0):
        raise LipboundError(f"internal check failed: the graph of '{graph.name}' differs from the model "
                            f"by {err:.3g} (please report this model)")
