"""The best-first search of ``"neuron-bab"`` (:mod:`.neuron_bab`: what a node is, its bound, the
branching, pruning and lower-bound rules): :class:`NodeSearch` over :class:`BabNode` s."""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .bab_sdp import NodeSdp
from .bab_witness import Rechecked, WitnessPool
from .exact_search import BranchAndBound
from .lipsdp_warm import SdpState
from .relu_boxes import Layer
from .interval_jacobian import influence, slope_bound
from .split_crown import children, node_bounds
from .split_lp import FREE, SplitLP, states

__all__ = ["BabNode", "NodeSearch"]

MAX_LP_VARIABLES = 4000  # above this many LP variables the nodes keep their propagated bounds (no LP)


@dataclass(order=True)
class BabNode:
    key: float  # -upper bound: best first
    upper: float = field(compare=False)
    pre: list = field(compare=False)  # per hidden layer (l, u)
    split: list = field(compare=False)  # per hidden layer: neurons fixed by a split
    scores: list = field(compare=False)
    refine_due: bool = field(compare=False, default=False)  # LP and LipSDP not tried yet (when it reaches the top)
    sdp_state: SdpState | None = field(compare=False, default=None)  # its LipSDP certificate, or its nearest ancestor's


class NodeSearch:
    """The best-first search (module doc) with root bounds ``pre``; ``net`` keeps the witnesses
    and decides the leaves' regions (``exact``'s LP checks with exact-arithmetic certificates);
    ``layers``: its weights with their error bounds (:func:`.interval_jacobian.weight_enclosures`), for
    the nodes' interval bounds; ``chain``: the network for :func:`.split_crown.node_bounds`;
    ``rechecked``: the graph's re-check of the best candidates (:class:`.bab_witness.Rechecked`; None:
    the net's acceptance alone)."""

    def __init__(self, net: BranchAndBound, layers: list[Layer], chain: list,
                 pre: list[tuple[np.ndarray, np.ndarray]], rtol: float, vertex_units: int,
                 sdp: NodeSdp | None = None, batch: int = 8, rechecked: Rechecked | None = None) -> None:
        self.net, self.layers, self.chain, self.rtol = net, layers, chain, rtol
        self.vertex_units, self.sdp, self.batch = vertex_units, sdp, batch
        self.pool = WitnessPool(net, rechecked=rechecked)  # every LP's points: witnesses now, starts of the searches later
        self.sdp_calls = 0
        self.use_lp = net.dim + net.n_neurons <= MAX_LP_VARIABLES
        self.heap: list[BabNode] = []
        self.nodes = self.lps = self.empty = self.closed = self.lp_units = 0
        self.root = [(l.copy(), u.copy()) for l, u in pre]
        self.deadline = self.sdp_seconds = self.node_lp_seconds = math.inf
        self.node_lp_units = 0
        self.reach: float | None = None  # the nodes' LPs: one side per neuron, near ones only (_tighten; None: both sides)
        self.strong = 1  # split candidates tried per node (_strong; 1: the most influential neuron)

    def start(self, deadline: float, lp_deadline: float, lp_units: int, sdp_seconds: float,
              node_lp: tuple[int, float, float | None] = (0, 0.0, None), root_deadline: float = math.inf) -> None:
        """Bound the root: LP tightening of its ``lp_units`` most influential unstable neurons until
        ``lp_deadline`` (both sides: the others keep their CROWN bounds, re-run after each layer), the
        best LP points re-checked on the graph (:meth:`.bab_witness.WitnessPool.confirm`), then its
        interval and LipSDP bounds (each LipSDP call gets at most ``sdp_seconds``); all of it by
        ``root_deadline`` (the witness search's share comes after it) and ``deadline`` (the search's);
        ``node_lp``: the LP tightening of every later node that reaches the top (most units, most
        seconds, reach: :meth:`_tighten`)."""
        self.sdp_seconds = sdp_seconds
        self.node_lp_units, self.node_lp_seconds, self.reach = node_lp
        self.deadline = min(deadline, root_deadline)  # the root's work only: the search's deadline below
        split = [np.zeros(len(l), dtype=bool) for l, _ in self.root]
        pre = self._tighten(self.root, split, min(lp_deadline, self.deadline), lp_units)
        self.pool.confirm()
        if pre is not None:
            self._push(pre, split)
        else:
            self.empty += 1
        if self.heap and self.heap[0].refine_due:
            self._refine(heapq.heappop(self.heap), root=True)
        self.deadline = deadline

    def upper(self) -> float:
        top = self.heap[0].upper if self.heap else -math.inf
        return max(top, self.pool.best)  # a closed node's bound is below the best witness

    def _tighten(self, pre: list, split: list, deadline: float, units: int, reach: float | None = None) -> list | None:
        """A node's bounds tightened by its LP relaxation for its ``units`` most influential
        unstable neurons (:func:`.interval_jacobian.influence`), layer by layer, each layer in influence order, until
        ``deadline`` (bounds not reached keep their values, which hold); after each layer the later
        layers' bounds are intersected with CROWN's from the tightened ones; None: proved empty.
        ``reach`` (None: both sides of every chosen neuron): one LP per neuron, on the side of its
        bounds nearer 0 (``l`` raised when ``-l <= u``, else ``u`` lowered): the side that can make
        it stable, which is all that LipSDP's value depends on; and only for the neurons whose
        nearer bound is within ``reach (u - l)`` of 0 (``reach = 0.5``: all of them). Measured on
        mnistfc_256x2 box 3_0.05 (60 s, 1632 one-sided node LPs): the 136 that made their neuron
        stable all started within 0.1 of their interval; none of the 841 from farther did (another run
        cut at 0.2: 9 of the 1190 between 0.08 and 0.2 did, 6 in the first hidden layer). A skipped LP costs no
        soundness (the bounds kept hold), but its point is not offered as a witness."""
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
            lp = SplitLP(self.chain, pre, split, self.net.lo, self.net.hi)
            for i in chosen:
                l, u = pre[m]
                if time.perf_counter() > deadline or (states(l, u) != FREE)[i] \
                        or (reach is not None and min(-l[i], u[i]) > reach * (u[i] - l[i])):
                    continue
                got = lp.bound(m, i, ((1.0,) if -l[i] <= u[i] else (-1.0,)) if reach is not None else (1.0, -1.0))
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

    def _node(self, pre: list, split: list, cap: float, sdp_state: SdpState | None) -> BabNode | None:
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
        upper, scores = slope_bound(self.layers, pre, self.vertex_units)
        upper = min(upper, cap)
        if upper <= self.pool.best * (1 + self.rtol):
            self.closed += 1
            return None
        due = (self.sdp is not None or self.node_lp_units > 0) and any((states(l, u) == FREE).any() for l, u in pre)
        return BabNode(-upper, upper, pre, split, scores, due, sdp_state)

    def _refine(self, node: BabNode, root: bool = False) -> None:
        """Queue the node of :meth:`_refined` (unless empty or closed)."""
        node = self._refined(node, root)
        if node is not None:
            heapq.heappush(self.heap, node)

    def _refined(self, node: BabNode, root: bool = False) -> BabNode | None:
        """``node`` with its bound lowered by LipSDP-Neuron (module doc), after tightening its bounds
        by its LP (not the root's: done already); None: empty or closed."""
        if not root and self.node_lp_units > 0:
            pre = self._tighten(node.pre, node.split, min(time.perf_counter() + self.node_lp_seconds, self.deadline),
                                self.node_lp_units, self.reach)
            leaf = pre is not None and not any((states(l, u) == FREE).any() for l, u in pre)
            if pre is None or any((l > u).any() for l, u in pre) or (leaf and not self._leaf(pre)):
                self.empty += 1
                return None
            upper, node.scores = slope_bound(self.layers, pre, self.vertex_units)
            node.pre, node.upper = pre, min(node.upper, upper)
        left = min(self.deadline - time.perf_counter(), self.sdp_seconds)
        if self.sdp is not None and left > 0:
            value, state = self.sdp(node.pre, left, node.sdp_state)
            node.upper = min(node.upper, value)
            node.sdp_state = state or node.sdp_state  # an ancestor's certificate still warm-starts the children
            self.sdp_calls += 1
        node.key, node.refine_due = -node.upper, False
        if node.upper <= self.pool.best * (1 + self.rtol):
            self.closed += 1
            return None
        return node

    def _strong(self, node: BabNode) -> list[BabNode]:
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
            if self.heap[0].upper <= self.pool.best * (1 + self.rtol):
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
