"""The search of ``local-bab`` on a ReLU chain (:func:`.relu_boxes.relu_chain`): best first, in
batches of parts bounded at once.

Each round takes up to ``batch`` open parts with the largest upper bounds (each above
``(1 + tol)`` times the best witnessed lower bound: the others can no longer widen the bracket),
splits each in two along the input axis with the largest ``width * smear``
(:class:`.relu_boxes.BoxBounds`), and bounds all the halves in one batched pass
(:func:`.relu_boxes.bound_boxes`). A half keeps its parent's bound when its own is larger (a part
of a part: the parent's bound holds on it too). A part taken from the top for the first time is
bounded again, tighter, and put back; only a part so bound (or one with too many unstable
neurons to bound again) is split. With at most ``full_units``
unstable neurons: all its ``2^k`` slope vertices enumerated (the supremum of its slope box,
:func:`.relu_boxes.bound_boxes`); with more: the zonotope Jacobian
(:func:`.relu_zonotope.zonotope_bound`, 4-6x below the interval Jacobian on ACAS Xu parts with
30-40 unstable neurons, ~3x its cost), the least of it and the interval bound kept. Both are
spent on the parts at the top only, and the zonotope only on parts with at most ``zonotope_units``
unstable neurons: above (~150 on ACAS Xu 3_3 props 1-2), it gains only 0.35-0.5x of the interval
bound and its cost halves the parts searched, so such a part is split at once. The first ``pattern_parts``
of the round's parts (the largest bounds) with at most ``pattern_units`` unstable neurons also get
the pattern tree (:func:`.relu_patterns.pattern_bound`: the slope combinations no point of the part
has are dropped), seeded with ``(1 + tol)`` times the lower end, so a part it bounds below that is
done; the least bound is kept. On 400 top parts of ACAS Xu 2_1 prop 1 (13 unstable neurons at the
median, 9000 parts into the search, bounds 59.7-71.6, lower end 39.28) it bounds 206 at the seed and
398 below their bounds (median 39.3; the zonotope's median: 60.9), in ~7 ms a part
(benchmarks/results/local_acasxu_bab.md, ninth attempt). The top leaves of each tree (activation
patterns with their exact Jacobians) are settled by one LP each (:mod:`.pattern_leaves`): a point inside
the leaf's linear region goes to the lower end (``lower_from``: "pattern leaf"), a leaf proved empty
leaves the part's bound. On ACAS Xu the tree runs on every top part (``pattern_parts`` 256) with up to
512 rows: a tree that closes is pruned early (5 top parts of 2_1 prop 3 at 27-31, ~10 unstable neurons:
all at the seed in 0.06 s); with 128 rows the parts were split instead, with 2048 the trees that stall
cost too many parts (tenth attempt).

**The end game.** When fewer than ``batch`` open parts are above ``(1 + tol)`` times the lower
bound (so all of them are in the round), a part taken from the top again (so bound tighter once)
with at most ``exact_units`` unstable neurons is bounded by ``exact`` (:mod:`.part_exact`: a branch
and bound over its activation patterns, empty ones dropped by LP proofs, seeded with the lower
bound) before it is split, at most ``exact_parts`` of the round's largest; its verified point goes
to the lower bound (``lower_from``: "part exact"). The interval and zonotope bounds take every
slope combination, empty or not: on ACAS Xu 2_1 prop 1 a part with 16 unstable neurons bounded at
71.6 is at most the lower bound 39.3 by ``exact`` (~400 nodes, 2 s), and one gave a witness of
41.3. Before the end game splitting pays better: there the parts above the lower bound are counted
in thousands (1205 on that box after 9000 parts), and ``exact`` at 0.3-6 s each cost more parts
than it saved. In the end game too, in 120 s on ACAS Xu, it did not lower an upper end, so it is
opt-in (``local_bab(..., batch_exact_units=k)``; benchmarks/results/local_acasxu_bab.md, eighth
attempt).

Why the bracket is sound: the module doc of :mod:`.local_bab` (the largest certified bound over a
cover of a convex region by convex parts bounds the constant on the region).

A part whose neurons are all stable is **closed**: its bound is the norm of its one Jacobian (up
to rounding), never refined. The lower bound rises from the Jacobians at the halves' centres
and ``samples - 1`` uniform points of each (``samples`` = 1 by default; float64, batched), the best re-checked as a :class:`~lipbound.methods.witness.PointWitness` on
the network and region when it would raise the lower bound: as parts shrink around the largest
Jacobian norms, the sampled points find them. A part taken from the top also gets ``top_samples``
points (16 by default): the largest Jacobian norms lie in the parts with the largest bounds; and
the points where ascent turns on each of its ``seek`` unstable neurons with the largest upper pre
bounds (:func:`_seek_points`: on ACAS Xu 3_3 prop 1 the top parts keep 6-11 unstable neurons,
bounds ~75, and 20 000 uniform samples of each give Jacobian norms below 0.6).

The search stops when the largest open bound is within ``(1 + tol)`` of the lower bound
(``"converged"``), when the largest part is closed (its centre is offered first: its Jacobian
norm is its bound, up to rounding), after ``max_parts`` parts (the work cap,
deterministic: ``"work"``) or at the deadline (``"time"``, an outer cap only).
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidInput
from .local_bab_part import Outcome
from .local_bab_witness import BestWitness
from .part_exact import PartExact
from .relu_boxes import Layer, bound_boxes, jacobians, pre_bounds
from .pattern_leaves import settle_leaves
from .relu_patterns import pattern_tree
from .relu_zonotope import zonotope_bound
from .witness import PointWitness

__all__ = ["batched_search"]


@dataclass(order=True)
class _Part:
    key: float  # -upper: heapq pops the largest bound first
    order: int
    row: torch.Tensor = field(compare=False)  # (3, d): low, high, smear
    unstable: int = field(compare=False)
    stage: int = field(compare=False, default=0)  # 0: as split, 1: bound again, tighter; 2: and by exact

    @property
    def upper(self) -> float:
        return -self.key


def batched_search(layers: list[Layer], search: BestWitness, low: torch.Tensor, high: torch.Tensor, *, tol: float,
                   max_parts: int, batch: int, vertex_units: int, strong: bool, deadline: float,
                   full_units: int = 0, axis: str = "smear", fan: int = 0, samples: int = 1,
                   zonotope: int = 64, top_samples: int = 16, zonotope_units: int = 120, seek: int = 16,
                   exact: PartExact | None = None, exact_units: int = 0, exact_parts: int = 4,
                   pattern_leaves: int = 0, pattern_units: int = 24, pattern_parts: int = 32,
                   leaf_lps: int = 0) -> Outcome:
    """Best-first batched search over the box ``[low, high]`` (flat, float64) of the chain ``layers``
    (module doc); ``search`` keeps the witnessed lower bound
    (:class:`.local_bab_witness.BestWitness`). ``axis``: the split axis rule, ``"smear"`` (the
    largest ``width * smear``) or ``"relative"`` (the largest width relative to the region's, the
    first on ties: uniform bisection); ``fan``: the search starts from the ``2^(d fan)`` parts of the
    uniform grid with ``2^fan`` cells per axis (each bound capped by the region's); ``samples``:
    points per new part (its centre included) whose Jacobian norms feed the lower bound;
    ``top_samples``: the same for a part taken from the top, when it is bounded again (the largest
    Jacobian norms lie in the parts with the largest bounds); ``zonotope``: generators kept by the
    zonotope Jacobian of a part taken from the top (:mod:`.relu_zonotope`; 0: none), only on parts with
    at most ``zonotope_units`` unstable neurons (above, the part is split at once: module doc);
    ``seek``: unstable neurons of a part taken from the top turned on by ascent (:func:`_seek_points`),
    the Jacobians there offered to the lower bound (0: none); ``exact``: in the end game (module doc),
    at most ``exact_parts`` times per round, the largest part, once bound again and with at most
    ``exact_units`` unstable neurons, is bounded by ``exact`` (:mod:`.part_exact`) before it is split
    (None: never)."""
    if axis not in ("smear", "relative"):
        raise InvalidInput(f"local-bab: unknown split axis rule {axis!r} (smear, relative)")
    count = itertools.count()
    shape = search.graph.input_shape
    root = bound_boxes(layers, low[None], high[None], vertex_units=vertex_units, full_units=full_units)
    _offer_points(layers, search, low[None], high[None], shape, samples)
    heap = [_Part(-float(root.value[0]), next(count), torch.stack([low, high, root.smear[0]]), int(root.unstable[0]))]
    bounded, dropped, cut = 1, 0.0, False  # dropped: the largest bound of the parts left out of the heap (below tol)
    scale = (high - low).clamp(min=torch.finfo(torch.float64).tiny)
    if fan > 0:
        g_low, g_high = _grid(low, high, fan)
        parent = torch.full((len(g_low),), heap[0].upper, dtype=torch.float64)
        upper, smear, unstable = _bounded(layers, g_low, g_high, parent, vertex_units)
        _offer_points(layers, search, g_low, g_high, shape, samples)
        heap = [_Part(-float(upper[i]), next(count), torch.stack([g_low[i], g_high[i], smear[i]]), int(unstable[i]))
                for i in range(len(g_low))]
        heapq.heapify(heap)
        bounded += len(g_low)
    while True:
        threshold = (1 + tol) * search.lower
        if heap[0].upper <= threshold:
            stopped, by = "bracket within tol", "converged"
            break
        if heap[0].unstable == 0:  # its one Jacobian's norm, witnessed at its centre, is the lower end
            _offer_points(layers, search, heap[0].row[0][None], heap[0].row[1][None], shape, 1)
            stopped, by = ("bracket within tol" if heap[0].upper <= (1 + tol) * search.lower
                           else "largest part exact"), "converged"
            break
        if bounded >= max_parts:
            stopped, by = "part cap", "work"
            break
        if time.perf_counter() >= deadline:
            stopped, by = "time budget", "time"
            break
        take = []
        per = 2 * (len(low) if strong else 1)  # parts bounded per parent
        room = min(batch, max(1, (max_parts - bounded) // per))
        while heap and len(take) < room:
            if heap[0].upper <= threshold or heap[0].unstable == 0:
                break
            take.append(heapq.heappop(heap))
        fresh = [p for p in take if p.stage == 0]
        limit = max(full_units, zonotope_units if zonotope > 0 else 0, pattern_units if pattern_leaves > 0 else 0)
        if fresh:  # sampled; bound again, tighter, before splitting, unless too many neurons are unstable
            rows = torch.stack([p.row for p in fresh])
            pre = pre_bounds(layers, rows[:, 0], rows[:, 1])
            _offer_points(layers, search, rows[:, 0], rows[:, 1], shape, top_samples)
            if seek > 0:
                _offer_best(layers, search, _seek_points(layers, rows[:, 0], rows[:, 1], pre, seek), shape, "part ascent")
            again = torch.tensor([p.unstable <= limit for p in fresh])
            if bool(again.any()):
                values, inside = _tighter(layers, rows[again, 0], rows[again, 1], [(l[again], u[again]) for l, u in pre],
                                          vertex_units, full_units, zonotope, (1 + tol) * search.lower, pattern_units,
                                          pattern_leaves, pattern_parts, leaf_lps)
                _offer_best(layers, search, inside, shape, "pattern leaf")
                for p, value in zip([p for p in fresh if p.unstable <= limit], values.tolist()):
                    heapq.heappush(heap, _Part(-min(p.upper, value), next(count), p.row, p.unstable, 1))
                bounded += int(again.sum())
        take = [p for p in take if p.stage > 0 or p.unstable > limit]
        if exact is not None and len(take) < room:  # the end game: every part above the lower end is here
            take, timed_out = _settle(layers, search, heap, take, exact, exact_units, exact_parts, deadline, count,
                                      shape)
            cut |= timed_out
        if not take:
            continue
        rows = torch.stack([p.row for p in take])
        parent = torch.tensor([p.upper for p in take], dtype=torch.float64)
        c_low, c_high, upper, smear, unstable, work = _split(layers, rows, parent, vertex_units, strong,
                                                             scale if axis == "relative" else None)
        _offer_points(layers, search, c_low, c_high, shape, samples)
        for i in range(len(upper)):
            heapq.heappush(heap, _Part(-float(upper[i]), next(count),
                                       torch.stack([c_low[i], c_high[i], smear[i]]), int(unstable[i])))
        bounded += work
        if len(heap) > 100_000:  # memory: parts within tol of the lower bound are never refined
            keep = [p for p in heap if p.upper > (1 + tol) * search.lower]
            dropped = max([dropped] + [p.upper for p in heap if p.upper <= (1 + tol) * search.lower])
            heap = keep or [max(heap)]
            heapq.heapify(heap)
    largest = [{"upper": p.upper, "unstable": p.unstable, "low": p.row[0].tolist(), "width": (p.row[1] - p.row[0]).tolist()}
               for p in heapq.nsmallest(5, heap)]
    return Outcome(max(heap[0].upper, dropped), len(heap), bounded, stopped, by, largest, cut=cut)


def _settle(layers: list[Layer], search: BestWitness, heap: list[_Part], take: list[_Part], exact: PartExact,
            units: int, parts: int, deadline: float, count: Any, shape: tuple) -> tuple[list[_Part], bool]:
    """``exact`` on the ``parts`` largest parts of ``take`` (largest first) that were bound again
    (stage 1) and have at most ``units`` unstable neurons: each pushed back at stage 2 with the least
    of its bounds, its witness candidate re-checked and offered. Returns the parts of ``take`` left
    to split, and whether a run of ``exact`` was cut short by the deadline."""
    chosen = [p for p in take if p.stage == 1 and 0 < p.unstable <= units][:parts]
    timed_out = False
    for p in chosen:
        low, high = p.row[0], p.row[1]
        pre = [(l[0], u[0]) for l, u in pre_bounds(layers, low[None], high[None])]
        found = exact.bound(low, high, pre, search.lower, deadline)
        timed_out |= found.timed_out
        if found.witness is not None:
            x, v, value = found.witness
            search.offer(value, PointWitness(x.reshape(shape), v.reshape(shape)), "part exact")
        heapq.heappush(heap, _Part(-min(p.upper, found.upper), next(count), p.row, p.unstable, 2))
    return [p for p in take if all(p is not c for c in chosen)], timed_out


def _tighter(layers: list[Layer], low: torch.Tensor, high: torch.Tensor, pre: list[tuple[torch.Tensor, torch.Tensor]],
             vertex_units: int, full_units: int, zonotope: int, seed: float = 0.0, pattern_units: int = 0,
             pattern_leaves: int = 0, pattern_parts: int = 0, leaf_lps: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes' tighter bounds, from their pre bounds ``pre``: every slope vertex on a box with at
    most ``full_units`` unstable neurons (the supremum of its slope box), the zonotope Jacobian
    (:func:`.relu_zonotope.zonotope_bound`, ``zonotope`` generators kept; 0: none) on the others, and
    the pattern tree (:func:`.relu_patterns.pattern_tree`, at most ``pattern_leaves`` rows, seeded
    with ``seed``; 0: none) on the first ``pattern_parts`` boxes (the largest bounds: the caller's
    order) with at most ``pattern_units``, its top leaves settled by at most ``leaf_lps`` LPs a box
    (:func:`.pattern_leaves.settle_leaves`: leaves proved empty dropped); the least kept. Also returns the
    points found inside leaves ``(n, d)``: witness candidates, to be re-checked."""
    value = torch.full((len(low),), torch.inf, dtype=torch.float64)  # inf: no tighter bound (the part's stays)
    unstable = sum(((l < 0) & (u > 0)).sum(dim=1) for l, u in pre)
    few, many = (unstable <= full_units).nonzero().flatten(), (unstable > full_units).nonzero().flatten()
    tree = (unstable <= pattern_units).nonzero().flatten()[:pattern_parts if pattern_leaves > 0 else 0]
    if len(few):
        value[few] = bound_boxes(layers, low[few], high[few], vertex_units=vertex_units, full_units=full_units).value
    if zonotope > 0 and len(many):
        value[many] = zonotope_bound(layers, [(l[many], u[many]) for l, u in pre], low.shape[1], keep=zonotope)
    inside = low.new_empty(0, low.shape[1])
    if len(tree):
        leaves = pattern_tree(layers, [(l[tree], u[tree]) for l, u in pre], low[tree], high[tree], seed=seed,
                              max_leaves=pattern_leaves)
        keep, inside = settle_leaves(leaves, leaf_lps)
        value[tree] = torch.minimum(value[tree], leaves.bound(keep))
    return value, inside


def _split(layers: list[Layer], rows: torch.Tensor, parent: torch.Tensor, vertex_units: int,
           strong: bool, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The halves of each box ``rows[b] = (low, high, smear)``, bounded, each bound capped by its
    parent's: ``(lows, highs, uppers, smears, unstable, parts bounded)``, the halves interleaved.
    The axis: with ``strong``, the one whose larger half's bound is least (every axis tried; ties
    broken by the halves' own bounds summed, then their unstable neurons, then ``width * smear``); with
    ``scale`` (the region's widths), the one with the largest ``width / scale``; else the one with the
    largest ``width * smear`` (the widest when no neuron is unstable)."""
    low, high, smear = rows[:, 0], rows[:, 1], rows[:, 2]
    B, d = low.shape
    width = high - low
    if strong:
        axes = torch.arange(d).repeat(B)[:, None]
        c_low, c_high = _halves(low.repeat_interleave(d, 0), high.repeat_interleave(d, 0), axes)
    else:
        score = torch.where((smear > 0).any(dim=1, keepdim=True), width * smear, width) if scale is None else width / scale
        c_low, c_high = _halves(low, high, score.argmax(dim=1, keepdim=True))
    bounds = bound_boxes(layers, c_low, c_high, vertex_units=vertex_units)
    upper = torch.minimum(bounds.value, parent.repeat_interleave(len(c_low) // B))
    pick = torch.arange(len(c_low))
    if strong:
        keys = [upper.reshape(B, d, 2).amax(dim=2), bounds.value.reshape(B, d, 2).sum(dim=2),
                bounds.unstable.reshape(B, d, 2).sum(dim=2).to(torch.float64), -width * smear]
        best = _lexicographic_argmin(keys)
        pick = ((torch.arange(B) * d + best) * 2)[:, None] + torch.arange(2)
        pick = pick.flatten()
    return (c_low[pick], c_high[pick], upper[pick], bounds.smear[pick], bounds.unstable[pick], len(c_low))


def _bounded(layers: list[Layer], low: torch.Tensor, high: torch.Tensor, parent: torch.Tensor,
             vertex_units: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The boxes' bounds (each capped by its ``parent``'s: a part of a part), smears and unstable
    counts, bounded ``chunk`` boxes at a time."""
    out = [bound_boxes(layers, low[s: s + chunk], high[s: s + chunk], vertex_units=vertex_units)
           for s in range(0, len(low), chunk)]
    value = torch.cat([b.value for b in out])
    return (torch.minimum(value, parent), torch.cat([b.smear for b in out]), torch.cat([b.unstable for b in out]))


def _grid(low: torch.Tensor, high: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``2^(d levels)`` cells of the uniform grid on ``[low, high]`` (``2^levels`` per axis),
    as ``(cells, d)`` lows and highs; the cells' faces are the same floats on both sides, so they
    cover the box."""
    k = 2 ** levels
    cuts = low + (high - low) * (torch.arange(k + 1, dtype=torch.float64) / k)[:, None]  # (k + 1, d)
    cuts[-1] = high
    index = torch.cartesian_prod(*[torch.arange(k)] * len(low)).reshape(-1, len(low))
    axes = torch.arange(len(low))
    return cuts[index, axes], cuts[index + 1, axes]


def _lexicographic_argmin(keys: list[torch.Tensor]) -> torch.Tensor:
    """Per row of the ``(B, d)`` keys, the column least by the first key, ties broken by the next."""
    alive = torch.ones_like(keys[0], dtype=torch.bool)
    for key in keys:
        masked = torch.where(alive, key, torch.inf)
        alive &= masked <= masked.amin(dim=1, keepdim=True)
    return alive.to(torch.int8).argmax(dim=1)


def _halves(low: torch.Tensor, high: torch.Tensor, axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of each box along its ``axis`` (``(B, 1)``), interleaved: ``(2B, d)`` lows, highs."""
    mid = (low.gather(1, axis) + high.gather(1, axis)) / 2
    first_high = high.scatter(1, axis, mid)
    second_low = low.scatter(1, axis, mid)
    return torch.stack([low, second_low], 1).flatten(0, 1), torch.stack([first_high, high], 1).flatten(0, 1)


def _offer_points(layers: list[Layer], search: BestWitness, low: torch.Tensor, high: torch.Tensor, shape: tuple,
                  samples: int) -> None:
    """:func:`_offer_best` at the boxes' centres and ``samples - 1`` uniform points of each (from
    ``search.generator``: seeded)."""
    u = torch.rand((max(0, samples - 1), *low.shape), generator=search.generator, dtype=torch.float64)
    x = torch.cat([(low + high) / 2, (low + (high - low) * u).flatten(0, 1)])
    _offer_best(layers, search, x, shape, "part centres" if samples == 1 else "part samples")


def _offer_best(layers: list[Layer], search: BestWitness, x: torch.Tensor, shape: tuple, source: str,
                tries: int = 3) -> None:
    """The largest Jacobian norm at the points ``x``, re-checked and offered when it would raise the
    lower bound; when it does not re-check (on a kink or a tie), the next largest, ``tries`` points
    at most."""
    J = jacobians(layers, x)
    norms = torch.linalg.matrix_norm(J, ord=2)
    for best in norms.argsort(descending=True)[:tries].tolist():
        if not float(norms[best]) > search.lower:
            return
        v = torch.linalg.svd(J[best], full_matrices=False).Vh[0]
        point, direction = x[best].reshape(shape), v.reshape(shape)
        try:
            value = PointWitness(point, direction).recheck(search.graph, search.region)
        except InvalidInput:  # on a kink or a tie
            continue
        search.offer(value, PointWitness(point, direction, value), source, checked=True)
        return


def _seek_points(layers: list[Layer], low: torch.Tensor, high: torch.Tensor, pre: list[tuple[torch.Tensor, torch.Tensor]],
                 neurons: int, steps: int = 8) -> torch.Tensor:
    """Points of the boxes where their unstable neurons turn on: for each box and each of its
    ``neurons`` unstable neurons with the largest upper pre bound, ``steps`` signed-gradient ascent
    steps of that neuron's pre-activation from the box's centre, projected on the box (steps of a
    half, a quarter, ... of the width). A ReLU net's Jacobian is constant on each activation region,
    so the ascent of ``||J||`` itself has no gradient; a neuron turned on reaches the thin regions
    that the slope box counts and uniform samples miss. Candidates only: re-checked as witnesses."""
    l_all, u_all = torch.cat([l for l, _ in pre], dim=1), torch.cat([u for _, u in pre], dim=1)
    score = torch.where((l_all < 0) & (u_all > 0), u_all, -torch.inf)
    top = score.topk(min(neurons, score.shape[1]), dim=1)
    valid = (top.values > -torch.inf).flatten()
    box = torch.arange(len(low)).repeat_interleave(top.indices.shape[1])[valid]
    neuron = top.indices.flatten()[valid][:, None]
    lo, hi = low[box], high[box]
    x, step = (lo + hi) / 2, (hi - lo) / 2
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_pre_activations(layers, x).gather(1, neuron).sum(), x)
        x, step = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), lo), hi), step / 2
    return x.detach()


def _pre_activations(layers: list[Layer], x: torch.Tensor) -> torch.Tensor:
    """The pre-activations of every ReLU layer at the points ``x`` ``(B, d)``, concatenated ``(B, N)``."""
    out, z = [], x
    for layer in layers[:-1]:
        z = z @ layer.W.T + layer.b
        out.append(z)
        z = z.clamp(min=0)
    return torch.cat(out, dim=1)
