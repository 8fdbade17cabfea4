"""A certified bound of ``sup ||W_k D_{k-1} ... D_1 W_1||_2`` over the per-neuron slope box of a
localized graph, by interval Jacobians: cheap when the input is small, and exact (up to rounding)
when every neuron is stable.

**What it bounds.** For a convex region ``X`` and a graph localized on it, each neuron's input stays
in ``[l_i, u_i]`` along the segment between any ``x, y`` in ``X``, so ``s(z_x) - s(z_y) = d_i (z_x - z_y)``
with a secant slope ``d_i`` in the neuron's slope interval ``[lo_i, hi_i]``
(:meth:`~lipbound.graph.ir.Activation.slope_bounds`), and ``f(x) - f(y) = J(D) (x - y)`` with
``J(D) = W_k D_{k-1} ... D_1 W_1`` (sums and concatenations of such products on a DAG). So
``S = sup_D ||J(D)||_2`` over the slope box is a **certified upper bound** of the constant on ``X``.

**Interval Jacobian.** Forward through the graph we carry, for every input direction ``e_j``, a
centre ``C`` and a radius ``R >= 0`` (element-wise) with ``|J_node(D) e_j - C e_j| <= R e_j`` for every
admissible ``D``: affine ``A``: ``(A C, |A| R)``; activation with ``d in [m - r, m + r]``:
``(m C, |m| R + r (|C| + R))``; add: sums; concat: concatenation; max pooling: its output's secant
change is a convex combination of its window's, so the hull of the window's intervals
``[C - R, C + R]`` encloses it. Every step adds a rigorous bound of its float64 rounding error
(:func:`.float_error.linear_error`, :func:`.float_error.round_up`). At the output, for ``J`` with ``|J - C| <= R``:
``||J||_2 <= ||C||_2 + ||R||_F`` and ``||J||_2 <= || |C| + R ||_2`` (``|J| <= |C| + R`` entry-wise and
the spectral norm is monotone on non-negative matrices); the smaller is kept. With every neuron
stable, ``R`` holds rounding errors only and the bound is the Jacobian's norm.

**Vertex enumeration.** ``D -> ||J(D)||`` is convex in each ``d_i`` separately (``J`` is affine in
``d_i``), and so is a supremum of such functions over the other slopes. Hence the supremum over
the box is reached with each chosen ``d_i`` at ``lo_i`` or ``hi_i``: for a set ``V`` of unstable
neurons, ``S = max over the 2^|V|`` vertex choices of the supremum over the others, each bounded by
the interval Jacobian above (one batch). When ``V`` holds every unstable neuron, the value is
``S`` itself (up to rounding): the best any bound over the slope box can give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import NotApplicable
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool
from ..graph.walk import GraphInterpreter
from ..linalg.spectral import CERTIFIED_RTOL
from .float_error import UNIT_ROUNDOFF, gamma, linear_error, round_up

__all__ = ["SlopeBoxBound", "slope_box_bound"]

_Interval = tuple[torch.Tensor, torch.Tensor]  # (C, R): (B, n_in, *node shape) each


@dataclass
class SlopeBoxBound:
    """``value`` >= ``sup_D ||J(D)||_2`` over the slope box (module doc); ``tight``: every unstable
    neuron was enumerated, so ``value`` is that supremum up to rounding; ``unstable``: the count of
    unstable neurons; ``vertex``: the slopes of the enumerated neurons at the largest bound;
    ``smear``: per input element ``d`` (input shape), ``sum_i max |dz_i/dx_d| / (u_i - l_i)`` over the
    unstable neurons ``i`` (their inputs ``z_i`` in ``[l_i, u_i]``), from the interval Jacobian: how
    much moving along ``x_d`` unsettles them (a branching heuristic, not a bound)."""

    value: float
    tight: bool
    unstable: int
    vertex: dict[str, torch.Tensor]
    smear: torch.Tensor


def slope_box_bound(graph: Graph, vertex_units: int = 10) -> SlopeBoxBound:
    """Bound ``sup ||J(D)||_2`` over ``graph``'s slope box (module doc), enumerating the vertices of
    the first ``vertex_units`` unstable neurons (topological order) in one batch of ``2^k``.

    Raises:
        NotApplicable: when the input has more than 4096 elements (one Jacobian column each).
    """
    n_in = math.prod(graph.input_shape)
    if n_in > 4096:
        raise NotApplicable(f"slope-box bound: {n_in} inputs, one Jacobian column each, is too many")
    g = graph if graph.dtype == torch.float64 and graph.device.type == "cpu" else graph.to(device="cpu", dtype=torch.float64)
    unstable = g.unstable_neurons()
    chosen = unstable[:vertex_units]
    k = len(chosen)
    # bit b of vertex v picks hi (1) or lo (0) for chosen neuron b
    bits = (torch.arange(2 ** k)[:, None] >> torch.arange(k)[None, :]) & 1
    fixed: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for b, (name, i) in enumerate(chosen):
        fixed.setdefault(name, []).append((i, bits[:, b].bool()))
    walk = _IntervalJacobian(fixed, 2 ** k)
    out_c, out_r = walk.output(g)
    c = out_c.reshape(2 ** k, n_in, -1)
    r = out_r.reshape(2 ** k, n_in, -1)
    m = c.shape[-1] * n_in
    spread = torch.linalg.matrix_norm(c, ord=2) * (1 + CERTIFIED_RTOL) + round_up(r.flatten(1).norm(dim=1), m)
    joint = torch.linalg.matrix_norm(round_up(c.abs() + r, 2), ord=2) * (1 + CERTIFIED_RTOL)
    values = torch.minimum(spread, joint)
    best = int(values.argmax())
    vertex = {}
    for name, picks in fixed.items():
        lo, hi = g.nodes[name].slope_bounds()
        vertex[name] = torch.stack([torch.where(p[best], hi.flatten()[i], lo.flatten()[i]) for i, p in picks])
    return SlopeBoxBound(float(values[best]), k == len(unstable), len(unstable), vertex,
                         walk.smear.reshape(graph.input_shape) if walk.smear.numel() else
                         torch.zeros(graph.input_shape, dtype=torch.float64))


class _IntervalJacobian(GraphInterpreter[_Interval]):
    """The forward visits of the interval Jacobian (module doc), on a batch of vertex choices."""

    name = "the slope-box bound"

    def __init__(self, fixed: dict[str, list[tuple[int, torch.Tensor]]], batch: int) -> None:
        self.fixed, self.batch = fixed, batch
        self.smear = torch.zeros(0)

    def visit_input(self, node: Input) -> _Interval:
        n = math.prod(node.shape)
        eye = torch.eye(n, dtype=torch.float64).reshape(1, n, *node.shape)
        return eye, torch.zeros_like(eye)

    def visit_affine(self, node: Affine, h: _Interval) -> _Interval:
        c, r = h
        c, r = torch.broadcast_tensors(c, r)
        lead = c.shape[:2]
        y, e = linear_error(node.op, c.reshape(-1, *c.shape[2:]), r.reshape(-1, *r.shape[2:]))
        return y.reshape(*lead, *y.shape[1:]), e.reshape(*lead, *e.shape[1:])

    def visit_activation(self, node: Activation, h: _Interval) -> _Interval:
        c, r = h
        lo, hi = node.slope_bounds()
        if node.pre is not None:
            l, u = node.pre
            moving = (lo != hi).flatten() & (u > l).flatten()
            width = (u - l).flatten()[moving].to(torch.float64)
            reach = (c.abs() + r).flatten(2)[:, :, moving].amax(dim=0)  # (n_in, unstable)
            smear = (reach / width).sum(dim=1)
            self.smear = smear if not self.smear.numel() else self.smear + smear
        lo, hi = lo.flatten().repeat(self.batch, 1), hi.flatten().repeat(self.batch, 1)
        for i, pick in self.fixed.get(node.name, []):
            value = torch.where(pick, hi[:, i], lo[:, i])
            lo[:, i], hi[:, i] = value, value
        mid = (lo + hi) / 2
        rad = round_up(torch.maximum(hi - mid, mid - lo), 1)
        shape = (self.batch, 1, *node.shape)
        mid, rad = mid.reshape(shape), rad.reshape(shape)
        y = mid * c
        e = round_up(mid.abs() * r + rad * (c.abs() + r) + UNIT_ROUNDOFF * y.abs(), 4)
        return y, e

    def visit_maxpool(self, node: MaxPool, h: _Interval) -> _Interval:
        c, r = torch.broadcast_tensors(*h)
        lead = c.shape[:2]
        flat = (-1, *c.shape[2:])
        top = node.evaluate(round_up(c + r, 1).reshape(flat))  # (c + r) rounded up, c - r rounded down
        bottom = -node.evaluate(round_up(r - c, 1).reshape(flat))
        mid = (top + bottom) / 2
        rad = round_up(torch.maximum(top - mid, mid - bottom), 1)
        return mid.reshape(*lead, *mid.shape[1:]), rad.reshape(*lead, *rad.shape[1:])

    def visit_add(self, node: Add, *hs: _Interval) -> _Interval:
        k = len(hs)
        y = sum(c for c, _ in hs)
        return y, round_up(sum(r for _, r in hs) + gamma(k) * sum(c.abs() for c, _ in hs), k)

    def visit_concat(self, node: Concat, *hs: _Interval) -> _Interval:
        lead = torch.broadcast_shapes(*[t.shape[:2] for pair in hs for t in pair])  # (vertex batch, input)

        def cat(ts):
            parts = [t.expand(*lead, *t.shape[2:]).reshape(-1, *t.shape[2:]) for t in ts]
            return node.evaluate(*parts).reshape(*lead, *node.shape)
        return cat([c for c, _ in hs]), cat([r for _, r in hs])
