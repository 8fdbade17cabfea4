"""``"neuron-bab"``: the Lipschitz constant (L2 -> L2) of a ReLU MLP on a box by branch and bound
over the unstable neurons' slopes (neuron splitting, LipBaB-style: Bhowmick et al. 2021).

**What is bounded.** On a box ``X`` (convex), ``L_X = sup ||J(x)||_2`` over its interior with
``J(x) = W_K D_{K-1}(x) ... D_1(x) W_1`` (DESIGN §7). A **node** fixes the state (active: slope 1,
``z_i >= 0``; inactive: slope 0, ``z_i <= 0``) of some unstable neurons; the nodes of a split cover
their parent (every input satisfies ``z_i >= 0`` or ``z_i <= 0``), so the largest bound over the
open leaves bounds ``L_X`` (a point on the split plane belongs to both children; interior points
of the box away from all kinks have an open neighbourhood in one leaf, and the kinks are a null
set, so the sup over interior points is the max over the leaves' sups).

**A node's bound** (certified). 1. Its pre-activation bounds ``[l_i, u_i]``: at the **root**, the
CROWN bounds of :func:`~lipbound.methods.propagation.localize`, tightened by the LP relaxation
(:mod:`~lipbound.methods.split_lp`: weak duality, rigorous rounding) for at most ``root_lp_units``
unstable neurons, the most influential first, within ``root_lp_share`` of the budget (the others keep
their bounds, intersected with CROWN's from the tightened layers: every bound kept holds, so a cut
tightening is still sound); at every **other node**, the parent's bounds with the split neuron clamped
at 0, intersected with CROWN's under the node's splits (:mod:`~lipbound.methods.split_crown`, batched
over the children of up to ``batch`` nodes). Crossing bounds (``l_i > u_i``) prove a node **empty**
(dropped). 2. Each neuron's slope then lies in ``{1}``, ``{0}`` or ``[0, 1]`` at every input of the
node, and ``sup ||J(D)||_2`` over that slope box is bounded by a backward interval Jacobian with the
``vertex_units`` most influential free neurons' slopes enumerated at their ends
(:func:`.interval_jacobian.slope_bound`: certified, rigorous rounding).
3. When the node reaches the top of the queue (lazily: a node closed by its interval bound never
pays for them), its bounds are tightened by its LP (at most ``node_lp_units`` neurons, the most
influential first, within ``node_lp_share`` of the budget; the LP enforces the node's splits,
which CROWN relaxes away; one side per neuron, the one that can make it stable, with
``node_lp_one_sided``), and it is also bounded by LipSDP-Neuron (:mod:`.bab_sdp`, its certificate
checked in float64, at most ``sdp_share`` of the budget per call) on the graph whose ReLUs carry
the node's bounds: its LMI (Fazlyab et al. 2019, Theorem 2) holds for every increment
``(dx, dh = D W dx)`` with ``D`` in the per-neuron sectors, so it bounds ``||J(D) v||`` for every ``D``
in the slope box, hence ``||Df(x)||_2`` at every differentiable input of the node. The root's is a
full solve; every other node starts from its parent's checked multipliers, which stay feasible on
the node's LMI (:mod:`.lipsdp_warm`: at most ``warm_iter`` first-order steps, 10x cheaper than a
full solve on mnistfc_256x2). The smaller bound is kept, and never more than the parent's (its
inputs and slope box contain the child's).
(On mnistfc_256x2 the slope-box maximum is within ~5% of LipSDP's value, the interval bound ~3x
above it: benchmarks/results/local_mnistfc.md.)

Only pointwise Jacobian bounds are used: a node's inputs need not be convex (a split of a second
layer neuron cuts the box by a non-linear surface), and no pair argument is made inside a node.

**Branching and pruning.** Best first: the open node with the largest bound is split on its free
neuron of largest influence ``(u - l)``-free rank-one term ``||B_{:,i}|| ||F_{i,:}||`` (``B``: the
interval Jacobian from the output to the neuron, ``F``: from the input to it). A child whose bound
does not exceed the best witnessed lower bound times ``1 + rtol`` is closed.

**Lower bound.** Jacobians at witnesses (:class:`~lipbound.methods.exact_network.WitnessedNet`:
inside the box, off every kink by the rounding bound): the points of every LP solved (root and nodes),
and, once the root is bounded and unsolved, the witnesses of ``lower`` (gradient ascent and region
walk, on ``ascent_share`` of the budget, half of its starts at the best LP points) and ``lower-milp``
(on ``lower_share``) (:class:`~lipbound.methods.bab_witness.WitnessPool`); the best is re-checked
independently at the end.
A **leaf** (every neuron's state known) is one activation pattern: ``exact``'s region check
(:meth:`~lipbound.methods.exact_search.BranchAndBound.check_region`: an LP proposes, an exact-arithmetic
certificate proves the region has no interior point in the box) drops it when empty, and its
verified interior point witnesses its Jacobian's norm otherwise.

It stops when the largest open bound meets the lower bound (``"converged"``, kind ``exact``),
after ``max_nodes`` nodes (``"work"``), when the budget is spent (``"time"``, an outer cap), or
with an open leaf on top whose point was not accepted as a witness (``"open-leaf"``; a best
witness that fails the final re-check says ``"witness-recheck"``): the result is then the
**certified upper** bound reached, never a guess.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Result
from .exact import rechecked
from .exact_search import BranchAndBound
from .bab_sdp import NodeSdp
from .lipsdp_warm import SdpState
from .piecewise import mlp_layers
from .propagation import localize
from .region import Box, as_box
from .bab_witness import WitnessPool
from .interval_jacobian import influence, slope_bound
from .split_crown import chain_of, children, node_bounds
from .split_lp import FREE, SplitLP, states

__all__ = ["neuron_bab"]

MAX_LP_VARIABLES = 4000  # above this many LP variables the nodes keep their propagated bounds (no LP)


@dataclass(order=True)
class _Node:
    key: float  # -upper bound: best first
    upper: float = field(compare=False)
    pre: list = field(compare=False)  # per hidden layer (l, u)
    split: list = field(compare=False)  # per hidden layer: neurons fixed by a split
    scores: list = field(compare=False)
    refine_due: bool = field(compare=False, default=False)  # LP and LipSDP not tried yet (when it reaches the top)
    sdp_state: SdpState | None = field(compare=False, default=None)  # its LipSDP certificate, or its nearest ancestor's


class _Search:
    """The best-first search (module doc) with root bounds ``pre``; ``net`` keeps the witnesses
    and decides the leaves' regions (``exact``'s LP checks with exact-arithmetic certificates);
    ``chain``: the network for :func:`.split_crown.node_bounds`."""

    def __init__(self, net: BranchAndBound, chain: list, pre: list[tuple[np.ndarray, np.ndarray]], rtol: float,
                 vertex_units: int, sdp: NodeSdp | None = None, batch: int = 8) -> None:
        self.net, self.chain, self.rtol, self.vertex_units, self.sdp, self.batch = net, chain, rtol, vertex_units, sdp, batch
        self.pool = WitnessPool(net)  # every LP's points: witnesses now, starts of the witness search later
        self.sdp_calls = 0
        self.hidden_w = net.w[:-1]
        self.hidden_b = net.num.b[:-1]
        self.use_lp = net.dim + net.n_neurons <= MAX_LP_VARIABLES
        self.heap: list[_Node] = []
        self.nodes = self.lps = self.empty = self.closed = self.lp_units = 0
        self.root = [(l.copy(), u.copy()) for l, u in pre]
        self.deadline = self.sdp_seconds = self.node_lp_seconds = math.inf
        self.node_lp_units = 0
        self.one_sided = False  # the nodes' LPs: one side per neuron (_tighten)
        self.strong = 1  # split candidates tried per node (_strong; 1: the most influential neuron)

    def start(self, deadline: float, lp_deadline: float, lp_units: int, sdp_seconds: float,
              node_lp: tuple[int, float, bool] = (0, 0.0, False)) -> None:
        """Bound the root: LP tightening of its ``lp_units`` most influential unstable neurons until
        ``lp_deadline`` (the others keep their CROWN bounds, re-run after each layer), then its
        interval and LipSDP bounds (each LipSDP call gets at most ``sdp_seconds``); ``node_lp``: the
        LP tightening of every later node that reaches the top (most units, most seconds, one-sided)."""
        self.deadline, self.sdp_seconds = deadline, sdp_seconds
        self.node_lp_units, self.node_lp_seconds, self.one_sided = node_lp
        split = [np.zeros(len(l), dtype=bool) for l, _ in self.root]
        pre = self._tighten(self.root, split, min(lp_deadline, deadline), lp_units)
        if pre is None:
            self.empty += 1
            return
        self._push(pre, split)
        if self.heap and self.heap[0].refine_due:
            self._refine(heapq.heappop(self.heap), root=True)

    def upper(self) -> float:
        top = self.heap[0].upper if self.heap else -math.inf
        return max(top, self.net.best)  # a closed node's bound is below the best witness

    def _tighten(self, pre: list, split: list, deadline: float, units: int, one_sided: bool = False) -> list | None:
        """A node's bounds tightened by its LP relaxation for its ``units`` most influential
        unstable neurons (:func:`.interval_jacobian.influence`), layer by layer, each layer in influence order, until
        ``deadline`` (bounds not reached keep their values, which hold); after each layer the later
        layers' bounds are intersected with CROWN's from the tightened ones; None: proved empty.
        ``one_sided``: one LP per neuron, on the side of its bounds nearer 0 (``l`` raised when
        ``-l <= u``, else ``u`` lowered): the side that can make it stable, which is all that
        LipSDP's value depends on; half the LPs of both sides."""
        if not self.use_lp or units <= 0:
            return pre
        pre = [(l.copy(), u.copy()) for l, u in pre]
        lo = [np.where(l >= 0, 1.0, 0.0) for l, _ in pre]
        hi = [np.where(u > 0, 1.0, 0.0) for _, u in pre]
        scores = influence(self.net.w, lo, hi)
        flat = np.concatenate(scores)
        cut = np.sort(flat)[::-1][min(units, len(flat)) - 1] if (flat > 0).any() else np.inf
        for m in range(len(pre)):
            chosen = [i for i in np.argsort(-scores[m], kind="stable") if scores[m][i] > 0 and scores[m][i] >= cut]
            if not chosen:
                continue
            lp = SplitLP(self.hidden_w, self.hidden_b, pre, split, self.net.lo, self.net.hi)
            for i in chosen:
                if time.perf_counter() > deadline or (states(*pre[m]) != FREE)[i]:
                    continue
                l, u = pre[m]
                got = lp.bound(m, i, ((1.0,) if -l[i] <= u[i] else (-1.0,)) if one_sided else (1.0, -1.0))
                self.lp_units += 1
                if got is None:
                    self.lps += lp.lps
                    return None
                low, high, points = got
                l[i], u[i] = max(l[i], low), min(u[i], high)
                if l[i] > u[i]:
                    self.lps += lp.lps
                    return None
                if points:
                    self.pool.add(np.stack(points))
            self.lps += lp.lps
            pre = node_bounds(self.chain, [pre], self.net.lo, self.net.hi)[0]
        return pre

    def _leaf(self, pre: list) -> bool:
        """A leaf (every neuron's state known: one activation pattern) is kept unless ``exact``'s
        region check proves its region empty; its verified interior point is sampled as a witness."""
        verdict, point = self.net.check_region(np.concatenate([(l >= 0).astype(int) for l, _ in pre]))
        if point is not None:  # verified inside the region: its Jacobian is the leaf's
            self.net.sample(point[None])
        return verdict != "none"

    def _push(self, pre: list, split: list, cap: float = math.inf, sdp_state: SdpState | None = None) -> None:
        """Queue the node of :meth:`_node` (unless empty or closed)."""
        node = self._node(pre, split, cap, sdp_state)
        if node is not None:
            heapq.heappush(self.heap, node)

    def _node(self, pre: list, split: list, cap: float, sdp_state: SdpState | None) -> _Node | None:
        """The node bounded by its interval Jacobian, its LipSDP bound due when it reaches the top;
        ``cap`` is its parent's bound, which holds on the node too (its inputs and slope box are
        subsets of the parent's): a child whose own bound came out looser keeps the parent's.
        ``sdp_state``: the parent's LipSDP certificate, the warm start of the node's. None: empty or closed."""
        if any((l > u).any() for l, u in pre):  # rigorous bounds that cross: no input of the box is in the node
            self.empty += 1
            return None
        if not any((states(l, u) == FREE).any() for l, u in pre) and not self._leaf(pre):
            self.empty += 1
            return None
        upper, scores = slope_bound(self.net.w, pre, self.vertex_units)
        upper = min(upper, cap)
        if upper <= self.net.best * (1 + self.rtol):
            self.closed += 1
            return None
        due = (self.sdp is not None or self.node_lp_units > 0) and any((states(l, u) == FREE).any() for l, u in pre)
        return _Node(-upper, upper, pre, split, scores, due, sdp_state)

    def _refine(self, node: _Node, root: bool = False) -> None:
        """Queue the node of :meth:`_refined` (unless empty or closed)."""
        node = self._refined(node, root)
        if node is not None:
            heapq.heappush(self.heap, node)

    def _refined(self, node: _Node, root: bool = False) -> _Node | None:
        """``node`` with its bound lowered by LipSDP-Neuron (module doc), after tightening its bounds
        by its LP (not the root's: done already); None: empty or closed."""
        if not root and self.node_lp_units > 0:
            pre = self._tighten(node.pre, node.split, min(time.perf_counter() + self.node_lp_seconds, self.deadline),
                                self.node_lp_units, self.one_sided)
            leaf = pre is not None and not any((states(l, u) == FREE).any() for l, u in pre)
            if pre is None or any((l > u).any() for l, u in pre) or (leaf and not self._leaf(pre)):
                self.empty += 1
                return None
            upper, node.scores = slope_bound(self.net.w, pre, self.vertex_units)
            node.pre, node.upper = pre, min(node.upper, upper)
        left = min(self.deadline - time.perf_counter(), self.sdp_seconds)
        if self.sdp is not None and left > 0:
            value, state = self.sdp(node.pre, left, node.sdp_state)
            node.upper = min(node.upper, value)
            node.sdp_state = state or node.sdp_state  # an ancestor's certificate still warm-starts the children
            self.sdp_calls += 1
        node.key, node.refine_due = -node.upper, False
        if node.upper <= self.net.best * (1 + self.rtol):
            self.closed += 1
            return None
        return node

    def _strong(self, node: _Node) -> list[_Node]:
        """Strong branching: the children of each of ``node``'s ``strong`` most influential free
        neurons, each child refined (its LP and LipSDP bound), and the pair whose larger bound is the
        least kept (already refined); the other pairs' work is discarded."""
        flat = np.concatenate(node.scores)
        cuts = np.cumsum([len(s) for s in node.scores])
        picks = [int(j) for j in np.argsort(-flat, kind="stable")[:self.strong] if flat[j] > 0]
        pairs = []
        for j in picks:
            m = int(np.searchsorted(cuts, j, side="right"))
            pairs.append(children(node.pre, node.split, m, j - (int(cuts[m - 1]) if m else 0)))
        tight = node_bounds(self.chain, [pre for pair in pairs for pre, _ in pair], self.net.lo, self.net.hi)
        best, worst_best = [], math.inf
        for c, pair in enumerate(pairs):
            kids = [self._node(pre, split, node.upper, node.sdp_state) for pre, (_, split) in zip(tight[2 * c:2 * c + 2], pair)]
            kids = [k for k in (self._refined(k) if k is not None and k.refine_due else k for k in kids) if k is not None]
            worst = max((k.upper for k in kids), default=-math.inf)
            if worst < worst_best:
                best, worst_best = kids, worst
            if time.perf_counter() > self.deadline:
                break
        return best

    def run(self, deadline: float, max_nodes: int) -> str:
        """Expand the top nodes (up to ``batch`` at once, their children bounded together) until
        solved (``"converged"``), ``max_nodes`` (``"work"``), ``deadline`` (``"time"``: a step starts
        only if the last one's seconds fit before it) or an open leaf on top whose bound stays above
        the lower one (``"open-leaf"``: its point was not accepted as a witness)."""
        step = 0.0
        while self.heap:
            if self.heap[0].upper <= self.net.best * (1 + self.rtol):
                return "converged"
            if self.nodes >= max_nodes:
                return "work"
            start = time.perf_counter()
            if start + step > deadline:
                return "time"
            if self.heap[0].refine_due:
                self._refine(heapq.heappop(self.heap))
                step = time.perf_counter() - start
                continue
            batch = []
            while self.heap and len(batch) < min(self.batch, max_nodes - self.nodes) and not self.heap[0].refine_due \
                    and (np.concatenate(self.heap[0].scores) > 0).any():
                batch.append(heapq.heappop(self.heap))
            if not batch:  # every neuron of the top node stable: its bound is its Jacobian's norm
                return "open-leaf"
            self.nodes += len(batch)
            if self.strong > 1:
                for node in batch:
                    for kid in self._strong(node):
                        heapq.heappush(self.heap, kid)
                step = time.perf_counter() - start
                continue
            kids, caps, states_ = [], [], []
            for node in batch:
                flat = np.concatenate(node.scores)
                j = int(np.argmax(flat))
                m = int(np.searchsorted(np.cumsum([len(s) for s in node.scores]), j, side="right"))
                i = j - sum(len(s) for s in node.scores[:m])
                for pre, split in children(node.pre, node.split, m, i):
                    kids.append((pre, split))
                    caps.append(node.upper)
                    states_.append(node.sdp_state)
            tightened = node_bounds(self.chain, [pre for pre, _ in kids], self.net.lo, self.net.hi)
            for pre, (_, split), cap, state in zip(tightened, kids, caps, states_):
                self._push(pre, split, cap, state)
            step = time.perf_counter() - start
        return "converged"


