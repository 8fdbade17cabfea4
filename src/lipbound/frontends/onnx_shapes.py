"""ONNX shape operators: Concat (with torch.onnx's circular padding), Flatten, Reshape, Squeeze,
Unsqueeze, Transpose, and the selections Slice, Split and Gather with constant indices (a mixin of
the ONNX builder, :mod:`lipbound.frontends.onnx_builder`).

A selection ``y_i = x_{index_i}`` is linear; as a :class:`~lipbound.linalg.structured.Gather` its
norm is exact, ``sqrt(most reads of one input)`` (1 for Slice and Split, which read each input at
most once per output; Gather may repeat an index)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..errors import InvalidInput, UnsupportedOperation
from ..linalg.operators import Permute, Reshape
from ..linalg.structured import selection
from ..graph.ir import Concat
from .onnx_common import where as _where


class ShapeOps:
    """Shape handlers (``_op_<OpType>``) of the ONNX builder."""

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

    def _data_axis(self, node, axis: int) -> int:
        """The per-sample axis of the ONNX ``axis`` of the node's first input (never the batch axis)."""
        src = self.dep[node.input[0]]
        rank = len(src.onnx_shape)
        if not -rank <= axis < rank:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: axis {axis} out of range for rank {rank}")
        axis %= rank
        if src.batched and axis == 0:
            raise UnsupportedOperation(node.op_type, _where(node), "it selects along the batch axis")
        return axis - (1 if src.batched else 0)

    def _op_Split(self, node):
        """Each output is the slice ``[start, start + size)`` along ``axis``; the sizes come from
        ``onnx.reference`` (``split`` input, ``num_outputs`` of opset 18, or equal parts)."""
        src = self.dep[node.input[0]]
        axis = self._data_axis(node, int(self._attrs(node).get("axis", 0)))
        feeds = {node.input[0]: np.zeros(src.onnx_shape, np.float32)}
        if len(node.input) > 1 and node.input[1]:
            feeds[node.input[1]] = self._const(node.input[1], node, "split")
        sizes = [int(v.shape[axis + (1 if src.batched else 0)]) for v in self._reference(node, feeds)]
        start = 0
        for out, size in zip(node.output, sizes):
            if out:
                def part(z, begin=start, n=size):
                    return z.narrow(axis + 1, begin, n)
                self._affine(node, src, selection(part, src.shape, "Split", self.dtype, where=_where(node)), out=out)
            start += size

    def _op_Gather(self, node):
        """``y = x.take(indices, axis)`` with constant indices (negative ones count from the end):
        the output has the indices' axes in place of ``axis``."""
        indices = self._const(node.input[1], node, "indices")  # refuses input-dependent indices
        src = self.dep[node.input[0]]
        axis = self._data_axis(node, int(self._attrs(node).get("axis", 0)))
        n = src.shape[axis]
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu" or indices.size and not bool(((indices >= -n) & (indices < n)).all()):
            raise InvalidInput(f"Gather at {_where(node)}: indices must be integers in [-{n}, {n}) for an axis of "
                               f"size {n}")
        index = torch.as_tensor(indices % n, dtype=torch.long)

        def take(z):
            picked = z.index_select(axis + 1, index.reshape(-1).to(z.device))
            return picked.reshape(*z.shape[:axis + 1], *index.shape, *z.shape[axis + 2:])
        self._affine(node, src, selection(take, src.shape, "Gather", self.dtype, where=_where(node)))
