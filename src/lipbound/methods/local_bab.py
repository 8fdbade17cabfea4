"""``"local-bab"``: the Lipschitz constant on an input region by branch and bound over the region.

**Why splitting is sound.** Let a convex region ``X`` be covered by closed convex parts
``P_1, ..., P_m`` (boxes cut by axis-aligned planes). For ``x, y`` in ``X`` the segment
``[x, y]`` crosses the parts in finitely many sub-segments ``[t_{k-1}, t_k]``, each inside one
part, so ``||f(x) - f(y)|| <= sum_k L(P_k) ||t_k - t_{k-1}|| <= max_k L(P_k) ||x - y||``: the
largest certified bound over the parts is a **certified upper bound** of ``L`` on ``X``. Any
Jacobian norm at a point of a part, re-checked (:class:`~lipbound.methods.witness.PointWitness`),
is a **witnessed lower bound** on ``X``.

**The search** on a ReLU chain with few inputs is the batched one by default
(:mod:`.local_bab_batch`: hundreds of parts bounded at once with batched CROWN pre bounds,
:mod:`.relu_crown`, and every slope vertex of a part taken with at most ``full_units`` unstable
neurons, the zonotope Jacobian of :mod:`.relu_zonotope` on a part taken with more, and, opt-in,
``exact`` on the few largest parts in the end game, :mod:`.part_exact`); every other graph, or
``batched=False``, gets the part-by-part search below
(anytime: at most ``max_parts`` parts bounded, a work cap; ``time_budget`` is an
outer cap only, :mod:`~lipbound.methods.budget`).

1. Each part is bounded on its own localized graph
   (:func:`~lipbound.methods.propagation.localize`) by the slope-box bound
   (:func:`~lipbound.methods.slope_box.slope_box_bound`: interval Jacobians with the slope
   vertices of the first ``vertex_units`` unstable neurons enumerated; exact when every neuron
   is stable, a few milliseconds on ACAS Xu) and by the certified ``upper_methods``, the least
   value kept. A part of a part keeps its parent's bound when its own is larger. The network is
   converted to float64 once; every part is localized and bounded on that copy.
2. A part whose neurons are all stable is **closed**: the network is affine on it, its Jacobian is
   one matrix, and its slope-box bound is that matrix's norm (up to rounding), which the part's
   centre witnesses. A closed part is never refined again.
3. The part with the largest bound is refined: when it has at most ``exact_units`` unstable
   neurons, ``exact`` runs on it (its value is then the part's exact constant); otherwise it is
   split in two along the input axis with the largest smear (the sum over the unstable neurons of
   ``|dz_i/dx_d| / (u_i - l_i)`` from the interval Jacobian: the axis that unsettles them most).
   (Measured against trying every axis and keeping the pair with the least larger bound: on ACAS
   Xu the trials cost more than their better cuts bring.)
4. The lower bound starts from ``lower`` on the whole region (``lower_share`` of the budget), and
   improves where the upper bounds are: each part's Jacobians at its centre and ``samples - 1``
   uniform points (float64, batched: one backward pass per output), the best re-checked as a
   witness only when it would raise the lower bound.
5. It stops when ``upper <= (1 + tol) lower``, when the part with the largest bound is exact, when
   ``max_parts`` parts are bounded, or when the budget is spent. It reports the bracket reached,
   never a guess, and ``details["stopped_by"]`` (``"converged"``, ``"work"`` or ``"time"``).

A box that is flat in some inputs (``low == high``, e.g. ACAS Xu's property 4) is searched in its
free inputs only: the network composed with the embedding ``x_free -> x`` (fixed inputs as a
constant) has, on the full-dimensional box of the free inputs, exactly the constant of the network
on the flat box, since pairs and their distances correspond one to one. Witnesses are mapped back
and re-checked on the original network and region.

Input splitting pays off in low dimensions (controllers such as ACAS Xu, 5 inputs). Above
``max_split_dim`` inputs the region is bounded once, without splitting (neuron splitting with
constrained propagation is not implemented), then by ``exact`` when few neurons are unstable; the
details say so.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Affine, Graph, Input, with_inputs
from ..linalg.operators import Dense, Reshape, compose
from ..report import Kind, Result
from .local_bab_batch import Outcome, batched_search
from .part_exact import PartExact
from .propagation import localize
from .relu_boxes import relu_chain
from .slope_box import slope_box_bound
from .region import Box, as_region
from .witness import PairWitness, PointWitness, Witness

__all__ = ["local_bab"]

#: the part bounds of a region bounded once (too many inputs to split); lipsdp (per neuron) last:
#: each method gets at most half the time left
_UNSPLIT_METHODS = ("eclipse-fast", "lipsdp-layer", "lipsdp")
#: options of ``exact`` on one part: its own lower-bound search is left to the part samples'
#: Jacobians, and a part never takes more than a few seconds
_EXACT_OPTIONS: dict[str, Any] = {"lower_budget": 0.0, "samples": 16, "time_budget": 10.0, "max_nodes": 500}


@dataclass(order=True)
class _Part:
    """A part of the region in the search's heap (largest upper bound first); ``unstable``: its
    unstable neurons (-1 once ``exact`` ran on it, or unknown); ``lower``: its witness re-checked
    when it raised the search's lower bound, else 0."""

    key: float
    order: int
    low: torch.Tensor = field(compare=False)
    high: torch.Tensor = field(compare=False)
    upper: float = field(compare=False)
    method: str = field(compare=False)
    exact: bool = field(compare=False)
    unstable: int = field(compare=False)
    graph: Graph = field(compare=False, repr=False)
    smear: torch.Tensor | None = field(compare=False, repr=False)
    lower: float = field(compare=False, default=0.0)


