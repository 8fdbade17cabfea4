"""PyTorch frontend, second half: the handlers of torch functions and tensor methods (``F.relu``,
``x + y``, ``x.view(...)``, ``F.conv2d``, ``torch.cat``, ``x @ W``, ...) in an fx graph.

:class:`FunctionCalls` is a part of the frontend's builder (:mod:`lipbound.frontends.from_torch`,
which handles modules and the tracing itself): it uses the builder's bookkeeping (``_dep_args``,
``_where``, ``_shape``, ``_ref``, ``_add``, ``_affine``, ...). Anything without a handler raises
:class:`~lipbound.errors.UnsupportedOperation` naming the operation and its place.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..errors import UnsupportedOperation
from ..graph import activations
from ..graph.ir import Activation, Add, Affine, Concat, MaxPool
from ..linalg.operators import Conv, Dense, Diagonal, Permute, Reshape, compose
from ..linalg.structured import selection, separable
from .torch_modules import BATCH, _pool_multiplicity, _tup

__all__ = ["FunctionCalls"]

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
_SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_IDENTITY_FN = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, "clone", "detach"}


class FunctionCalls:
    """The builder's handlers of ``call_function`` and ``call_method`` fx nodes (module doc)."""

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
        if t in _SOFTMAX or key in ("softmax", "log_softmax"):
            self._single(n, deps, name)
            self._softmax(n, deps[0])
            return
        raise UnsupportedOperation(name, where, "no lipbound handler for this operation")

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
