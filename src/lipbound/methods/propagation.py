"""Sound bounds of every activation's input over an input region (DESIGN §7): interval bound
propagation (IBP) and CROWN-style back-substitution of linear relaxations.

:func:`localize` is what the API calls: it returns ``graph.localized(region, pre)`` where, for every
:class:`~lipbound.graph.ir.Activation` and :class:`~lipbound.graph.ir.MaxPool` node,
``pre[name] = (l, u)`` holds ``l <= z <= u`` element-wise for the node's input ``z`` at every ``x``
in the region, for the **exact real** network (not only its float64 evaluation). The methods then
read per-neuron slope intervals from them (:meth:`~lipbound.graph.ir.Activation.slope_bounds`).
Why a local constant computed from them is sound: for ``x, y`` in a convex region every neuron's
input stays in ``[l_i, u_i]`` along the segment, so ``s(z_x) - s(z_y) = d_i (z_x - z_y)`` with
the secant slope ``d_i`` in the neuron's interval, and ``f(x) - f(y) = W_k D_{k-1} ... D_1 W_1 (x - y)``
with every ``D`` a diagonal of admissible slopes.

**IBP** (:func:`interval_bounds`, :mod:`.ibp`): node by node, each node's interval from its inputs'
(the region's bounding box, ``A c + b +- |A| r`` for an affine map, an activation's exact range).
**CROWN** (:func:`crown_bounds`, the default of :func:`localize`): for each activation/max-pool input node, the back-substitution
(:mod:`.backsubstitution`) of the linear relaxations of :mod:`.relaxations` to the input,
concretised over the region and intersected with IBP; max pooling enters by the IBP interval of
its output.

**alpha-CROWN** (:func:`alpha_crown_bounds`, ``localize(method="alpha-crown")``): CROWN's bounds, then
per layer the neurons still unstable are bounded again with the lower (and, for non-convex
activations, upper) relaxation slopes of the earlier piecewise-linear activations optimised per
bound by Adam (:mod:`.alpha_crown`: the optimiser only picks numbers; each iterate's bound comes
from the same rigorous back-substitution, so it is sound whatever they are), intersected.

**Rounding.** Every step runs in float64 and is widened outwards by a rigorous margin, so the
bounds hold for the exact network: the affine step is :func:`.float_error.linear_error` (error
``gamma_k (|A| |c|)`` plus ``|A| r``, ``gamma_k = k u / (1 - k u)``, ``u = 2^-53``, ``k`` the
operator's input size, bounded whatever the order of summation: Higham §3.1); a result of at most
``m`` floating-point operations on terms whose absolute values sum to ``M`` is widened by
``gamma_{m+2} M + 2^-1022`` (:func:`.ibp.widen`); activation values carry the error bound of
:func:`.float_error.activation_rounding` (exact pieces: ``gamma_4``; smooth: 16 ulp, the assumption
that torch's float64 kernels are accurate to a few ulp, as in :mod:`.rounding`), and slope
intervals come from ``facts.slopes_on``, padded outwards by its own rule.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidInput
from ..graph.ir import Activation, Graph, Input, MaxPool, Node
from .backsubstitution import Backward, Bounds
from .ibp import activation_inputs, float64_graph, interval, interval_bounds, pre_of, region_box
from .alpha_crown import AlphaOptions, FreeLines, free_lines, optimise
from .relaxations import Relaxation, relax
from .split_bounds import SplitOptions, relu_chain_depth, split_crown_bounds

__all__ = ["localize", "interval_bounds", "crown_bounds", "alpha_crown_bounds", "AlphaOptions", "Bounds"]



def _rows_needed(consumers: list[Node], bounds: Bounds) -> torch.Tensor:
    """Flat indices of the target's neurons worth a CROWN pass: all of them, unless every consumer
    is a piecewise-linear activation; then those with a breakpoint strictly inside ``(l, u)``
    (the others are on one piece, whose relaxation is exact whatever the bounds)."""
    l, u = (t.flatten() for t in bounds)
    if not all(isinstance(c, Activation) and c.pieces is not None for c in consumers):
        return torch.arange(l.numel(), device=l.device)
    unstable = torch.zeros_like(l, dtype=torch.bool)
    for c in consumers:
        for b in c.pieces.breakpoints:
            unstable |= (l < b) & (b < u)
    return unstable.nonzero().flatten()


def _intersect(a: Bounds, b: Bounds) -> Bounds:
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


@dataclass
class _Pass:
    """What :func:`_crown_pass` did: the bounds of every node, and per kind of bound the names of
    the targets that got it (``"crown"``; ``"ibp-time"``, ``"ibp-work"``, ``"ibp-exact"``: kept IBP
    after the time budget, by the work cap, as exact; ``"alpha"``; ``"alpha-time"``: cut short
    by the time budget; ``"alpha-work"``: kept CROWN by alpha-CROWN's work cap)."""

    bounds: dict[str, Bounds]
    layers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _unit_rows(idx: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The linear forms ``z_i`` and ``-z_i`` for ``i`` in ``idx`` (flat), ``(2 len(idx), *shape)``."""
    eye = torch.zeros((idx.numel(), math.prod(shape)), dtype=torch.float64, device=idx.device)
    eye[torch.arange(idx.numel(), device=idx.device), idx] = 1.0
    eye = eye.reshape(-1, *shape)
    return torch.cat([eye, -eye])


def _tighten(backward: Backward, node: Node, lu: Bounds, rows: torch.Tensor, chunk: int, deadline: float | None,
             alpha: tuple[dict[str, FreeLines], AlphaOptions] | None) -> tuple[Bounds, bool]:
    """``lu`` intersected with the back-substituted bounds of the neurons ``rows`` of ``node``, in
    chunks of ``chunk`` neurons, with CROWN's lines or, given ``alpha``, the best of alpha-CROWN's
    iterates (:func:`.alpha_crown.optimise`). Returns the bounds and whether the deadline was met
    (False: some neurons kept ``lu``, or some optimisation was cut short)."""
    l, u = lu[0].flatten().clone(), lu[1].flatten().clone()
    on_time = True
    for s in range(0, rows.numel(), chunk):
        if deadline is not None and time.perf_counter() > deadline:
            return (l.reshape(node.shape), u.reshape(node.shape)), False
        idx = rows[s: s + chunk]
        both = _unit_rows(idx, node.shape)
        if alpha is None:
            low = backward.run(node.name, both)
        else:
            frees, options = alpha
            low, stopped, _ = optimise(lambda rel: backward.run(node.name, both, rel), both.shape[0], frees,
                                       options, deadline)
            on_time = on_time and stopped != "time"
        l[idx] = torch.maximum(l[idx], low[: idx.numel()])
        u[idx] = torch.minimum(u[idx], -low[idx.numel():])
    return (l.reshape(node.shape), u.reshape(node.shape)), on_time


def _crown_pass(graph: Graph, region: Any, time_budget: float | None, chunk_bytes: int,
                alpha: AlphaOptions | None = None, prior: dict[str, Bounds] | None = None,
                max_work: float = 2e8) -> _Pass:
    """Bounds of every node of the float64 ``graph``: IBP from the inputs' bounds, intersected with
    plain IBP, and for each activation/max-pool input node (a target) a CROWN pass intersected with
    that, while the budget lasts; with ``alpha``, then alpha-CROWN on the neurons CROWN left
    unstable, intersected again. A target is left to IBP when no relaxed node lies before it and
    the region is a box (IBP of an affine map of a box is exact) or when its pass would touch more
    than ``max_work`` elements (rows x the elements of the nodes it depends on: a deterministic
    cap, so the same inputs give the same bounds on any machine); alpha-CROWN is skipped where
    its ``iterations`` passes would touch more than ``alpha.max_work``. Each target's optimisation
    may use the time left in proportion to its share of the remaining targets' sizes. Every node's
    bounds are also intersected with its ``prior`` ones (sound bounds from an earlier pass)."""
    start = time.perf_counter()
    deadline = None if time_budget is None else start + time_budget
    box = region_box(region, graph)
    users = graph.users()
    targets = set(activation_inputs(graph).values())
    out = _Pass({})
    bounds = out.bounds
    ibp: dict[str, Bounds] = {}  # plain IBP: the non-monotone activations' rule is not inclusion-isotone
    relaxations: dict[str, Relaxation] = {}
    frees: dict[str, FreeLines] = {}
    backward = Backward(graph, bounds, relaxations, region, {})
    widest = max(math.prod(n.shape) for n in graph)
    ball = region if getattr(region, "norm", None) == 2 else None
    upstream = _upstream(graph)
    weight = {t: math.prod(graph.nodes[t].shape) * upstream[t][1] for t in targets}
    for node in graph:
        ibp[node.name] = interval(node, [ibp[i] for i in node.inputs], box)
        lu = _intersect(interval(node, [bounds[i] for i in node.inputs], box), ibp[node.name])
        if prior is not None:
            lu = _intersect(lu, prior[node.name])
        if isinstance(node, Activation):
            h = bounds[node.inputs[0]]
            relaxations[node.name] = relax(node, *h)
            free = None if alpha is None else free_lines(node, *h, relaxations[node.name])
            if free is not None:
                frees[node.name] = free
        if node.name in targets and not isinstance(node, Input):
            relaxed, size, ancestors = upstream[node.name]
            consumers = [graph.nodes[c] for c in users[node.name] if isinstance(graph.nodes[c], (Activation, MaxPool))]
            rows = _rows_needed(consumers, lu)
            cost = rows.numel() * 2 * size
            if (ball is None and not relaxed) or cost > max_work:
                # IBP is already exact for an affine map of a box; or the pass would cost too much
                out.layers["ibp-work" if cost > max_work else "ibp-exact"].append(node.name)
                bounds[node.name] = lu
                continue
            lu, on_time = _tighten(backward, node, lu, rows, max(1, chunk_bytes // (16 * widest * 4)), deadline, None)
            if rows.numel():  # a target with every neuron on one piece needs no pass
                out.layers["crown" if on_time else "ibp-time" if alpha is None else "alpha-time"].append(node.name)
            mine = {a: frees[a] for a in ancestors if a in frees}
            rows = _rows_needed(consumers, lu)
            if alpha is not None and on_time and rows.numel() and mine:
                if rows.numel() * 2 * size * alpha.iterations > alpha.max_work:
                    out.layers["alpha-work"].append(node.name)
                else:
                    left = sum(weight[t] for t in targets if t not in bounds)
                    share = None if deadline is None else time.perf_counter() + (
                        deadline - time.perf_counter()) * weight[node.name] / left
                    lu, on_time = _tighten(backward, node, lu, rows, max(1, chunk_bytes // (64 * size * 8)),
                                           share, (mine, alpha))
                    out.layers["alpha" if on_time else "alpha-time"].append(node.name)
        bounds[node.name] = lu
    return out


def _upstream(graph: Graph) -> dict[str, tuple[bool, int, set[str]]]:
    """Per node: whether a relaxed node (activation or max pooling) lies between it and the input,
    the number of elements of the nodes it depends on (its own included: the size of one
    coefficient row's back-substitution), and their names."""
    out: dict[str, tuple[bool, int, set[str]]] = {}
    for node in graph:
        anc = set().union(*(out[i][2] for i in node.inputs)) | {node.name} if node.inputs else {node.name}
        relaxed = any(isinstance(graph.nodes[a], (Activation, MaxPool)) for a in anc if a != node.name)
        out[node.name] = (relaxed, sum(math.prod(graph.nodes[a].shape) for a in anc), anc)
    return out


def crown_bounds(graph: Graph, region: Any, *, time_budget: float | None = None,
                 chunk_bytes: int = 2 ** 28) -> dict[str, Bounds]:
    """CROWN pre bounds ``{node name: (l, u)}`` of every activation and max-pool node's input over
    the convex ``region``, intersected with IBP; float64 CPU tensors, rigorous for the exact network.

    For each such input node in topological order, the linear forms ``+-z_i`` are bounded below by
    back-substitution to the input through the earlier nodes (batched over the neurons, chunked
    to ``chunk_bytes`` per coefficient tensor, on the graph's device): affine nodes by their adjoint
    (``rmatvec``), activations by their linear relaxation on the bounds already found
    (:mod:`.relaxations`; positive coefficients take the lower line, negative ones the upper),
    max pooling by the interval of its output, adds and concats by passing the coefficients on.
    At the input, a box gives ``<a, c> - <|a|, r>``; an L2 ball (``region.norm == 2``) also
    ``<a, center> - radius ||a||_2``, and the larger is kept. Only the neurons whose consumers are
    not all on one linear piece are back-substituted (the others keep IBP, which is then exact for
    the slopes). ``time_budget`` (seconds) caps the pass: the neurons it does not reach keep IBP.

    Rounding: each computed coefficient ``a'`` differs from the exact ``A^T a`` or ``D a`` by at
    most ``gamma_K |A|^T |a|`` (or ``u |D| |a|``); its effect on the bound is at most that times
    ``max(|l_h|, |u_h|)``, the input's interval, and is subtracted (``slack``), as are the
    roundings of the offsets' dot products (``gamma_n``) and of the running constant."""
    pre, _ = _crown(graph, region, time_budget, chunk_bytes)
    return pre


_NOTES = {  # kind of bound (_Pass.layers) -> how the note names it
    "ibp-time": "IBP only, after the time budget, on",
    "ibp-work": "IBP only, CROWN's pass too large, on",
    "ibp-exact": "IBP (exact for an affine map of the box) on",
    "alpha-time": "alpha-CROWN cut short by the time budget (stopped_by: time) on",
    "alpha-work": "CROWN only, alpha-CROWN over its work cap (stopped_by: work), on",
}


def _crown(graph: Graph, region: Any, time_budget: float | None, chunk_bytes: int = 2 ** 28,
           alpha: AlphaOptions | None = None) -> tuple[dict[str, Bounds], str]:
    """:func:`crown_bounds` (with ``alpha``: :func:`alpha_crown_bounds`) and the note saying which
    layers got which bounds."""
    if time_budget is not None and not time_budget >= 0:
        raise InvalidInput(f"time_budget must be a number of seconds >= 0 or None, got {time_budget!r}")
    g = float64_graph(graph)
    start = time.perf_counter()
    with torch.no_grad():
        done = _crown_pass(g, region, time_budget, chunk_bytes)
        if alpha is not None:  # CROWN's bounds first, so that alpha-CROWN's are never looser
            left = None if time_budget is None else max(0.0, time_budget - (time.perf_counter() - start))
            crown = done
            done = _crown_pass(g, region, left, chunk_bytes, alpha, prior=crown.bounds)
            done.layers.update({k: v for k, v in crown.layers.items() if not k.startswith("alpha")})
    note = f"pre bounds: CROWN (with IBP) on the inputs of {len(done.layers['crown'])} layers"
    if alpha is not None:
        note += (f"; alpha-CROWN ({alpha.iterations} iterations of Adam, stopped_by: iterations) on "
                 f"{len(done.layers['alpha'])} of them")
    for kind, text in _NOTES.items():
        if done.layers[kind]:
            note += f"; {text} {', '.join(done.layers[kind])}"
    return pre_of(g, done.bounds), note


def alpha_crown_bounds(graph: Graph, region: Any, *, time_budget: float | None = None,
                       options: AlphaOptions = AlphaOptions(), chunk_bytes: int = 2 ** 28) -> dict[str, Bounds]:
    """alpha-CROWN pre bounds ``{node name: (l, u)}`` (:mod:`.alpha_crown`): :func:`crown_bounds`,
    then, per target in topological order, the neurons CROWN left unstable are bounded again with
    the relaxation slopes of the earlier piecewise-linear activations optimised per bound
    (``options.iterations`` of Adam, capped by ``options.max_work`` and ``time_budget``) and
    intersected; later targets use the tighter bounds. Sound whatever the optimiser returns: each
    iterate is evaluated by the rigorous back-substitution (module doc of :mod:`.alpha_crown`)."""
    pre, _ = _crown(graph, region, time_budget, chunk_bytes, options)
    return pre


def _split_crown(graph: Graph, region: Any, time_budget: float | None, options: SplitOptions = SplitOptions(),
                 cap_crown: bool = True, plan_share: float = 1.0) -> tuple[dict[str, Bounds], str]:
    """CROWN's bounds refined by the split tree of :mod:`.split_bounds` (a ReLU chain only), within
    ``time_budget`` in all (with ``cap_crown=False``: CROWN to the end, the budget caps the tree
    only), the tree planned for ``plan_share`` of it, and the note saying what was done."""
    start = time.perf_counter()
    pre, note = _crown(graph, region, time_budget if cap_crown else None)
    g = float64_graph(graph)
    low, high = region_box(region, g)
    deadline = None if time_budget is None else start + time_budget
    plan = None if time_budget is None else plan_share * time_budget
    pre, out = split_crown_bounds(g, low, high, pre, options=options, budget=plan, deadline=deadline)
    return pre, (f"{note}; split-refined (CROWN with the first layer's sign constraints on a split tree over the "
                 f"earliest unstable neurons): "
                 f"{len(out.tree.leaves)} leaves of {out.tree.planned} planned, {out.tree.nodes} nodes bounded, "
                 f"{out.tree.empty} empty, stopped_by: {out.tree.stopped_by}")


AUTO_SPLIT = SplitOptions(max_leaves=128, min_gain=0.02, beta_iterations=2)
"""The split tree of ``localize(method="auto")``: at most 128 leaves, 2 steps of each leaf's sign
multipliers (they took 75% of the tree's time at 4: halving them grows 1.4-2x the leaves in the same
time, and LipSDP on ERAN 9x200's union with a 30 s tree went 81.0 -> 58.3 on idx_225, 183.3 -> 143.1 on
idx_2954, 262.1 -> 233.2 on idx_2697; 0 steps, 306 leaves, gave 153), stopped as soon as a doubling of
the leaves stabilises under 2% of the unstable neurons left (benchmarks/results/preactivation_gap.md,
"Split-refined pre bounds": on ERAN 9x200 each doubling stabilises 3-15% of them, on mnistfc 256x6
0.6-1.5% and on ACAS Xu less, where the tree stops at 2 leaves). On ERAN 9x200 the plan
(:func:`.split_bounds.planned_leaves`, for :data:`AUTO_PLAN_SHARE` of the localization's budget,
:data:`lipbound.api.SPLIT_SHARE` of the run's) ends it first at a 60 s budget: 94 leaves, ``stopped_by:
work``, the same on a loaded machine (before session 11 the clock ended it, at a load-dependent count);
LipSDP on the 128-leaf bounds against the 32-leaf ones: 462.9 -> 183.3 on idx_2954, 158.4 -> 74.0 on
idx_225 (benchmarks/results/local.md, "Session 10")."""

AUTO_PLAN_SHARE = 2 / 3
"""The share of ``localize(method="auto")``'s budget its split tree is planned for; the clock caps it at
the whole budget. The plan's rates were measured at load 3-4 (:data:`.machine.SPLIT_NODE_SECONDS`),
and a tree planned for all of its budget was still cut by the clock at 61-87 of its 94 leaves on ERAN
9x200 (0.17 s per node at load ~3 against the plan's 0.159): the rest absorbs a load up to 1.5x that."""


def _auto(graph: Graph, region: Any, time_budget: float | None) -> tuple[dict[str, Bounds], str]:
    """``method="auto"``: split-crown (:data:`AUTO_SPLIT`) on ReLU chains of at least 3 hidden layers,
    where CROWN's relaxations compound; CROWN elsewhere. CROWN runs to the end either way (the bounds
    do not depend on the time); ``time_budget`` caps the split tree only, which is planned for
    :data:`AUTO_PLAN_SHARE` of it."""
    if relu_chain_depth(graph) >= 3:
        return _split_crown(graph, region, time_budget, AUTO_SPLIT, cap_crown=False, plan_share=AUTO_PLAN_SHARE)
    return _crown(graph, region, None)


def localize(graph: Graph, region: Any, *, method: str = "crown", time_budget: float | None = None) -> Graph:
    """``graph.localized(region, pre)`` with sound pre bounds of every activation and max-pool node
    over the convex ``region`` (module doc): ``method="ibp"`` (:func:`interval_bounds`), ``"crown"``
    (:func:`crown_bounds`, intersected with IBP; the default), ``"alpha-crown"``
    (:func:`alpha_crown_bounds`, intersected with CROWN's: not the default, as measured in
    benchmarks/results/local.md it costs the later methods more than it gains within the API's
    budget) or ``"split-crown"`` (CROWN's, refined by a split tree over the earliest unstable
    neurons: :mod:`.split_bounds`; ReLU MLPs only) or ``"auto"`` (what the API uses: split-crown with
    a stall rule on ReLU MLPs of at least 3 hidden layers, else CROWN: :func:`_auto`); ``time_budget``
    caps the pass (with ``"auto"``, the split tree only). The returned graph's notes
    say which layers got which bounds and what stopped alpha-CROWN."""
    if method == "ibp":
        pre, note = interval_bounds(graph, region), "pre bounds: IBP on every layer"
    elif method == "auto":
        pre, note = _auto(graph, region, time_budget)
    elif method in ("crown", "alpha-crown"):
        pre, note = _crown(graph, region, time_budget, alpha=AlphaOptions() if method == "alpha-crown" else None)
    elif method == "split-crown":
        pre, note = _split_crown(graph, region, time_budget)
    else:
        raise InvalidInput(f"unknown bound propagation method {method!r}: "
                           "use 'alpha-crown', 'auto', 'crown', 'ibp' or 'split-crown'")
    out = graph.localized(region, pre)
    out.notes.append(note)
    return out