def local_bab(graph: Graph, *, registry: Mapping[str, Any], seed: int = 0, progress: bool = False,
              domain: Any = None, time_budget: float = 60.0, tol: float = 1e-3,
              upper_methods: Sequence[str] | None = None, exact_units: int = 12, vertex_units: int = 8,
              max_split_dim: int = 32, lower_share: float = 0.1, samples: int = 16, max_parts: int | None = None,
              batched: bool = True, batch: int = 256, strong: bool = False, full_units: int = 8,
              axis: str = "smear", fan: int = 0, batch_samples: int = 1, zonotope: int = 64,
              top_samples: int = 16, zonotope_units: int = 120, seek: int = 16, batch_exact_units: int = 0,
              exact_nodes: int = 400, exact_parts: int = 4) -> Result:
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
    graph, region, expand = _free_inputs(graph, _as_box(region))
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
    search = _Search(graph, registry, full_region if expand is None else region, seed, upper_methods,
                     vertex_units if split else None, deadline, samples)

    if lower_share > 0:
        found = registry["lower"](graph, seed=seed, domain=region, time_budget=lower_share * time_budget)
        if found.witness is not None and found.value > 0:
            search.offer(found.value, found.witness)
    chain = relu_chain(graph) if split and batched else None
    if max_parts is None:
        max_parts = 2000 if chain is None else 500_000
    if chain is not None:
        part_exact = PartExact(graph, chain, tol / 4, exact_nodes) if batch_exact_units > 0 else None
        outcome = batched_search(chain, search, box.low.flatten(), box.high.flatten(), tol=tol,
                                 max_parts=max_parts, batch=batch, vertex_units=min(vertex_units, 2),
                                 strong=strong, deadline=deadline, full_units=full_units,
                                 axis=axis, fan=fan, samples=batch_samples, zonotope=zonotope,
                                 top_samples=top_samples, zonotope_units=zonotope_units, seek=seek,
                                 exact=part_exact, exact_units=batch_exact_units, exact_parts=exact_parts)
    else:
        outcome = _part_search(search, box, split, tol, exact_units, max_parts, deadline)
    upper = outcome.upper
    lower, witness = _expanded(search, expand, full_graph, full_region)
    closed = lower > 0 and upper <= lower
    kind = Kind.EXACT if closed else Kind.CERTIFIED_UPPER
    cut = outcome.stopped_by == "time" or time.perf_counter() >= deadline or search.cut
    details = {"domain": region.describe(), "parts": outcome.parts, "parts_bounded": outcome.parts_bounded,
               "stopped": outcome.stopped, "stopped_by": "time" if cut else outcome.stopped_by,
               "search": "batched (ReLU chain)" if chain is not None else "part by part",
               "upper_methods": list(upper_methods), "lower_from": search.lower_from,
               "bound_methods": outcome.bound_methods, "time_budget": time_budget,
               "largest_parts": outcome.largest}
    if not split:
        details["note"] = (f"the input has {n_in} elements (> max_split_dim={max_split_dim}): the region was "
                           "bounded once, without splitting")
    if expand is not None:
        details["free_inputs"] = math.prod(graph.input_shape)
    return Result("local-bab", upper, kind, time.perf_counter() - start, witness=witness,
                  details=details, bracket=(min(lower, upper), upper))


