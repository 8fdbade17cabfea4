"""Linear maps read exactly: a graph's operators as sparse matrices of dyadic weights.

A dense weight is read directly. A convolution, diagonal, selection, reshape or permutation is read
by applying its float64 ``matvec`` to unit vectors, which is exact: every output is ``w * 1`` plus
products with 0, one non-zero term, no rounding. A composition is kept as its stages, applied one
after the other (their product would round). Operators of unknown internals (``Function``,
``Kronecker``) are declined (:class:`~lipbound.errors.NotApplicable`). The windows of a max pooling
are read the same way, from the pooling of unit vectors. Both are cached on the operator or node.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..errors import NotApplicable
from ..graph.ir import MaxPool
from ..linalg.operators import Compose, Conv, Dense, Diagonal, LinearOperator, Permute, Reshape
from ..linalg.structured import Gather
from .dyadic import Dyadic

__all__ = ["SparseMap", "exact_stages", "pooling_windows"]


class SparseMap(NamedTuple):
    """A linear map as rows of taps: ``y_i = sum_t weight[i, t] * x[index[i, t]]``, where index
    ``in_numel`` is a padding tap (reads 0)."""

    index: np.ndarray
    weight: Dyadic
    out_shape: tuple[int, ...]

    def apply(self, h: Dyadic) -> Dyadic:
        ext = np.append(h.mant.ravel(), np.array([0], dtype=object))
        y = (self.weight.mant * ext[self.index]).sum(axis=1)
        return Dyadic(y.reshape(self.out_shape), self.weight.exp + h.exp)

    def reach(self, moving: np.ndarray) -> np.ndarray:
        ext = np.append(moving.ravel(), False)
        return ((self.weight.mant != 0) & ext[self.index]).any(axis=1).reshape(self.out_shape)


def exact_stages(op: LinearOperator) -> list[SparseMap]:
    """``op`` as exact sparse stages, applied in order, cached on the operator (module doc)."""
    if "_lipbound_exact" not in op.__dict__:
        if isinstance(op, Compose):
            op.__dict__["_lipbound_exact"] = [s for sub in op.ops for s in exact_stages(sub)]
        elif isinstance(op, Dense) and len(op.in_shape) == 1:
            w = op.weight.detach().cpu().double()
            index = np.broadcast_to(np.arange(w.shape[1]), w.shape).copy()
            op.__dict__["_lipbound_exact"] = [SparseMap(index, Dyadic.of(w), tuple(op.out_shape))]
        elif isinstance(op, (Dense, Conv, Diagonal, Gather, Reshape, Permute)):
            op.__dict__["_lipbound_exact"] = [_probed(op)]
        else:
            raise NotApplicable(f"exact evaluation cannot read the linear operator {type(op).__name__} exactly")
    return op.__dict__["_lipbound_exact"]


def _probed(op: LinearOperator, chunk: int = 256) -> SparseMap:
    """The matrix of ``op`` from its float64 ``matvec`` on unit vectors (exact: module doc)."""
    n = op.in_numel
    op64 = op.to(dtype=torch.float64)
    rows, cols, vals = [], [], []
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            eye = torch.zeros(stop - start, n, dtype=torch.float64)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            out = op64.matvec(eye.reshape(-1, *op.in_shape)).reshape(stop - start, -1)
            c, r = torch.nonzero(out, as_tuple=True)
            rows.append(r.numpy()), cols.append((c + start).numpy()), vals.append(out[c, r].numpy())
    return _rows_of_taps(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), n, tuple(op.out_shape))


def _rows_of_taps(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, out_shape: tuple[int, ...]) -> SparseMap:
    """Coordinates ``(row, col, value)`` as a :class:`SparseMap` (padding taps read index ``n``)."""
    out_numel = math.prod(out_shape)
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=out_numel)
    taps = max(1, int(counts.max()) if counts.size else 1)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    index = np.full((out_numel, taps), n, dtype=np.int64)
    weight = np.zeros((out_numel, taps))
    index[rows, slot], weight[rows, slot] = cols, vals
    return SparseMap(index, Dyadic.of(weight), out_shape)


def pooling_windows(node: MaxPool, in_shape: tuple[int, ...], chunk: int = 256) -> np.ndarray:
    """The inputs of each max-pooling window, ``(out_numel, taps)`` (padding taps read index
    ``in_numel``), from the pooling of unit vectors (an input is in a window iff its 1 comes out)."""
    if "_lipbound_windows" not in node.__dict__:
        n = math.prod(in_shape)
        rows, cols = [], []
        with torch.no_grad():
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                eye = torch.zeros(stop - start, n, dtype=torch.float64)
                eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                out = node.evaluate(eye.reshape(-1, *in_shape)).reshape(stop - start, -1)
                c, r = torch.nonzero(out == 1.0, as_tuple=True)
                rows.append(r.numpy()), cols.append((c + start).numpy())
        r, c = np.concatenate(rows), np.concatenate(cols)
        node.__dict__["_lipbound_windows"] = _rows_of_taps(r, c, np.ones(len(r)), n, tuple(node.shape)).index
    return node.__dict__["_lipbound_windows"]
