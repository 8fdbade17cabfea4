"""The part-by-part search of ``local-bab`` (:mod:`.local_bab`): for every graph that is not a ReLU
chain, or with ``batched=False``; anytime, best first, one part at a time.

Why the bracket is sound: the module doc of :mod:`.local_bab` (the largest certified bound over a
cover of a convex region by convex parts bounds the constant on the region).

1. Each part is bounded on its own localized graph (:class:`.local_bab_part.PartBounder`: the
   slope-box bound and the certified ``upper_methods``, the least value kept). A part of a part
   keeps its parent's bound when its own is larger (the parent's bound holds on it too). The
   network is converted to float64 once; every part is localized and bounded on that copy.
2. A part whose neurons are all stable is **closed** (:class:`.local_bab_part.Part`): its bound is
   its one Jacobian's norm (up to rounding), which the part's centre witnesses. A closed part is
   never refined again.
3. The part with the largest bound is refined: when it has at most ``exact_units`` unstable
   neurons, ``exact`` runs on it (its value is then the part's exact constant); otherwise it is
   split in two along the input axis with the largest smear (the sum over the unstable neurons of
   ``|dz_i/dx_d| / (u_i - l_i)`` from the interval Jacobian: the axis that unsettles them most).
   (Measured against trying every axis and keeping the pair with the least larger bound: on ACAS
   Xu the trials cost more than their better cuts bring.)
4. The lower bound improves where the upper bounds are: each part's Jacobians at its centre and
   ``samples - 1`` uniform points (:meth:`.local_bab_witness.BestWitness.sample`), the best
   re-checked as a witness only when it would raise the lower bound.
5. It stops when ``upper <= (1 + tol) lower``, when the part with the largest bound is exact, when
   ``max_parts`` parts are bounded (a work cap), or at the deadline (an outer cap only). It reports
   the bracket reached, never a guess, and why it stopped (``"converged"``, ``"work"`` or ``"time"``).

A region that is not split (too many inputs) is bounded once, then by ``exact`` when few neurons
are unstable, and the rest of the budget goes to ``lower`` on it.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time

import torch

from ..errors import NotApplicable
from ..graph.ir import Affine, Graph
from .local_bab_part import Outcome, PartBounder
from .region import Box

__all__ = ["part_search"]


def part_search(bounder: PartBounder, box: Box, split: bool, tol: float, exact_units: int, max_parts: int,
                deadline: float) -> Outcome:
    """The part-by-part search (module doc, steps 1-5) over ``box`` (``split``: refine it by
    splitting; else bound it once)."""
    lower_end = bounder.lower_end
    root = bounder.bound(box.low, box.high, root=True)
    if root is None:
        raise NotApplicable("local-bab: no certified method applied to the region")
    heap = [root]
    weights = _axis_weights(bounder.graph) if split else None
    parts_bounded = 1
    while parts_bounded < max_parts and time.perf_counter() < deadline:
        top = heap[0]
        if top.exact or top.upper <= (1 + tol) * lower_end.lower:
            break
        if 0 <= top.unstable <= exact_units:
            heapq.heapreplace(heap, bounder.settle(top))
            continue
        if not split:
            break
        heapq.heappop(heap)
        axis_score = weights if top.smear is None or not top.smear.any() else top.smear
        children = [bounder.bound(lo, hi) for lo, hi in _halves(top.low, top.high, axis_score)]
        parts_bounded += 2
        if any(c is None for c in children):  # the budget ended inside: keep the parent's bound
            heapq.heappush(heap, top)
            break
        for c in children:  # a part of the parent: the parent's bound holds on it too
            heapq.heappush(heap, c if c.upper <= top.upper else dataclasses.replace(
                c, key=top.key, upper=top.upper, method=top.method))
    if not split and not heap[0].exact:  # no refinement left: the rest of the budget to the lower bound
        bounder.search_part(heap[0], 0.9 * (deadline - time.perf_counter()))
    upper = max(p.upper for p in heap)
    lower = lower_end.lower
    stopped = ("bracket within tol" if lower > 0 and upper <= (1 + tol) * lower else
               "largest part exact" if heap[0].exact else
               "no split (input too large)" if not split else
               "part cap" if parts_bounded >= max_parts else "time budget")
    by = "time" if stopped == "time budget" else "work" if stopped == "part cap" else "converged"
    largest = [{"upper": p.upper, "lower": p.lower, "method": p.method, "unstable": p.unstable,
                "width": (p.high - p.low).flatten().tolist()} for p in heapq.nsmallest(5, heap)]
    return Outcome(upper, len(heap), parts_bounded, stopped, by, largest, sorted({p.method for p in heap}),
                   cut=bounder.cut)


def _axis_weights(graph: Graph) -> torch.Tensor:
    """``||A e_d||`` per input element ``d`` for the first affine node ``A`` reading the input
    (ones when the input feeds something else first)."""
    shape, graph = graph.input_shape, graph.fused()
    first = next((n for n in graph if isinstance(n, Affine) and n.inputs == [graph.input]), None)
    if first is None:
        return torch.ones(shape, dtype=torch.float64)
    eye = torch.eye(math.prod(shape), dtype=first.op.dtype, device=first.op.device).reshape(-1, *shape)
    cols = first.op.matvec(eye).reshape(len(eye), -1)
    return cols.norm(dim=1).to(torch.float64).cpu().reshape(shape)


def _halves(low: torch.Tensor, high: torch.Tensor, weights: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The two halves of the box along the axis with the largest ``width * weight``."""
    d = int(((high - low) * weights).flatten().argmax())
    mid = (low.flatten()[d] + high.flatten()[d]) / 2
    h1, l2 = high.clone(), low.clone()
    h1.view(-1)[d] = mid
    l2.view(-1)[d] = mid
    return [(low, h1), (l2, high)]
