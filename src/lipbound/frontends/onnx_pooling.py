"""ONNX pooling, reductions and padding: MaxPool, GlobalMaxPool, AveragePool, GlobalAveragePool,
ReduceMean, ReduceSum, Pad (a mixin of the ONNX builder, :mod:`lipbound.frontends.onnx_builder`)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInput, UnsupportedOperation
from ..linalg.operators import LinearOperator, Reshape, compose
from ..linalg.structured import Kronecker, separable
from ..graph.ir import MaxPool
from .torch_modules import _pool_multiplicity
from .onnx_common import OnnxTensor as _Tensor, Shape, pads as _pads, torch_pads as _torch_pads, where as _where


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




class PoolingOps:
    """Pooling and padding handlers (``_op_<OpType>``) of the ONNX builder."""

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

    def _reduce(self, node, kind: str) -> None:
        """ReduceMean / ReduceSum over constant axes that leave the batch axis alone: a linear map.

        Over the reduced axes ``R`` the map is ``y = c sum_{i in R} x_i`` with ``c = 1 / prod_R n``
        (mean) or 1 (sum), i.e. the Kronecker product of ``c_k 1^T`` on each reduced axis of size
        ``n_k`` and identities on the others. :func:`~lipbound.linalg.structured.separable` reads
        those factors off the map and checks them, so the norm is exact: ``prod_R sqrt(n_k)`` for
        a sum, ``prod_R 1 / sqrt(n_k)`` for a mean (a global average pool over ``H x W``:
        ``1 / sqrt(H W)``). ``keepdims=0`` adds a reshape (norm 1). The axes come from the
        attribute (opset < 18) or the second input (opset 18); no axes reduce every axis, unless
        ``noop_with_empty_axes`` makes the node the identity.
        """
        src = self.dep[node.input[0]]
        a = self._attrs(node)
        axes = self._const(node.input[1], node, "axes") if len(node.input) > 1 and node.input[1] else a.get("axes")
        axes = [] if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
        rank = len(src.onnx_shape)
        if not axes and a.get("noop_with_empty_axes", 0):
            self._alias(node.output[0], src)
            return
        if any(not -rank <= ax < rank for ax in axes):
            raise InvalidInput(f"{node.op_type} at {_where(node)}: axes {axes} out of range for rank {rank}")
        axes = sorted({ax % rank for ax in axes}) if axes else list(range(rank))
        if src.batched:
            if 0 in axes:
                raise UnsupportedOperation(node.op_type, _where(node), "it reduces over the batch axis, "
                                           "mixing the samples")
            axes = [ax - 1 for ax in axes]
        dims = tuple(ax + 1 for ax in axes)  # on the batch of the recording and the probes
        fn = (lambda x: x.mean(dim=dims, keepdim=True)) if kind == "mean" else (lambda x: x.sum(dim=dims, keepdim=True))
        op: LinearOperator = separable(fn, src.shape, node.op_type, len(src.shape) - axes[0], self.dtype,
                                       where=_where(node))
        if not a.get("keepdims", 1):
            kept = tuple(n for i, n in enumerate(src.shape) if i not in axes)
            if not kept:
                raise UnsupportedOperation(node.op_type, _where(node), "it reduces each sample to a scalar "
                                           "without an axis; keep at least one axis (keepdims=1)")
            op = compose(op, Reshape(op.out_shape, kept))
        self._affine(node, src, op)

    def _op_ReduceMean(self, node):
        self._reduce(node, "mean")

    def _op_ReduceSum(self, node):
        self._reduce(node, "sum")

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