class _Search:
    """Bounds parts and keeps the best witnessed lower bound."""

    def __init__(self, graph: Graph, registry: Mapping[str, Any], region: Any, seed: int,
                 upper_methods: Sequence[str], vertex_units: int | None, deadline: float, samples: int) -> None:
        self.graph, self.registry, self.region, self.seed = graph, registry, region, seed
        self.upper_methods, self.vertex_units, self.deadline = upper_methods, vertex_units, deadline
        self.samples, self.generator = samples, torch.Generator().manual_seed(seed)
        self.lower, self.witness, self.lower_from = 0.0, None, None
        self.count = itertools.count()
        self.cut = False  # a method run here was cut short by its time budget

    def offer(self, value: float, witness: Witness, source: str = "lower", checked: bool = False) -> None:
        """Keep ``witness`` when it beats the best lower bound, re-checked in the region itself
        unless ``checked`` (a part's box may stick out of the region it bounds)."""
        if value <= self.lower:
            return
        if not checked:
            try:
                value = witness.recheck(self.graph, self.region)
            except InvalidInput:
                return
            if value <= self.lower:
                return
        self.lower, self.witness, self.lower_from = value, witness, source

    def bound(self, low: torch.Tensor, high: torch.Tensor, root: bool = False) -> _Part | None:
        """The part ``[low, high]`` bounded by the slope-box bound
        (:func:`~lipbound.methods.slope_box.slope_box_bound`) and ``upper_methods`` on its localized
        graph, the least value kept; None when the budget ended before any bound finished (the
        ``root`` is bounded whatever the budget left)."""
        part = Box(low, high)
        left = self.deadline - time.perf_counter()
        if left <= 0 and not root:
            return None
        g = localize(self.graph, part)
        best: tuple[float, str] | None = None
        unstable, smear = -1, None
        try:
            if self.vertex_units is None:
                unstable = len(g.unstable_neurons())
            else:
                sb = slope_box_bound(g, self.vertex_units)
                best, unstable, smear = (sb.value, "slope-box"), sb.unstable, sb.smear
        except (NotApplicable, UnsupportedOperation):
            pass
        for name in self.upper_methods:
            if time.perf_counter() >= self.deadline:
                break
            res = self._run(name, g, part, {"time_budget": (self.deadline - time.perf_counter()) / 2})
            if res is not None and res.upper is not None and (best is None or res.upper < best[0]):
                best = (res.upper, name)
        if best is None and root:  # the whole region always gets a bound: AutoLip applies to any graph
            res = self._run("autolip", g, part, {})
            if res is not None and res.upper is not None:
                best = (res.upper, "autolip")
        found = self._sample_witness(low, high)
        if best is None:
            return None
        closed = unstable == 0 and best[1] == "slope-box"  # one Jacobian on the part: its bound is exact
        return _Part(-best[0], next(self.count), low, high, best[0], best[1], closed, unstable, g, smear, found)

    def settle(self, top: _Part) -> _Part:
        """``top`` bounded by ``exact`` on its own localized graph: its value is then the part's
        exact constant (a tighter certified bound when exact runs out of time)."""
        part = Box(top.low, top.high)
        res = self._run("exact", top.graph, part, _EXACT_OPTIONS)
        if res is None or res.upper is None or res.upper > top.upper:
            return dataclasses.replace(top, unstable=-1)
        return dataclasses.replace(top, key=-res.upper, upper=res.upper, method="exact",
                                   exact=res.kind is Kind.EXACT, unstable=-1)

    def search_part(self, top: _Part, budget: float) -> None:
        """``lower``'s search on the part ``top`` for ``budget`` seconds: lower bounds rise where
        the upper bounds are (its witness lies in the part, so in the region)."""
        if budget > 0:
            self._run("lower", self.graph, Box(top.low, top.high), {"time_budget": budget})

    def _run(self, name: str, g: Graph, part: Box, options: Mapping[str, Any]) -> Result | None:
        """Method ``name`` on a part's localized graph (None when it does not apply), its witness
        offered as a lower bound."""
        spec = self.registry[name]
        left = self.deadline - time.perf_counter()
        kwargs: dict[str, Any] = dict(options)
        if spec.takes_domain:
            kwargs["domain"] = part
        if spec.budgeted:
            kwargs["time_budget"] = max(1e-3, min(left, kwargs.get("time_budget", left)))
        try:
            res = spec(g, seed=self.seed, **kwargs)
        except (NotApplicable, UnsupportedOperation):
            return None
        self.cut |= res.details.get("stopped_by") == "time"
        if res.lower is not None and res.witness is not None:
            self.offer(res.lower, res.witness, name)
        return res

    def _sample_witness(self, low: torch.Tensor, high: torch.Tensor) -> float:
        """The largest Jacobian norm (float64 autograd, one backward pass per output) at the part's
        centre and ``samples - 1`` uniform points of it; the best point is re-checked as a witness
        on the whole region when it would raise the lower bound. Returns the re-checked value
        (0 when none was re-checked or it did not re-check: on a kink or a tie)."""
        n = max(1, self.samples)
        u = torch.rand((n - 1, *low.shape), generator=self.generator, dtype=torch.float64)
        x = torch.cat([((low + high) / 2)[None], low + (high - low) * u]).requires_grad_(True)
        out = self.graph(x).reshape(n, -1)
        rows = [torch.autograd.grad(out[:, k].sum(), x, retain_graph=k + 1 < out.shape[1])[0].reshape(n, -1)
                for k in range(out.shape[1])]
        J = torch.stack(rows, dim=1).detach()  # (n, outputs, inputs)
        norms = torch.linalg.matrix_norm(J, ord=2)
        best = int(norms.argmax())
        if not math.isfinite(float(norms[best])) or float(norms[best]) <= self.lower:
            return 0.0
        v = torch.linalg.svd(J[best], full_matrices=False).Vh[0].reshape(low.shape)
        point = x[best].detach()
        try:
            value = PointWitness(point, v).recheck(self.graph, self.region)
        except InvalidInput:
            return 0.0
        self.offer(value, PointWitness(point, v, value), "part samples", checked=True)
        return value