def neuron_bab(graph: Graph, *, seed: int = 0, progress: bool = False, domain: Any = None,
               time_budget: float = 60.0, max_nodes: int = 100_000, rtol: float = 1e-6,
               vertex_units: int = 8, lower_share: float = 0.0, ascent_share: float = 0.25, node_sdp: bool = True, root_lp_share: float = 0.3,
               root_lp_units: int = 256, sdp_share: float = 0.25, batch: int = 8, node_lp_units: int = 256,
               node_lp_share: float = 0.1, node_lp_one_sided: bool = True, warm_iter: int = 100,
               strong: int = 1) -> Result:
    """Certified local Lipschitz bound (L2 -> L2) of a ReLU MLP on a box by neuron branch and bound
    (module doc).

    Args:
        graph: a chain of affine layers and ReLUs, localized on a box or not.
        seed: seed of ``lower-milp``.
        progress: unused (the method signature).
        domain: a box ``(low, high)``, a ``Box`` or an L-infinity ``Ball``; None: the graph's region.
        time_budget: seconds, an outer cap of the whole call.
        max_nodes: most nodes expanded (a work cap).
        rtol: stop when the upper bound is within this relative gap of the lower bound.
        vertex_units: free neurons whose slope ends are enumerated in each node's bound (``2^k`` batch).
        lower_share: fraction of the budget given to ``lower-milp`` for the first lower bound (default 0:
            measured on mnistfc_256x2 prop 3, a lower-milp run earlier in the same process left the
            root bound at 26.28 instead of 23.90, cause not found; run ``lower-milp`` beside it instead).
        ascent_share: fraction of the budget given to ``lower`` (gradient ascent on the Jacobian's norm in
            the box, half of its starts at the root LP's best points) after the root's bounds, before the
            search (it prunes nodes from the start); on mnistfc_256x2 it stops on its work cap in 7-14 s on a
            loaded machine. What stopped these witness searches is ``details["seed_stopped_by"]``
            (``"time"``: the lower end may differ between runs); ``details["stopped_by"]`` is the search's;
            ``details["lp_lower"]`` the lower end from the root's LP points alone.
        node_sdp: also bound each node by LipSDP-Neuron on its slope box (module doc), while time is left.
        root_lp_share: fraction of the budget the root's LP tightening may take (a cap).
        root_lp_units: most unstable neurons the root's LP tightens, the most influential first (a work cap).
        sdp_share: fraction of the budget one LipSDP bound may take (a cap).
        batch: most nodes expanded together (their children's CROWN bounds in one batch).
        node_lp_units: most unstable neurons a node's LP tightens when it reaches the top (a work cap; 0: none).
        node_lp_share: fraction of the budget one node's LP tightening may take (a cap).
        node_lp_one_sided: a node's LP bounds each neuron on one side only, the side nearer 0 (the one
            that can make it stable; the root's LPs bound both sides).
        warm_iter: most first-order iterations of a node's LipSDP bound warm-started from its parent's
            certificate (:mod:`~lipbound.methods.lipsdp_warm`; 0: a full solve at every node).
        strong: split candidates tried per node, the most influential first: each one's children
            refined, the pair with the least larger bound kept (1: the most influential, no trial).
    """
    if not (time_budget > 0 and max_nodes >= 1 and rtol >= 0 and 0 <= vertex_units <= 16 and 0 <= lower_share < 1
            and 0 <= ascent_share < 1 and 0 <= root_lp_share <= 1 and root_lp_units >= 0 and 0 < sdp_share <= 1 and batch >= 1
            and node_lp_units >= 0 and 0 <= node_lp_share <= 1 and warm_iter >= 0 and strong >= 1):
        raise InvalidInput("neuron-bab: time_budget must be > 0, max_nodes >= 1, rtol >= 0, "
                           "0 <= vertex_units <= 16, 0 <= lower_share < 1, 0 <= ascent_share < 1, 0 <= root_lp_share <= 1, "
                           "root_lp_units >= 0, 0 < sdp_share <= 1, batch >= 1, node_lp_units >= 0, "
                           "0 <= node_lp_share <= 1, warm_iter >= 0 and strong >= 1")
    t0 = time.perf_counter()
    region = graph.region if domain is None else domain
    if region is None:
        raise NotApplicable("neuron-bab: needs a box domain (the constant on a region)")
    if hasattr(region, "norm") and region.norm != math.inf:
        raise NotApplicable("neuron-bab: the region must be a box or an L-infinity ball")
    box = as_box(region if isinstance(region, Box) or not hasattr(region, "low") else (region.low, region.high),
                 graph.input_shape)
    try:
        local = localize(graph.to(device="cpu", dtype=torch.float64), box)
        layers = mlp_layers(local, method="neuron-bab")
    except UnsupportedOperation as exc:
        raise NotApplicable(f"neuron-bab: {exc}") from None
    if len(layers) < 2:
        raise NotApplicable("neuron-bab: the network has no ReLU (an affine map: autolip is its constant)")
    if any(l.pieces.two_slope != (0.0, 1.0) for l in layers[:-1]):
        raise NotApplicable("neuron-bab: every activation must be a ReLU")
    net = BranchAndBound(layers, box, rtol)  # its witnesses, and its region checks for the leaves
    pre = [(l.pre[0].numpy(), l.pre[1].numpy()) for l in layers[:-1]]
    sdp = NodeSdp(local, warm_iter) if node_sdp else None
    search = _Search(net, chain_of(net.w[:-1], net.num.b[:-1]), pre, rtol, vertex_units, sdp, batch)
    search.strong = strong
    search.pool.add(box.center.reshape(1, -1).to(torch.float64).numpy())
    search.start(t0 + time_budget, time.perf_counter() + root_lp_share * time_budget, root_lp_units,
                 sdp_share * time_budget, (node_lp_units, node_lp_share * time_budget, node_lp_one_sided))
    root_upper = search.upper()
    lp_lower = net.best
    seed_stop = "converged"
    if search.upper() > net.best * (1 + rtol):  # not solved at the root: search for witnesses
        seed_stop = search.pool.search(local, box, seed, (ascent_share, lower_share), time_budget)
    seeded = net.best
    status = search.run(t0 + time_budget, max_nodes)
    upper = search.upper()
    lower, witness = rechecked(local, net, box, None)
    unstable = int(sum((states(l, u) == FREE).sum() for l, u in pre))
    details = {"lower": lower if lower > -math.inf else None, "upper": upper, "search_nodes": search.nodes,
               "open_nodes": len(search.heap), "empty_nodes": search.empty, "closed_nodes": search.closed,
               "lps": search.lps, "sdp_bounds": search.sdp_calls,
               "sdp_full": sdp.full if sdp else 0, "sdp_warm": sdp.warm if sdp else 0, "unstable_neurons": unstable, "lp_tightening": search.use_lp,
               "domain": box.describe(), "root_upper": root_upper,
               "seeded_lower": seeded if seeded > -math.inf else None,
               "lp_lower": lp_lower if lp_lower > -math.inf else None,
               "lp_units": search.lp_units,
               "stopped_by": status, "seed_stopped_by": seed_stop}
    if status == "converged" and not upper <= lower * (1 + rtol):  # the best witness failed its re-check
        details["stopped_by"] = "witness-recheck"
    seconds = time.perf_counter() - t0
    if status == "converged" and lower > -math.inf and upper <= lower * (1 + rtol):
        return Result("neuron-bab", lower, "exact", seconds, witness=witness, details=details,
                      bracket=(lower, max(upper, lower)))
    return Result("neuron-bab", upper, "certified_upper", seconds, witness=witness, details=details)
