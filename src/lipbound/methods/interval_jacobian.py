"""The cheap certified node bound of ``neuron-bab`` (:mod:`~lipbound.methods.neuron_bab`): a backward
interval Jacobian over a ReLU MLP's slope box with the most influential free neurons' slopes
enumerated at their ends, and the influence heuristic that picks them (and the branching neuron).

**The bound.** For ReLU pre-activation bounds ``[l_i, u_i]`` each slope lies in ``{1}`` (``l_i >= 0``),
``{0}`` (``u_i <= 0``) or ``[0, 1]``; ``J(D) = W_K D_{K-1} ... D_1 W_1`` is affine in each slope, so
``||J(D)||_2`` is convex in each and its supremum over the slope box is reached at a vertex
(:mod:`~lipbound.methods.slope_box`): the ``2^k`` vertices of the ``k`` chosen neurons are enumerated,
the others kept as intervals. An interval matrix ``|J - C| <= R`` is carried from the output
(``c, r -> c d, r |d| + (|c| + r) rad(d)`` through a slope ``d`` in ``mid +- rad``, exact for
``mid, rad`` in ``{0, 1/2, 1}``; through ``W``: ``c W`` and ``(r + gamma_n |c|) |W|`` rounded up, Higham
§3.1), and ``||J||_2 <= min(||C||_2 + ||R||_F, || |C| + R ||_2)`` (:func:`.relu_boxes.norm_bound`,
with the library's margin) bounds every ``J`` in it: a **certified upper** bound of ``sup ||J(D)||_2``.
"""

from __future__ import annotations

import numpy as np
import torch

from .float_error import gamma, round_up
from .relu_boxes import norm_bound

__all__ = ["slope_bound", "influence"]


def slope_bound(weights: list[np.ndarray], pre: list[tuple[np.ndarray, np.ndarray]],
                vertex_units: int = 8) -> tuple[float, list[np.ndarray]]:
    """``(value, scores)``: ``value >= sup ||W_K D_{K-1} ... D_1 W_1||_2`` over the slope box of the
    ReLU pre-activation bounds ``pre`` (module doc), and per hidden layer the influence of each free
    neuron (0 for the others)."""
    lo = [np.where(l >= 0, 1.0, 0.0) for l, _ in pre]
    hi = [np.where(u > 0, 1.0, 0.0) for _, u in pre]
    scores = influence(weights, lo, hi)
    flat = np.concatenate(scores)
    k = int(min(vertex_units, (flat > 0).sum()))
    chosen = np.argsort(-flat, kind="stable")[:k]
    starts = np.cumsum([0] + [len(s) for s in scores])
    batch = 1 << k
    bits = ((np.arange(batch)[:, None] >> np.arange(k)) & 1).astype(np.float64)
    c = torch.from_numpy(weights[-1]).expand(batch, *weights[-1].shape).clone()
    r = torch.zeros_like(c)
    for m in reversed(range(len(pre))):
        d_lo = np.tile(lo[m], (batch, 1))
        d_hi = np.tile(hi[m], (batch, 1))
        here = (chosen >= starts[m]) & (chosen < starts[m + 1])
        idx = chosen[here] - starts[m]
        d_lo[:, idx] = d_hi[:, idx] = bits[:, here]
        dc = torch.from_numpy((d_lo + d_hi) / 2)[:, None, :]
        dr = torch.from_numpy((d_hi - d_lo) / 2)[:, None, :]  # slopes 0, 1/2 +- 1/2, 1: exact
        c, r = c * dc, r * dc.abs() + (c.abs() + r) * dr
        w = torch.from_numpy(weights[m])
        n = w.shape[0]
        c, r = c @ w, round_up((r + gamma(n) * c.abs()) @ w.abs(), 2 * n + 4)
    return float(norm_bound(c, r).max()), scores


def influence(weights: list[np.ndarray], lo: list[np.ndarray], hi: list[np.ndarray]) -> list[np.ndarray]:
    """Per hidden layer, ``||B_{:,i}|| ||F_{i,:}||`` for each free neuron ``i`` (module doc), from
    entry-wise magnitude bounds of the partial Jacobians (a heuristic, not a bound)."""
    forward, f = [], np.abs(weights[0])
    for m in range(len(lo)):
        forward.append(np.linalg.norm(f, axis=1))
        f = np.abs(weights[m + 1]) @ (hi[m][:, None] * f)
    out, b = [None] * len(lo), np.abs(weights[-1])
    for m in reversed(range(len(lo))):
        out[m] = np.where(hi[m] > lo[m], np.linalg.norm(b, axis=0) * forward[m], 0.0)
        b = (b * hi[m]) @ np.abs(weights[m])
    return out