def _part_search(search: "_Search", box: Box, split: bool, tol: float, exact_units: int, max_parts: int,
                 deadline: float) -> Outcome:
    """The part-by-part search (module doc, steps 1-5) for graphs that are not ReLU chains."""
    root = search.bound(box.low, box.high, root=True)
    if root is None:
        raise NotApplicable("local-bab: no certified method applied to the region")
    heap = [root]
    weights = _axis_weights(search.graph) if split else None
    parts_bounded = 1
    while parts_bounded < max_parts and time.perf_counter() < deadline:
        top = heap[0]
        if top.exact or top.upper <= (1 + tol) * search.lower:
            break
        if 0 <= top.unstable <= exact_units:
            heapq.heapreplace(heap, search.settle(top))
            continue
        if not split:
            break
        heapq.heappop(heap)
        axis_score = weights if top.smear is None or not top.smear.any() else top.smear
        children = [search.bound(lo, hi) for lo, hi in _halves(top.low, top.high, axis_score)]
        parts_bounded += 2
        if any(c is None for c in children):  # the budget ended inside: keep the parent's bound
            heapq.heappush(heap, top)
            break
        for c in children:  # a part of the parent: the parent's bound holds on it too
            heapq.heappush(heap, c if c.upper <= top.upper else dataclasses.replace(
                c, key=top.key, upper=top.upper, method=top.method))
    if not split and not heap[0].exact:  # no refinement left: the rest of the budget to the lower bound
        search.search_part(heap[0], 0.9 * (deadline - time.perf_counter()))
    upper = max(p.upper for p in heap)
    lower = search.lower
    stopped = ("bracket within tol" if lower > 0 and upper <= (1 + tol) * lower else
               "largest part exact" if heap[0].exact else
               "no split (input too large)" if not split else
               "part cap" if parts_bounded >= max_parts else "time budget")
    by = "time" if stopped == "time budget" else "work" if stopped == "part cap" else "converged"
    largest = [{"upper": p.upper, "lower": p.lower, "method": p.method, "unstable": p.unstable,
                "width": (p.high - p.low).flatten().tolist()} for p in heapq.nsmallest(5, heap)]
    return Outcome(upper, len(heap), parts_bounded, stopped, by, largest, sorted({p.method for p in heap}))


