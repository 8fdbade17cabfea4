"""The cheap certified node bound of ``neuron-bab`` (:mod:`~lipbound.methods.neuron_bab`): a backward
interval Jacobian over a ReLU MLP's slope box with the most influential free neurons' slopes
enumerated at their ends, and the influence heuristic that picks them (and the branching neuron).

**The bound.** For ReLU pre-activation bounds ``[l_i, u_i]`` each slope lies in ``{1}`` (``l_i >= 0``),
``{0}`` (``u_i <= 0``) or ``[0, 1]``; ``J(D) = W_K D_{K-1} ... D_1 W_1`` is affine in each slope, so
``||J(D)||_2`` is convex in each and its supremum over the slope box is reached at a vertex
(:mod:`~lipbound.methods.slope_box`): the ``2^k`` vertices of the ``k`` chosen neurons are enumerated,
the others kept as intervals ``1/2 +- 1/2``. An interval matrix ``|J - C| <= R`` is carried from the
output by the backward enclosure of :mod:`~lipbound.methods.relu_boxes` (the one ``local-bab`` uses):
through the slopes :func:`~lipbound.methods.relu_boxes.times_slopes`, through each layer's exact weights
``W*`` :func:`~lipbound.methods.relu_boxes.times_weights` (the float64 matrix ``W`` the net works with
and a bound ``E >= |W* - W|``: :func:`weight_enclosures`), every radius rounded up; then
``||J||_2 <= min(||C||_2 + ||R||_F, || |C| + R ||_2)`` (:func:`~lipbound.methods.relu_boxes.norm_bound`,
with the library's margin) bounds every ``J`` in it: a **certified upper** bound of
``sup ||J(D)||_2`` for the exact network.
"""

from __future__ import annotations

import numpy as np
import torch

from ..graph.ir import Affine, Graph, Input
from ..linalg.operators import Dense
from .float_error import round_up
from .relu_boxes import Layer, norm_bound, operator_enclosure, times_slopes, times_weights

__all__ = ["slope_bound", "influence", "weight_enclosures"]


def weight_enclosures(graph: Graph, weights: list[np.ndarray]) -> list[Layer]:
    """Per layer of :func:`~lipbound.methods.piecewise.mlp_layers` ``(graph)`` (whose float64 matrices
    are ``weights``), a :class:`~lipbound.methods.relu_boxes.Layer` with ``W = weights[k]`` and
    ``E >= |W* - W|``, ``W*`` the exact map of the graph's (fused) affine node.

    ``E = 0`` where ``W`` is provably exact: the identity that ``mlp_layers`` puts where no affine node
    is, and a dense node on a flat input (``Dense.to_dense`` returns its weight tensor, whose
    conversion to float64 is exact). Any other node (a composition ``graph.fused()`` made, e.g. a
    normalisation folded into the first dense layer, or a convolution) was materialised by float
    operations: its matrix is recomputed on the identity with its error bound ``e >= |W* - W'|``
    (:func:`~lipbound.methods.relu_boxes.operator_enclosure`), and ``E = e + |W' - W|`` rounded up.
    Biases are not needed here."""
    pending, ops = None, []
    for node in graph.fused():  # the pairing of mlp_layers: an activation takes the affine node before it
        if isinstance(node, Input):
            continue
        if isinstance(node, Affine):
            pending = node.op
            continue
        ops.append(pending)
        pending = None
    ops.append(pending)
    out = []
    for op, w in zip(ops, weights):
        W = torch.from_numpy(w)
        if op is None or (isinstance(op, Dense) and len(op.in_shape) == 1):
            E = torch.zeros_like(W)
        else:
            W_op, E_op = operator_enclosure(op.to(dtype=torch.float64))
            E = round_up(E_op + (W_op - W).abs(), 2)
        no_bias = torch.zeros(len(W), dtype=W.dtype)
        out.append(Layer(W, E, no_bias, no_bias))
    return out


def slope_bound(layers: list[Layer], pre: list[tuple[np.ndarray, np.ndarray]],
                vertex_units: int = 8) -> tuple[float, list[np.ndarray]]:
    """``(value, scores)``: ``value >= sup ||W*_K D_{K-1} ... D_1 W*_1||_2`` over the slope box of the
    ReLU pre-activation bounds ``pre`` (module doc; ``layers``: :func:`weight_enclosures`), and per
    hidden layer the influence of each free neuron (0 for the others)."""
    lo = [np.where(l >= 0, 1.0, 0.0) for l, _ in pre]
    hi = [np.where(u > 0, 1.0, 0.0) for _, u in pre]
    scores = influence([layer.W.numpy() for layer in layers], lo, hi)
    flat = np.concatenate(scores)
    k = int(min(vertex_units, (flat > 0).sum()))
    chosen = np.argsort(-flat, kind="stable")[:k]
    starts = np.cumsum([0] + [len(s) for s in scores])
    batch = 1 << k
    bits = ((np.arange(batch)[:, None] >> np.arange(k)) & 1).astype(np.float64)
    last = layers[-1]
    C, R = last.W.expand(batch, *last.W.shape), last.E.expand(batch, *last.E.shape)
    for m in reversed(range(len(pre))):
        d_lo = np.tile(lo[m], (batch, 1))
        d_hi = np.tile(hi[m], (batch, 1))
        here = (chosen >= starts[m]) & (chosen < starts[m + 1])
        idx = chosen[here] - starts[m]
        d_lo[:, idx] = d_hi[:, idx] = bits[:, here]
        mid = torch.from_numpy((d_lo + d_hi) / 2)[:, None, :]  # slopes 0, 1/2 +- 1/2, 1: exact
        rad = torch.from_numpy((d_hi - d_lo) / 2)[:, None, :]
        C, R = times_weights(layers[m], *times_slopes(C, R, mid, rad))
    return float(norm_bound(C, R).max()), scores


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
