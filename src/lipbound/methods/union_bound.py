"""The Lipschitz constant (L2 -> L2) on a **union of boxes** from bounds on its parts, without
bounding the hull when the parts lie apart (DESIGN §7: a union is not convex).

Let ``X = A_1 u ... u A_P`` (boxes) and ``L_X = sup over x != y in X of ||f(x) - f(y)|| / ||x - y||``.

**Upper bound.** Group the parts into clusters ``C_1, ..., C_Q`` (a partition of the parts) and let
``H_q`` be the hull of cluster ``q`` (the smallest box holding its parts: convex) with a certified
bound ``U_q >= L_{H_q}`` (for a one-part cluster, the part's own bound). For two clusters at
positive distance, every sub-box ``a`` of a part ``A_i`` of one and ``b`` of a part ``A_j`` of the
other, with float centres ``c_a in a``, ``c_b in b`` and radii ``R_a >= max over x in a of ||x - c_a||``,
and ``x in a``, ``y in b``::

    ||f(x) - f(y)|| <= ||f(x) - f(c_a)|| + ||f(c_a) - f(c_b)|| + ||f(c_b) - f(y)||
                    <= U_i R_a + ||f(c_a) - f(c_b)|| + U_j R_b               (x, c_a in the convex A_i)

and ``||x - y|| >= dist(a, b) > 0``, so ``||f(x) - f(y)|| / ||x - y|| <= K(a, b) := (U_i R_a +
||f(c_a) - f(c_b)|| + U_j R_b) / dist(a, b)``. Every pair ``x != y`` of ``X`` has both points in one
cluster's hull (then the quotient is at most ``U_q``) or in two clusters (then, with the sub-boxes
covering each part, at most the largest ``K``), hence

    ``L_X <= max(max_q U_q, max over sub-box pairs across clusters of K(a, b))``,

a **certified upper bound** for any clustering and any cover of the parts by sub-boxes. Parts at
distance 0 (touching or overlapping) start in one cluster. The cross bound ``K`` is refined by
bisecting, in the pair that attains it, the sub-box with the larger ``U R`` along its widest axis
(``R`` halves in the limit; a work cap ``max_boxes`` keeps it deterministic), until it is at most
the clusters' bound. While it stays above it, the two clusters of the worst pair are merged (their
hull bounded anew). Each clustering tried gives a valid bound; the least is kept. The single
cluster holding every part is the hull of the union (today's bound, the last resort).

Rounding: ``f(c)`` is enclosed in float64 with a rigorous error bound
(:func:`~lipbound.methods.rounding.enclose`); norms, products and sums are rounded up, the box
distance down (:func:`~lipbound.methods.float_error.round_up`: relative ``2 gamma_{n+4}``).

**Lower bound.** A witnessed lower bound of ``L_X`` needs a witness in the union: every part's
(a part is a subset of the union) and a hull's only when its witness re-checks in the union
(:meth:`~lipbound.methods.witness.Witness.recheck` with the :class:`~lipbound.methods.region.BoxUnion`:
a pair with both points in the union, or a Jacobian witness at a point of some part, moving only
that part's free inputs). The hull's own lower bound may exceed ``L_X`` (its witness may lie
between the parts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import UnsupportedOperation
from ..graph.ir import Graph
from .region import Box
from .float_error import UNIT_ROUNDOFF, gamma, round_up
from .rounding import enclose

__all__ = ["UnionUpper", "distinct_parts", "box_distance", "touching_clusters", "cross_bound", "union_upper"]


def distinct_parts(parts: Sequence[Box]) -> list[int]:
    """For each part, the index of the first part identical to it (same ``low`` and ``high``):
    identical boxes are one part (ACAS Xu's properties 1 and 2 share their box)."""
    first: list[int] = []
    for i, p in enumerate(parts):
        first.append(next(j for j in range(i + 1) if torch.equal(parts[j].low, p.low) and torch.equal(parts[j].high, p.high)))
    return first


def box_distance(a_low: torch.Tensor, a_high: torch.Tensor, b_low: torch.Tensor, b_high: torch.Tensor) -> torch.Tensor:
    """Lower bounds of the L2 distances between the boxes ``a`` and ``b`` (batches ``(B, d)``,
    broadcast): per coordinate the gap ``max(0, l_b - u_a, l_a - u_b)``, each subtraction and the
    norm rounded down (0 where the boxes touch or overlap)."""
    gap = torch.maximum(b_low - a_high, a_low - b_high).clamp_min(0) * (1 - UNIT_ROUNDOFF)
    d = gap.shape[-1]
    return gap.norm(dim=-1) * (1 - 2 * gamma(d + 4))


def touching_clusters(parts: Sequence[Box]) -> list[list[int]]:
    """The parts grouped by the transitive closure of "at distance 0" (touching or overlapping), in
    order of their first part."""
    n = len(parts)
    root = list(range(n))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i
    for i in range(n):
        for j in range(i + 1, n):
            a, b = parts[i], parts[j]
            if float(box_distance(a.low.flatten(), a.high.flatten(), b.low.flatten(), b.high.flatten())) <= 0:
                root[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


@dataclass
class Cross:
    """The largest cross-cluster bound reached (``value``; 0 with one cluster), the two parts whose
    sub-boxes attain it (``pair``), the sub-boxes used and why the refinement stopped."""

    value: float
    pair: tuple[int, int] | None
    boxes: int
    stopped: str


class _SubBoxes:
    """Sub-boxes of the parts (flat, float64) with their centres' radii and the enclosure of ``f``
    at the centres."""

    def __init__(self, graph: Graph, parts: Sequence[Box], uppers: Sequence[float]) -> None:
        self.graph, self.uppers = graph, torch.tensor(list(uppers), dtype=torch.float64)
        self.low = torch.stack([p.low.flatten() for p in parts]).to(torch.float64)
        self.high = torch.stack([p.high.flatten() for p in parts]).to(torch.float64)
        self.part = torch.arange(len(parts))
        self.radius, self.out, self.err = self._measure(self.low, self.high)

    def _measure(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Radii (rounded up) about the float centres, and the enclosure (values, error bounds) of
        ``f`` at the centres, of the boxes ``[low, high]``."""
        c = torch.minimum(torch.maximum((low + high) / 2, low), high)
        reach = torch.maximum(c - low, high - c) * (1 + UNIT_ROUNDOFF)  # each subtraction rounded up
        enc = enclose(self.graph, c.reshape(len(c), *self.graph.input_shape))
        out = self.graph.output
        return round_up(reach.norm(dim=1), reach.shape[1]), enc.values[out].flatten(1), enc.errors[out].flatten(1)

    def split(self, k: int) -> None:
        """Bisect sub-box ``k`` along its widest axis: row ``k`` becomes its first half, the second
        half is appended."""
        axis = int((self.high[k] - self.low[k]).argmax())
        mid = (self.low[k, axis] + self.high[k, axis]) / 2
        low, high = self.low[k].repeat(2, 1), self.high[k].repeat(2, 1)
        high[0, axis], low[1, axis] = mid, mid
        radius, out, err = self._measure(low, high)
        self.low[k], self.high[k] = low[0], high[0]
        self.radius[k], self.out[k], self.err[k] = radius[0], out[0], err[0]
        self.low, self.high = torch.cat([self.low, low[1:]]), torch.cat([self.high, high[1:]])
        self.part = torch.cat([self.part, self.part[k:k + 1]])
        self.radius, self.out, self.err = (torch.cat([t, n[1:]]) for t, n in ((self.radius, radius), (self.out, out), (self.err, err)))

    def pair_bounds(self, label: torch.Tensor) -> torch.Tensor:
        """``K(a, b)`` for every pair of sub-boxes in different clusters (``label``: cluster per part),
        ``-inf`` for pairs in one cluster (module doc; rounded up)."""
        m = self.out.shape[1]
        diff = round_up((self.out[:, None] - self.out[None]).abs() + self.err[:, None] + self.err[None], 3)
        centres = round_up(diff.norm(dim=2), m)
        spread = round_up(self.uppers[self.part] * self.radius, 1)
        num = round_up(centres + spread[:, None] + spread[None], 3)
        dist = box_distance(self.low[:, None], self.high[:, None], self.low[None], self.high[None])
        value = torch.where(dist > 0, num / dist * (1 + 2 * UNIT_ROUNDOFF), torch.full_like(num, math.inf))
        across = label[self.part][:, None] != label[self.part][None]
        return torch.where(across, value, torch.full_like(value, -math.inf))


def cross_bound(graph: Graph, parts: Sequence[Box], uppers: Sequence[float], label: Sequence[int],
                target: float, max_boxes: int = 256) -> Cross:
    """The largest ``K(a, b)`` over sub-box pairs across clusters (``label[i]``: part ``i``'s
    cluster; ``uppers[i]``: its certified bound), refined by bisection (module doc) until it is at
    most ``target`` or ``max_boxes`` sub-boxes are used. ``inf`` when ``f`` cannot be enclosed
    (a node kind the rounding analysis does not know)."""
    labels = torch.tensor(list(label))
    if len(set(label)) < 2:
        return Cross(0.0, None, len(parts), "one cluster")
    try:
        subs = _SubBoxes(graph.to(device="cpu", dtype=torch.float64), parts, uppers)
    except UnsupportedOperation:
        return Cross(math.inf, None, len(parts), "f not enclosed")
    while True:
        bounds = subs.pair_bounds(labels)
        flat = int(bounds.argmax())
        a, b = divmod(flat, bounds.shape[1])
        value = float(bounds[a, b])
        pair = (int(subs.part[a]), int(subs.part[b]))
        if value <= target or not math.isfinite(value):
            return Cross(value, pair, len(subs.low), "target" if value <= target else "boxes touch")
        if len(subs.low) >= max_boxes:
            return Cross(value, pair, len(subs.low), "work")
        spread = subs.uppers[subs.part] * subs.radius
        subs.split(a if spread[a] >= spread[b] else b)


@dataclass
class UnionUpper:
    """The least bound over the clusterings tried (module doc): ``upper``; ``clusters`` (part
    indices) and ``cross`` of the clustering that gave it; ``tried``: one ``(clusters' bound,
    cross bound)`` per clustering."""

    upper: float
    clusters: list[list[int]]
    cluster_uppers: list[float]
    cross: Cross
    tried: list[tuple[float, float]] = field(default_factory=list)


def union_upper(graph: Graph, parts: Sequence[Box], part_uppers: Sequence[float],
                hull_upper: Callable[[list[int]], float], max_boxes: int = 256,
                can_merge: Callable[[], bool] = lambda: True) -> UnionUpper:
    """A certified upper bound of the constant on the union of the boxes ``parts`` (module doc)
    from the parts' certified bounds ``part_uppers`` and ``hull_upper(indices)``, a certified bound
    on the hull of those parts (called for every cluster of two parts or more). Clusters start
    from the parts at distance 0; while the cross bound exceeds the clusters' bound and
    ``can_merge()``, the two clusters of the worst pair are merged."""
    clusters = touching_clusters(parts)
    bounds = [part_uppers[c[0]] if len(c) == 1 else hull_upper(c) for c in clusters]
    best: UnionUpper | None = None
    tried = []
    while True:
        label = [0] * len(parts)
        for q, c in enumerate(clusters):
            for i in c:
                label[i] = q
        inner = max(bounds)
        cross = cross_bound(graph, parts, part_uppers, label, inner, max_boxes)
        value = max(inner, cross.value)
        tried.append((inner, cross.value))
        if best is None or value < best.upper:
            best = UnionUpper(value, [list(c) for c in clusters], list(bounds), cross)
        if cross.value <= inner or cross.pair is None or not can_merge():
            break
        qa, qb = sorted({label[cross.pair[0]], label[cross.pair[1]]})
        merged = sorted(clusters[qa] + clusters[qb])
        clusters = [c for q, c in enumerate(clusters) if q not in (qa, qb)] + [merged]
        bounds = [b for q, b in enumerate(bounds) if q not in (qa, qb)] + [hull_upper(merged)]
    best.tried = tried
    return best