def _as_box(region: Any) -> Box:
    """The region's bounding box, refusing what local-bab cannot split soundly."""
    norm = getattr(region, "norm", math.inf)
    if norm != math.inf:
        raise NotApplicable("local-bab splits boxes: give a box or an infinity ball (an L2 ball's parts are "
                            "not implemented)")
    return Box(region.low.clone(), region.high.clone())


def _free_inputs(graph: Graph, box: Box) -> tuple[Graph, Box, Any]:
    """``(graph o embedding, box of the free inputs, free mask)`` for a box flat in some inputs
    (module doc); ``(graph, box, None)`` when no input is fixed."""
    free = (box.high > box.low).flatten()
    if bool(free.all()):
        return graph, box, None
    if not bool(free.any()):
        raise InvalidInput("local-bab: the box is a single point (every input fixed)")
    shape, n, k = graph.input_shape, free.numel(), int(free.sum())
    embed = torch.zeros(n, k, dtype=torch.float64)
    embed[free.nonzero().flatten(), torch.arange(k)] = 1.0
    fixed = torch.where(free, torch.zeros(n, dtype=torch.float64), box.low.flatten())
    op = Dense(embed.to(dtype=graph.dtype, device=graph.device), (k,))
    if len(shape) != 1:
        op = compose(op, Reshape((n,), shape))
    source, name = "free_inputs", "embed_free_inputs"
    nodes = {source: Input(source, [], (k,), f"{k} free inputs of {n}"),
             name: Affine(name, [source], shape, "fixed inputs of the flat box", op,
                          fixed.reshape(shape).to(dtype=graph.dtype, device=graph.device), fixed.reshape(shape))}
    for key, node in graph.nodes.items():
        if key != graph.input:
            nodes[key] = with_inputs(node, [name if i == graph.input else i for i in node.inputs])
    reduced = Graph(nodes, source, graph.output, graph.name, list(graph.notes))
    return reduced, Box(box.low.flatten()[free].clone(), box.high.flatten()[free].clone()), (free, fixed, shape)


def _expanded(search: "_Search", expand: Any, graph: Graph, region: Any) -> tuple[float, Witness | None]:
    """The search's best lower bound and witness, mapped back to the original inputs and
    re-checked on the original network and region (0 and None when it does not re-check)."""
    if expand is None or search.witness is None:
        return search.lower, search.witness
    free, fixed, shape = expand
    w = search.witness

    def full(t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        out = base.clone()
        out[free] = t.detach().to(torch.float64).flatten()
        return out.reshape(shape)
    zero = torch.zeros_like(fixed)
    x = full(w.x, fixed)
    other = full(w.other, zero if isinstance(w, PointWitness) else fixed)
    form = PointWitness if isinstance(w, PointWitness) else PairWitness
    try:
        value = form(x, other).recheck(graph, region)
    except InvalidInput:
        return 0.0, None
    return value, form(x, other, value)


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
