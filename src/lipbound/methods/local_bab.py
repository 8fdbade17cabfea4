"""``"local-bab"``: the Lipschitz constant on an input region by branch and bound over the region.

**Why splitting is sound.** Let a convex region ``X`` be covered by closed convex parts
``P_1, ..., P_m`` (boxes cut by axis-aligned planes). For ``x, y`` in ``X`` the segment
``[x, y]`` crosses the parts in finitely many sub-segments ``[t_{k-1}, t_k]``, each inside one
part, so ``||f(x) - f(y)|| <= sum_k L(P_k) ||t_k - t_{k-1}|| <= max_k L(P_k) ||x - y||``: the
largest certified bound over the parts is a **certified upper bound** of ``L`` on ``X``. Any
Jacobian norm at a point of a part, re-checked (:class:`~lipbound.methods.witness.PointWitness`),
is a **witnessed lower bound** on ``X``.

**The searches.** On a ReLU chain with few inputs the search is the batched one by default
(:mod:`.local_bab_batch`: hundreds of parts bounded at once with batched CROWN pre bounds,
:mod:`.relu_crown`, and every slope vertex of a part taken with at most ``full_units`` unstable
neurons, the zonotope Jacobian of :mod:`.relu_zonotope` on a part taken with more, the pattern tree of
:mod:`.relu_patterns` (activation patterns no point of the part has dropped) on the largest of them, and, opt-in,
``exact`` on the few largest parts in the end game, :mod:`.part_exact`); every other graph, or
``batched=False``, gets the part-by-part search (:mod:`.local_bab_serial`, each part bounded by
:mod:`.local_bab_part`). Both are anytime: at most ``max_parts`` parts bounded, a work cap;
``time_budget`` is an outer cap only (:mod:`~lipbound.methods.budget`). Both stop when
``upper <= (1 + tol) lower``, report the bracket reached, never a guess, and
``details["stopped_by"]`` (``"converged"``, ``"work"`` or ``"time"``).

The lower end (:mod:`.local_bab_witness`) starts from ``lower`` on the whole region
(``lower_share`` of the budget) and rises where the upper bounds are: Jacobians at points of the
parts, each re-checked as a witness in the region before it is kept. A box flat in some inputs is
searched in its free inputs, its witnesses mapped back and re-checked on the original network
(:mod:`.local_bab_region`).

Input splitting pays off in low dimensions (controllers such as ACAS Xu, 5 inputs). Above
``max_split_dim`` inputs the region is bounded once, without splitting (neuron splitting with
constrained propagation is not implemented), then by ``exact`` when few neurons are unstable; the
details say so.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import torch

from ..errors import InvalidInput
from ..graph.ir import Graph
from ..report import Kind, Result
from .local_bab_batch import batched_search
from .local_bab_part import PartBounder
from .local_bab_region import as_box, expanded, free_inputs
from .local_bab_serial import part_search
from .local_bab_witness import BestWitness
from .part_exact import PartExact
from .region import as_region
from .relu_boxes import relu_chain

__all__ = ["local_bab"]

#: the part bounds of a region bounded once (too many inputs to split); lipsdp (per neuron) last:
#: each method gets at most half the time left
_UNSPLIT_METHODS = ("eclipse-fast", "lipsdp-layer", "lipsdp")


def local_bab(graph: Graph, *, registry: Mapping[str, Any], seed: int = 0, progress: bool = False,
              domain: Any = None, time_budget: float = 60.0, tol: float = 1e-3,
              upper_methods: Sequence[str] | None = None, exact_units: int = 12, vertex_units: int = 8,
              max_split_dim: int = 32, lower_share: float = 0.1, samples: int = 16, max_parts: int | None = None,
              batched: bool = True, batch: int = 256, strong: bool = False, full_units: int = 8,
              axis: str = "smear", fan: int = 0, batch_samples: int = 1, zonotope: int = 64,
              top_samples: int = 16, zonotope_units: int = 120, seek: int = 16, batch_exact_units: int = 0,
              exact_nodes: int = 400, exact_parts: int = 4, pattern_leaves: int = 512,
              pattern_units: int = 24, pattern_parts: int = 256, leaf_lps: int = 4) -> Result:
    """Bracket the Lipschitz constant (L2 -> L2) of ``graph`` on the region ``domain`` by branch
    and bound over the region (module doc).

    Args:
        graph: the network (localized or not: each part is localized anew).
        registry: the method registry (bound by the registry's own entry).
        domain: the region: a box ``(low, high)``, a :class:`~lipbound.methods.region.Box` or an
            infinity ball; required.
        time_budget: total seconds of the call, an outer cap (``stopped_by`` ``"time"`` when it binds).
        tol: stop when ``upper <= (1 + tol) * lower``.
        upper_methods: certified methods bounding each part besides the slope-box bound, least
            value kept; by default none when the region is split, else ``_UNSPLIT_METHODS`` (the
            slope-box bound runs only on split regions: it carries one Jacobian column per input).
        exact_units: run ``exact`` on the part with the largest bound, instead of splitting it,
            when it has at most this many unstable neurons (the part-by-part search).
        batch_exact_units: in the batched search's end game (fewer than ``batch`` parts above the lower
            end), ``exact`` (:mod:`.part_exact`) on a part taken again with at most this many unstable
            neurons, before it is split (0: never, the default: in 120 s on ACAS Xu it cost more parts than
            it saved, benchmarks/results/local_acasxu_bab.md, eighth attempt).
        exact_nodes: in the batched search, most nodes of ``exact`` on one part (a work cap).
        exact_parts: in the batched search, most parts bounded by ``exact`` per round.
        vertex_units: unstable neurons whose slope vertices the slope-box bound enumerates (at most 2 in
            the batched search: each costs a factor 2 on every part of the batch).
        max_split_dim: split the region only when the input has at most this many elements.
        lower_share: the share of the budget for ``lower`` on the whole region at the start (0: none).
        samples: points per part (its centre included) whose Jacobian norms feed the lower bound.
        max_parts: most parts bounded (a work cap, ``stopped_by`` ``"work"`` when it binds); by default
            2000 part by part, 500000 in the batched search of a ReLU chain.
        batched: on a ReLU chain, the batched search (:mod:`.local_bab_batch`, CROWN pre bounds for all
            parts at once, :mod:`.relu_crown`) instead of the part-by-part one; on by default: on ACAS Xu
            props 1-4 in 120 s its brackets are tighter (benchmarks/results/local_acasxu_bab.md).
        batch: parts refined at once by the batched search.
        full_units: in the batched search, a part taken for refinement with at most this many
            unstable neurons is first bounded with all their ``2^k`` slope vertices enumerated (its
            bound is then the supremum of its slope box), and split only when it is taken again.
        strong: the batched search tries every split axis and keeps the best (off by default: on ACAS
            Xu prop 1 it split the narrow axes at the coarse levels, where every axis ties).
        axis: the batched search's split axis: ``"smear"`` (the largest ``width * smear``) or
            ``"relative"`` (the largest width relative to the region's: uniform bisection).
        fan: the batched search starts from the uniform grid with ``2^fan`` cells per axis
            (``2^(d fan)`` parts) instead of the region alone.
        batch_samples: in the batched search, points per new part (its centre included) whose
            Jacobian norms feed the lower bound (``samples`` is the part-by-part search's).
        zonotope: in the batched search, a part taken for refinement with more than ``full_units``
            unstable neurons is first bounded by the zonotope Jacobian (:mod:`.relu_zonotope`, this
            many generators kept; 0: not), put back, and split only when it is taken again.
        zonotope_units: in the batched search, the zonotope runs only on parts with at most this many
            unstable neurons; a part with more is split at once (there the zonotope gains too little
            for its cost: benchmarks/results/local_acasxu_bab.md, seventh attempt).
        seek: in the batched search, the unstable neurons (largest upper pre bounds first) of a part taken
            from the top that signed-gradient ascent turns on, the Jacobians there offered to the lower
            bound (0: none).
        top_samples: in the batched search, points of a part taken from the top (its centre
            included) whose Jacobian norms feed the lower bound.
        pattern_leaves: in the batched search, most rows of the pattern tree
            (:func:`.relu_patterns.pattern_bound`, seeded with ``(1 + tol)`` times the lower end) of a
            part taken from the top (0: no pattern tree).
        pattern_units: the pattern tree runs only on parts with at most this many unstable neurons.
        pattern_parts: the pattern tree runs on at most this many parts per round, the largest bounds
            first (256 parts and 512 rows by default: on ACAS Xu 1_1 props 3, 2_1 props 1-3 and 3_3 prop 3 the
            bracket closes in 120 s, where 32 parts and 128 rows left it at 1.13-1.42; 2048 rows cost 1_1 prop 3
            two thirds of its parts; benchmarks/results/local_acasxu_bab.md, tenth attempt).
        leaf_lps: most LPs per part on the pattern tree's top leaves (:mod:`.pattern_leaves`): a point
            inside the top leaf's linear region (its Jacobian offered to the lower end, re-checked), or a
            Farkas proof from the LP's duals that the leaf is empty (dropped from the part's bound); 0: none.

    Returns:
        A :class:`~lipbound.report.Result` of kind ``certified_upper`` (``exact`` when the bracket
        closed within ``tol`` = 0) whose ``bracket`` is the (witnessed lower, certified upper) pair.
    """
    start = time.perf_counter()
    deadline = start + time_budget
    if domain is None:
        raise InvalidInput("local-bab bounds the constant on a region: give a domain (a box or a ball)")
    region = as_region(domain, graph.input_shape)
    full_graph, full_region = graph, region
    graph, region, expand = free_inputs(graph, as_box(region))
    graph = graph.to(device="cpu", dtype=torch.float64)  # once: every part is localized and bounded on it
    box = region
    n_in = math.prod(graph.input_shape)
    split = n_in <= max_split_dim
    if upper_methods is None:
        upper_methods = () if split else _UNSPLIT_METHODS
    for name in (*upper_methods, "exact", "lower"):
        if name not in registry:
            raise InvalidInput(f"local-bab: unknown method {name!r}")
    bad = [n for n in upper_methods if not registry[n].guarantee.is_upper or registry[n].aggregate]
    if bad:
        raise InvalidInput(f"local-bab: {bad} give no certified upper bound")
    # witnesses are searched and re-checked in the region itself: its bounding box (rounded
    # outwards, for the bounds) may stick out of it, as the corners of an infinity ball's do
    lower_end = BestWitness(graph, full_region if expand is None else region, seed)

    if lower_share > 0:
        found = registry["lower"](graph, seed=seed, domain=region, time_budget=lower_share * time_budget)
        if found.witness is not None and found.value > 0:
            lower_end.offer(found.value, found.witness)
    chain = relu_chain(graph) if split and batched else None
    if max_parts is None:
        max_parts = 2000 if chain is None else 500_000
    if chain is not None:
        part_exact = PartExact(graph, chain, tol / 4, exact_nodes) if batch_exact_units > 0 else None
        outcome = batched_search(chain, lower_end, box.low.flatten(), box.high.flatten(), tol=tol,
                                 max_parts=max_parts, batch=batch, vertex_units=min(vertex_units, 2),
                                 strong=strong, deadline=deadline, full_units=full_units,
                                 axis=axis, fan=fan, samples=batch_samples, zonotope=zonotope,
                                 top_samples=top_samples, zonotope_units=zonotope_units, seek=seek,
                                 exact=part_exact, exact_units=batch_exact_units, exact_parts=exact_parts,
                                 pattern_leaves=pattern_leaves, pattern_units=pattern_units,
                                 pattern_parts=pattern_parts, leaf_lps=leaf_lps)
    else:
        bounder = PartBounder(lower_end, registry, seed, upper_methods, vertex_units if split else None, deadline,
                              samples)
        outcome = part_search(bounder, box, split, tol, exact_units, max_parts, deadline)
    upper = outcome.upper
    lower, witness = expanded(lower_end.lower, lower_end.witness, expand, full_graph, full_region)
    closed = lower > 0 and upper <= lower
    kind = Kind.EXACT if closed else Kind.CERTIFIED_UPPER
    cut = outcome.stopped_by == "time" or time.perf_counter() >= deadline or outcome.cut
    details = {"domain": region.describe(), "parts": outcome.parts, "parts_bounded": outcome.parts_bounded,
               "stopped": outcome.stopped, "stopped_by": "time" if cut else outcome.stopped_by,
               "search": "batched (ReLU chain)" if chain is not None else "part by part",
               "upper_methods": list(upper_methods), "lower_from": lower_end.lower_from,
               "bound_methods": outcome.bound_methods, "time_budget": time_budget,
               "largest_parts": outcome.largest}
    if not split:
        details["note"] = (f"the input has {n_in} elements (> max_split_dim={max_split_dim}): the region was "
                           "bounded once, without splitting")
    if expand is not None:
        details["free_inputs"] = math.prod(graph.input_shape)
    return Result("local-bab", upper, kind, time.perf_counter() - start, witness=witness,
                  details=details, bracket=(min(lower, upper), upper))

