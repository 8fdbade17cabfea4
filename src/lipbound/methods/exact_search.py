"""The branch and bound of ``exact`` over piece patterns (the method and its proofs:
:mod:`~lipbound.methods.exact`), on a :class:`~lipbound.methods.exact_network.PiecewiseNet`.

A node fixes the pieces of the first neurons (layer by layer). A stable neuron (one usable piece on
the region) is never branched on: its piece is appended as soon as the neurons before it are
fixed (:meth:`BranchAndBound._settle`), so the tree branches on the unstable neurons only.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .exact_network import WitnessedNet, spectral
from .lp import DenseLP, proves_no_interior
from .piecewise import DenseLayer
from .region import Box
from .work_plan import macs_seconds, svd_seconds

__all__ = ["BranchAndBound"]

_T_CAP = 1.0  # cap of the LP's ball radius (unbounded regions), relative to the problem's scale
_VERTEX_FREE = 8  # with at most this many free unstable neurons, bound a node by enumerating its completions
_VERTEX_SIZE = 4_000_000  # ... when the batch of Jacobians has at most this many entries
_REFINE = 3  # LPs zooming in on a region whose first LP point is neither verified nor proved empty
_ZOOM = 1e-6  # their first magnification (relative to the scale) when that LP found no positive radius


@dataclass(order=True)
class _Node:
    key: tuple[float, int]  # (-upper bound, -depth): best first, deeper first on ties
    pieces: np.ndarray = field(compare=False)  # piece index of the first `depth` neurons (layer order)
    point: np.ndarray | None = field(compare=False)  # a verified interior point, None: unverified
    upper: float = field(compare=False)


class BranchAndBound(WitnessedNet):
    """The search over one MLP (module doc of :mod:`~lipbound.methods.exact`), in float64 numpy;
    proofs of emptiness in exact arithmetic. Regions are checked on the ``box``; a witness must
    also satisfy ``admits`` (a region inside the box, e.g. an L2 ball), when given."""

    def __init__(self, layers: list[DenseLayer], box: Box | None, rtol: float,
                 admits: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(layers, box, admits)
        self.rtol = rtol
        lips = np.maximum(np.abs(self.slope_lo), np.abs(self.slope_hi))  # per neuron, on the region
        # ||W_{m+1} diag(lips of layer m)||: with |D_m| <= diag(lips), ||W_{m+1} D_m|| is at most that
        scaled = [spectral(self.w[m + 1] * lips[self.offsets[m]:self.offsets[m + 1]]) for m in range(len(self.sizes))]
        # AutoLip of everything after hidden layer m's activation, and of the whole network
        self.tail = [self.norms[m + 1] * math.prod(scaled[m + 1:]) for m in range(len(self.sizes))]
        self.autolip = self.norms[0] * math.prod(scaled)
        finite = np.abs(np.concatenate([self.lo, self.hi]))
        self.scale = (1.0 + max(np.abs(b).max(initial=0.0) for b in self.num.b)
                      + max((np.abs(bp).max(initial=0.0) for bp in self.num.breakpoints), default=0.0)
                      + float(finite[np.isfinite(finite)].max(initial=0.0)))
        self.lp = DenseLP()
        self.uncertain_max = -math.inf  # the largest ||J_P|| of a leaf kept without a witness
        self.nodes = self.lps = self.empty = self.uncertain = self.unwitnessed = 0
        self.heap: list[_Node] = []
        self.rooted = False  # the root was bounded: until then only AutoLip bounds the constant

    # ---- regions ------------------------------------------------------------------------
    def _constraints(self, pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The region of ``pieces`` as rows ``s (z_j(x) - bp) >= 0``, ``(j, s, bp)`` per row: the
        breakpoints below (``s = 1``) and above (``s = -1``) the piece of each fixed neuron that
        varies (a constant one was given the piece of its value: :meth:`_constant_piece`)."""
        rows = []
        varies = self.varying(pieces)
        for j, p in enumerate(pieces):
            bp = self.num.breakpoints[self.layer[j]]
            if varies[j] and p > 0:
                rows.append((j, 1, bp[p - 1]))
            if varies[j] and p < len(bp):
                rows.append((j, -1, bp[p]))
        j, s, bp = zip(*rows) if rows else ((), (), ())
        return np.array(j, dtype=int), np.array(s, dtype=int), np.array(bp, dtype=np.float64)

    def _constant_piece(self, pieces: np.ndarray) -> int:
        """The piece holding the exact value of neuron ``len(pieces)``, constant on the region of
        ``pieces`` (:meth:`varying`); the lower one on a breakpoint, where both closed pieces hold
        it and the neuron's slope multiplies a zero row."""
        _, c, scale = self.forms(np.append(pieces, 0), self.integers)
        value = Fraction(c[-1], scale[-1])
        return sum(value > Fraction(float(bp)) for bp in self.num.breakpoints[self.layer[len(pieces)]])

    def _inside(self, pieces: np.ndarray, x: np.ndarray) -> bool:
        """``x`` lies in the closed box and every fixed neuron that varies has its exact
        pre-activation strictly inside its piece (:meth:`pieces_at`)."""
        piece, clear, _ = self.pieces_at(x[None])
        k = len(pieces)
        fits = (clear[0, :k] & (piece[0, :k] == pieces)) | ~self.varying(pieces)[:k]
        return bool(((x >= self.lo) & (x <= self.hi)).all() and fits.all())

    def check_region(self, pieces: np.ndarray) -> tuple[str, np.ndarray | None]:
        """Whether the region of a partial pattern ``pieces`` meets the box's interior (module doc of
        :mod:`~lipbound.methods.exact`): ``("exists", verified point)``, ``("none", None)`` (proved empty) or ``("uncertain", None)``."""
        j, s, bp = self._constraints(pieces)
        if len(j) == 0:  # only neurons without breakpoints are fixed: the whole domain
            return "uncertain", None
        a, c, _ = self.forms(pieces, self.num)
        ga, gc = s[:, None] * a[j], s * (c[j] - bp)  # the region: ga x + gc >= 0
        x, t, y = self._centre(ga, gc, np.zeros(self.dim), 1.0)
        if x is None:
            return "uncertain", None
        if self._inside(pieces, x):
            return "exists", x
        if self._proves_empty(pieces, j, s, bp, y):
            self.empty += 1
            return "none", None
        sigma = t if t > 0 else _ZOOM * self.scale
        for _ in range(_REFINE):  # a thin region, blurred by the solver's tolerance: zoom in on it
            x, t, _ = self._centre(ga, gc, x, sigma)
            if x is None or not t > 0:
                break
            if self._inside(pieces, x):
                return "exists", x
            sigma = t
        return "uncertain", None

    def _centre(self, ga: np.ndarray, gc: np.ndarray, x0: np.ndarray,
                sigma: float) -> tuple[np.ndarray | None, float, np.ndarray | None]:
        """``(x, t, y)``: an LP's well-centred point ``x`` of ``{ga x + gc >= 0}`` in the box (the
        centre of a ball of radius ``t`` in it: ``max t`` s.t. ``ga x + gc >= t ||ga||``), and the
        LP's multipliers ``y`` of those rows; ``(None, 0, None)`` when the LP fails. Solved in the
        coordinates ``x = x0 + sigma d``, which magnify a region of width ``sigma`` around ``x0`` to
        the solver's scale."""
        self.lps += 1
        norms = np.linalg.norm(ga, axis=1)
        norms[norms == 0] = 1.0  # a constant row: t can still go below it, the LP stays feasible
        # ga (x0 + sigma d) + gc >= sigma t ||ga||   <=>   -ga d + ||ga|| t <= (ga x0 + gc) / sigma
        cost = np.zeros(self.dim + 1)
        cost[-1] = -1.0
        res = self.lp.solve(cost, np.hstack([-ga, norms[:, None]]), (ga @ x0 + gc) / sigma,
                            np.append((self.lo - x0) / sigma, -np.inf), np.append((self.hi - x0) / sigma,
                                                                                  _T_CAP * self.scale / sigma))
        if res.status != "optimal":
            return None, 0.0, None
        x = np.clip(x0 + sigma * res.x[:-1], self.lo, self.hi)  # the solver's tolerance may step outside
        return x, sigma * float(res.x[-1]), res.y

    def _proves_empty(self, pieces: np.ndarray, j: np.ndarray, s: np.ndarray, bp: np.ndarray,
                      y: np.ndarray) -> bool:
        """The region of ``pieces`` and the box share no interior point, by a certificate checked
        in exact arithmetic (:func:`~lipbound.methods.lp.proves_no_interior`) on the region's
        rows, proposed by the LP's multipliers ``y`` of those rows."""
        a, c, scale = self.forms(pieces, self.integers)
        used = np.flatnonzero(y > 0)
        rows_a = [[Fraction(int(s[r]) * v, scale[j[r]]) for v in a[j[r]]] for r in used]
        rows_c = [int(s[r]) * (Fraction(c[j[r]], scale[j[r]]) - Fraction(float(bp[r]))) for r in used]
        return proves_no_interior(np.array(rows_a, dtype=object).reshape(-1, self.dim), np.array(rows_c, dtype=object),
                                  y[used], self.lo, self.hi)

    # ---- bounds -------------------------------------------------------------------------
    def _upper(self, pieces: np.ndarray) -> float:
        """Certified bound of ``||J_P||`` over the completions of ``pieces`` (module doc of
        :mod:`~lipbound.methods.exact`): each free neuron's slope lies in its interval
        ``[slope_lo, slope_hi]`` on the region. The largest norm over the vertices of those
        intervals when few free neurons are unstable, else the smallest of AutoLip and of two
        enclosures of the set of Jacobians followed at each layer by the AutoLip product of the
        remaining layers (and at the end by nothing)."""
        rest = np.arange(len(pieces), self.n_neurons)
        free = rest[~self.stable[rest]]
        if len(free) <= _VERTEX_FREE and ((1 << len(free)) * max(self.sizes + [self.w[-1].shape[0]]) * self.dim
                                          <= _VERTEX_SIZE):
            return self._vertex_max(pieces, rest, free)
        fixed = self.slopes(pieces)
        best = self.autolip
        c = self.w[0]
        r = np.zeros_like(c)  # entry-wise radius: |J - C| <= R
        rho = 0.0  # spectral radius: ||J - C||_2 <= rho
        for m in range(len(self.sizes)):
            lo, hi = self.offsets[m], self.offsets[m + 1]
            dc = (self.slope_lo[lo:hi] + self.slope_hi[lo:hi]) / 2
            dr = (self.slope_hi[lo:hi] - self.slope_lo[lo:hi]) / 2
            k = max(0, min(len(pieces), hi) - lo)
            if k:
                dc[:k] = fixed[lo:lo + k]
                dr[:k] = 0.0
            # (dc + dr e)(C + E) = dc C + [dc E + dr e C + dr e E], |e| <= 1 element-wise
            spreading = dr > 0
            spread = spectral(dr[spreading, None] * c[spreading]) if spreading.any() else 0.0
            rho = np.abs(dc).max(initial=0.0) * rho + spread + dr.max(initial=0.0) * rho
            r = np.abs(dc)[:, None] * r + dr[:, None] * (np.abs(c) + r)
            c = dc[:, None] * c
            best = min(best, _enclosure_norm(c, r, rho) * self.tail[m])
            w = self.w[m + 1]
            c, r, rho = w @ c, np.abs(w) @ r, self.norms[m + 1] * rho
        return min(best, _enclosure_norm(c, r, rho))

    def _vertex_max(self, pieces: np.ndarray, rest: np.ndarray, free: np.ndarray) -> float:
        """``max ||J||`` over the completions of ``pieces`` where each ``free`` (unstable) neuron
        takes an end of its slope interval, existing or not, and every other neuron of ``rest``
        its one slope: ``J`` is affine in each slope separately, so its norm is convex in each and
        its maximum over the intervals (which hold every completion's slopes) is reached at their
        end points, which are all enumerated (batched SVDs)."""
        high = ((np.arange(1 << len(free))[:, None] >> np.arange(len(free))) & 1).astype(bool)
        d = np.empty((len(high), self.n_neurons))
        d[:, :len(pieces)] = self.slopes(pieces)
        d[:, rest] = self.slope_lo[rest]
        d[:, free] = np.where(high, self.slope_hi[free], self.slope_lo[free])
        return float(np.linalg.svd(self.jacobians(d), compute_uv=False)[:, 0].max())

    def upper(self) -> float:
        """Certified upper bound so far: the largest open node's bound (AutoLip before the root is
        bounded), the best witness, or a leaf kept without one."""
        if not self.rooted:
            return max(self.autolip, self.best)
        top = -self.heap[0].key[0] if self.heap else -math.inf
        return max(top, self.best, self.uncertain_max)

    def sample_seconds(self, batch: int) -> float:
        """Predicted seconds of :meth:`sample` on ``batch`` points: their pre-activations with
        rounding bounds (three products per layer), Jacobians and SVDs."""
        dims = [self.dim] + self.sizes
        forward = 3 * batch * sum(a * b for a, b in zip(dims, dims[1:]))
        return (macs_seconds(forward + self.jacobian_macs(batch))
                + batch * svd_seconds(self.w[-1].shape[0], self.dim))

    def step_seconds(self) -> float:
        """Predicted seconds of one node (:meth:`_expand`: an LP and two children's
        :meth:`_upper`, each up to three SVDs of an interval matrix per hidden layer and its
        products with the next layer), at the rates of :mod:`~lipbound.methods.work_plan`."""
        rows = self.sizes + [self.w[-1].shape[0]]
        bound = sum(3 * svd_seconds(n, self.dim) + macs_seconds(2 * rows[m + 1] * n * self.dim)
                    for m, n in enumerate(self.sizes))
        lp = svd_seconds(self.n_neurons, self.dim + 1)  # a dense simplex of that size: about one factorisation
        return 2 * bound + lp

    # ---- search -------------------------------------------------------------------------
    def _settle(self, pieces: np.ndarray, point: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """``pieces`` followed by the one piece of each stable neuron after it (up to the next
        unstable one), and ``point`` if it is still verified for them (else None: an LP decides)."""
        end = len(pieces)
        while end < self.n_neurons and self.stable[end]:
            end += 1
        if end == len(pieces):
            return pieces, point
        pieces = np.concatenate([pieces, self.first[len(pieces):end]])
        return pieces, (point if point is not None and self._inside(pieces, point) else None)

    def _push(self, pieces: np.ndarray, point: np.ndarray | None) -> None:
        pieces, point = self._settle(pieces, point)
        ub = self._upper(pieces)
        if ub <= self.best * (1 + self.rtol):
            return
        heapq.heappush(self.heap, _Node((-ub, -len(pieces)), pieces, point, ub))

    def run(self, deadline: float, progress: bool, center: np.ndarray, max_nodes: int) -> str:
        """Best-first search from the root (no neuron fixed), whose region is the whole domain
        with ``center`` as its interior point, for at most ``max_nodes`` nodes (a work cap, the
        same on every machine); ``deadline`` (a ``time.perf_counter()`` value) is an outer cap: a
        step (bounding the root, expanding a node) starts only if its predicted seconds
        (:meth:`step_seconds`, or the last step's when longer) fit before it. Returns the status:
        ``"solved"``, ``"node cap reached"`` or ``"time budget spent"``."""
        self.sample(center[None])
        predicted = step = self.step_seconds()
        if time.perf_counter() + step / 2 > deadline:  # the root is bounded once, not twice
            return "time budget spent"
        self._push(np.zeros(0, dtype=int), center)
        self.rooted = True
        bar = tqdm(desc="exact", unit="node", disable=not progress, leave=False)
        status = "solved"
        while self.heap:
            if -self.heap[0].key[0] <= self.best * (1 + self.rtol):
                break
            if self.nodes >= max_nodes:
                status = "node cap reached"
                break
            start = time.perf_counter()
            if start + step > deadline:
                status = "time budget spent"
                break
            node = heapq.heappop(self.heap)
            self.nodes += 1
            if progress and self.nodes % 50 == 0:
                bar.update(50)
                bar.set_postfix_str(f"lower {self.best:.6g} upper {self.upper():.6g}")
            self._expand(node)
            step = max(predicted, time.perf_counter() - start)
        bar.close()
        return status

    def _expand(self, node: _Node) -> None:
        pieces, point = node.pieces, node.point
        if point is None:
            verdict, point = self.check_region(pieces)
            if verdict == "none":
                return
            if point is not None:
                self.sample(point[None])
        depth = len(pieces)
        if depth == self.n_neurons:  # a leaf: its verified point's Jacobian was sampled if it is a witness
            if point is None:
                self.uncertain += 1
            elif not self._accepted(point[None])[0][0]:  # e.g. outside an L2 ball: no lower bound from it
                self.unwitnessed += 1
            else:
                return
            self.uncertain_max = max(self.uncertain_max, node.upper)
            return
        if not self.varying(pieces)[depth]:  # a constant: one child, it is the parent's region
            self._push(np.append(pieces, self._constant_piece(pieces)), point)
            return
        carried = None  # the child that contains the verified point
        if point is not None:
            piece, clear, _ = self.pieces_at(point[None])
            carried = piece[0, depth] if clear[0, depth] else None
        for p in range(self.first[depth], self.last[depth] + 1):  # the pieces usable on the region
            self._push(np.append(pieces, p), point if p == carried else None)


def _enclosure_norm(c: np.ndarray, r: np.ndarray, rho: float) -> float:
    """``||C||_2 + min(||R||_2, rho) >= ||J||_2`` for every ``J`` with ``|J - C| <= R`` entry-wise
    and ``||J - C||_2 <= rho``."""
    out = spectral(c)
    if rho == 0.0:
        return out
    return out + min(rho, spectral(r))

