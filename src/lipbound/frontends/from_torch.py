"""PyTorch frontend: ``nn.Module`` + input shape -> :class:`~lipbound.graph.ir.Graph`.

The model is copied, put in eval mode and traced with ``torch.fx``; one concrete forward pass on a
batch of two random inputs records every intermediate value, which gives shapes, tells which fx
nodes depend on the input (the others are constants: parameters, buffers, sizes), and lets the
finished graph be checked against the model. Each fx node is then translated by a handler:
modules by their class, functions and tensor methods by their target. Anything without a handler
raises :class:`~lipbound.errors.UnsupportedOperation` naming the operation and its place.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput, LipboundError, UnsupportedOperation
from ..linalg.operators import Conv, Dense, Diagonal, LinearOperator, Permute, Reshape, compose
from ..linalg.structured import selection, separable
from .torch_modules import BATCH, _adaptive_multiplicity, _model_dtype, _pool_multiplicity, _tup, operator_of_module
from ..graph import activations
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node


_PASS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
_NEG = {operator.neg, torch.neg, "neg"}
_RESHAPE = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "flatten", "view", "reshape",
            "squeeze", "unsqueeze", "contiguous", "view_as", "reshape_as"}
_PERMUTE = {torch.permute, torch.transpose, "permute", "transpose"}
_CAT = {torch.cat, torch.concat}
_AVG_FN = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
           F.adaptive_avg_pool3d, F.interpolate}
_MAX_FN = {F.max_pool1d, F.max_pool2d, F.max_pool3d}
_IDENTITY_FN = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, "clone", "detach"}


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


class _Builder:
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
        graph = Graph(self.nodes, placeholders[0].name, output_name, self.name)
        _check_reproduces(graph, x, expected)
        return graph

    def _depends(self, n: fx.Node) -> bool:
        if not isinstance(self.values.get(n.name), torch.Tensor):
            return False  # sizes, shapes, flags: not values of the input
        return any(a.name in self.dependent for a in n.all_input_nodes)

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

    def _maxpool(self, n, src, m, origin, multiplicity: int) -> None:
        if getattr(m, "return_indices", False):
            raise UnsupportedOperation(type(m).__name__, self._where(n), "return_indices=True")
        self._add(MaxPool(n.name, [self._ref(src)], self._shape(n), origin, m, multiplicity))

    # ---- functions and tensor methods -------------------------------------------------
    def _function(self, n: fx.Node) -> None:
        t = n.target
        deps = self._dep_args(n)
        where = self._where(n)
        name = self._opname(n)
        args = [self._const(a) if not (isinstance(a, fx.Node) and a.name in self.dependent) else a for a in n.args]
        kwargs = {k: self._const(v) for k, v in n.kwargs.items()}
        in_shape = self._shape(deps[0]) if deps else ()
        origin = f"{name} (fx node '{n.name}')"
        key = t if n.op == "call_function" else str(t)

        entry = activations.FUNCTIONS.get(t) if n.op == "call_function" else activations.METHODS.get(str(t))
        if entry is not None:
            self._single(n, deps, name)
            extra = list(args[1:])
            kw = {k: v for k, v in kwargs.items() if k != "inplace"}
            try:
                params = entry.call_params(extra, kw)
                facts = entry.facts(**params)
            except (TypeError, ValueError) as exc:
                raise UnsupportedOperation(name, where, str(exc)) from None
            fn = entry.function(**params) if entry.replaces_torch else _bind(t, extra, kw, method=n.op == "call_method")
            self._add(Activation(n.name, [self._ref(deps[0])], self._shape(n), origin, fn, facts, entry.name))
            return
        if key in _ADD or key in _SUB or key in _MUL or key in _DIV:
            # positional, with repeats: ``x + x`` reads the same node twice
            deps = [a for a in n.args if isinstance(a, fx.Node) and a.name in self.dependent]
        if key in _ADD or key in _SUB:
            self._add_or_sub(n, deps, args, kwargs, negate=key in _SUB, origin=origin)
            return
        if key in _MUL or key in _DIV:
            if len(deps) != 1:
                raise UnsupportedOperation(name, where, "a product of two input-dependent tensors is not Lipschitz")
            other = args[1] if args[0] is deps[0] else args[0]
            if key in _DIV and args[0] is not deps[0]:
                raise UnsupportedOperation(name, where, "division by an input-dependent tensor")
            c = torch.as_tensor(other, dtype=self.dtype)
            scale = 1.0 / c if key in _DIV else c
            self._diagonal(n, deps[0], scale, origin, "Divide" if key in _DIV else "Multiply")
            return
        if key in _NEG:
            self._single(n, deps, name)
            self._diagonal(n, deps[0], torch.tensor(-1.0, dtype=self.dtype), origin, "Negate")
            return
        if key in _RESHAPE:
            self._single(n, deps, name)
            shape = self._shape(n)
            op = Reshape(in_shape, shape)
            self._affine(n, deps[0], op, origin) if shape != in_shape else self._alias(n, deps[0])
            return
        if key in _PERMUTE:
            self._single(n, deps, name)
            self._affine(n, deps[0], _permutation(t, args[1:], kwargs, in_shape, name, where), origin)
            return
        if key in _CAT:
            self._cat(n, args, kwargs, deps, name, where, origin)
            return
        if key in _IDENTITY_FN:
            self._single(n, deps, name)
            training = _get(args, kwargs, 2, "training")
            if key not in ("clone", "detach") and (training is None or training):
                raise UnsupportedOperation(name, where, "dropout in training mode is random")
            self._alias(n, deps[0])
            return
        if key in _MAX_FN:
            self._single(n, deps, name)
            fn = _bind(t, args[1:], kwargs)
            k = _get(args, kwargs, 1, "kernel_size")
            s = _get(args, kwargs, 2, "stride") or k
            d = _get(args, kwargs, 4, "dilation") or 1
            if kwargs.get("return_indices", False):
                raise UnsupportedOperation(name, where, "return_indices=True")
            mult = _pool_multiplicity(k, s, d, len(in_shape) - 1)
            self._add(MaxPool(n.name, [self._ref(deps[0])], self._shape(n), origin, fn, mult))
            return
        if key in _AVG_FN or t is F.pad:
            self._single(n, deps, name)
            axes = len(in_shape) - 1  # pooling and resizing act on every axis but the channels
            if t is F.pad:
                mode = _get(args, kwargs, 2, "mode") or "constant"
                kwargs = {k: v for k, v in kwargs.items() if k != "value"}
                args = args[:3]
                label = f"Pad({mode})"
                axes = len(_get(args, kwargs, 1, "pad")) // 2
            else:
                label = name
            fn = _bind(t, args[1:], kwargs)
            device = self.values[deps[0].name].device
            self._affine(n, deps[0], separable(fn, in_shape, label, axes, self.dtype, device, where), origin)
            return
        if t in (F.linear, operator.matmul, torch.matmul, torch.mm) or key in ("matmul", "__matmul__"):
            self._matmul(n, args, kwargs, deps, name, where, origin)
            return
        if t in (F.conv1d, F.conv2d, F.conv3d):
            self._single(n, deps, name)
            if args[0] is not deps[0]:
                raise UnsupportedOperation(name, where, "the input must be the convolved tensor")
            w = args[1]
            stride, padding, dilation = (_get(args, kwargs, i, k) for i, k in ((3, "stride"), (4, "padding"), (5, "dilation")))
            nd = w.dim() - 2
            op = Conv(w, in_shape, _tup(stride or 1, nd), padding if isinstance(padding, str) else _tup(padding or 0, nd),
                      _tup(dilation or 1, nd), _get(args, kwargs, 6, "groups") or 1)
            self._affine(n, deps[0], op, origin)
            return
        if t is operator.getitem:
            self._single(n, deps, name)
            idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            if not idx or not (isinstance(idx[0], slice) and idx[0] == slice(None)) and idx[0] is not Ellipsis:
                raise UnsupportedOperation("indexing", where, "the index must keep the batch axis whole (x[:, ...])")
            op = selection(lambda z, i=args[1]: z[i], in_shape, "Select", self.dtype,
                           self.values[deps[0].name].device, where)
            self._affine(n, deps[0], op, origin)
            return
        reason = "no lipbound handler for this operation"
        if t in (F.softmax, F.log_softmax, torch.softmax) or key in ("softmax", "log_softmax"):
            reason = "remove the final softmax: lipbound bounds the logits"
        raise UnsupportedOperation(name, where, reason)

    def _single(self, n: fx.Node, deps: list[fx.Node], name: str) -> None:
        if len(deps) != 1:
            raise UnsupportedOperation(name, self._where(n), f"expected one input-dependent tensor, got {len(deps)}")

    def _alias(self, n: fx.Node, src: fx.Node) -> None:
        self.alias[n.name] = self._ref(src)

    def _diagonal(self, n: fx.Node, src: fx.Node, scale: torch.Tensor, origin: str, label: str) -> None:
        in_shape = self._shape(src)
        if tuple(torch.broadcast_shapes(scale.shape, (BATCH, *in_shape))[1:]) != in_shape:
            raise UnsupportedOperation(label, self._where(n), "the constant broadcasts the input to a larger shape")
        if scale.dim() > len(in_shape):  # drop a leading batch axis of size 1
            scale = scale.reshape(scale.shape[-len(in_shape):])
        self._affine(n, src, Diagonal(scale, in_shape, label), origin)

    def _add_or_sub(self, n, deps, args, kwargs, negate: bool, origin: str) -> None:
        where = self._where(n)
        alpha = kwargs.get("alpha", 1)
        if len(deps) == 2:
            a, b = args[0], args[1]
            if self._shape(a) != self._shape(b) or self._shape(n) != self._shape(a):
                raise UnsupportedOperation("addition", where, "the two branches must have the same shape")
            sign = -alpha if negate else alpha
            inputs = [self._ref(a), self._ref(b)]
            if sign != 1:
                scaled = f"{n.name}_scaled"
                shape = self._shape(b)
                self._add(Affine(scaled, [self._ref(b)], shape, origin,
                                 Diagonal(torch.tensor(float(sign), dtype=self.dtype), shape, "Scale"), None))
                inputs[1] = scaled
            self._add(Add(n.name, inputs, self._shape(n), origin))
            return
        if len(deps) != 1:
            raise UnsupportedOperation("addition", where, "expected one or two input-dependent tensors")
        src = deps[0]
        if self._shape(n) != self._shape(src):
            raise UnsupportedOperation("addition", where, "the constant broadcasts the input to a larger shape")
        sign = -1.0 if (negate and args[0] is not src) else 1.0
        label = "Shift" if sign == 1.0 else "Negate"
        self._affine(n, src, Diagonal(torch.tensor(sign, dtype=self.dtype), self._shape(src), label), origin)

    def _cat(self, n, args, kwargs, deps, name, where, origin) -> None:
        tensors = n.args[0] if n.args else n.kwargs["tensors"]
        axis = _get(args, kwargs, 1, "dim") or 0
        if not all(isinstance(a, fx.Node) and a.name in self.dependent for a in tensors):
            raise UnsupportedOperation(name, where, "concatenation with constant tensors")
        ndim = len(self._shape(n)) + 1
        axis = axis % ndim
        if axis == 0:
            raise UnsupportedOperation(name, where, "concatenation along the batch axis")
        self._add(Concat(n.name, [self._ref(a) for a in tensors], self._shape(n), origin, axis - 1))

    def _matmul(self, n, args, kwargs, deps, name, where, origin) -> None:
        self._single(n, deps, name)
        src = deps[0]
        in_shape = self._shape(src)
        if n.target is F.linear:
            if args[0] is not src:
                raise UnsupportedOperation(name, where, "the weight must be constant")
            w = args[1]
        elif args[0] is src:
            w = args[1].T if isinstance(args[1], torch.Tensor) and args[1].dim() == 2 else None
        else:
            w = None  # W @ x acts on the second-to-last axis
            if isinstance(args[0], torch.Tensor) and args[0].dim() == 2 and len(in_shape) >= 2:
                op = Permute(_swap_last(len(in_shape)), in_shape)
                dense = Dense(args[0], op.out_shape)
                back = Permute(_swap_last(len(in_shape)), dense.out_shape)
                self._affine(n, src, compose(compose(op, dense), back), origin)
                return
        if w is None:
            raise UnsupportedOperation(name, where, "only products with a constant 2-D matrix are supported")
        self._affine(n, src, Dense(w, in_shape), origin)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _get(args: Sequence[Any], kwargs: dict[str, Any], i: int, key: str) -> Any:
    if key in kwargs:
        return kwargs[key]
    return args[i] if len(args) > i else None


def _bind(target: Any, args: Sequence[Any], kwargs: dict[str, Any], method: bool = False) -> Callable:
    if method:
        return lambda x: getattr(x, target)(*args, **kwargs)
    return lambda x: target(x, *args, **kwargs)


def _swap_last(nd: int) -> tuple[int, ...]:
    return (*range(nd - 2), nd - 1, nd - 2)


def _permutation(target, args, kwargs, in_shape, name, where) -> Permute:
    nd = len(in_shape) + 1
    if target in (torch.transpose, "transpose"):
        d0, d1 = (a % nd for a in args[:2])
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        perm = [a % nd for a in (args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args)]
    if perm[0] != 0:
        raise UnsupportedOperation(name, where, "it moves the batch axis")
    return Permute([p - 1 for p in perm[1:]], in_shape)


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
