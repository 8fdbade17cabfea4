"""Exact Lipschitz constant of a small ReLU / LeakyReLU network, ``"exact"`` (DESIGN §6).

For ``f = W_K s(W_{K-1} ... s(W_1 x + c_1) ...) + c_K`` with two-slope activations ``s``
(:mod:`~lipbound.methods.piecewise`), ``f`` is affine on each **linear region** (inputs with a
fixed sign pattern of all pre-activations), with Jacobian ``J_P = W_K D_{K-1} ... D_1 W_1``. The
regions with non-empty interior cover the domain up to a null set, so (Rademacher)

    ``L(f) = max { ||J_P||_2 : P a pattern whose region has an interior point in the domain }``.

Biases matter: they decide which regions exist. The maximum is found by **branch and bound** over
patterns, fixing neurons layer by layer (the pre-activations of layer ``l`` are affine in ``x``
once the layers before it are fixed):

* **Existence** of a partial pattern's region is an LP (HiGHS, :mod:`~lipbound.methods.lp`):
  maximise ``t`` subject to ``s_j (a_j^T x + c_j) >= t ||a_j||`` for every fixed neuron ``j`` with
  sign ``s_j`` (``t`` is then the radius of a ball inside the region: a well-centred interior
  point) and ``x`` in the box domain. The LP's point is then checked directly by a float64
  forward pass: the region exists when every fixed neuron has the required strict sign there. A
  region whose LP optimum is ``t <= 0`` (up to ``1e-9`` relative) has no interior and is dropped;
  one whose existence stays unclear is kept for the upper bound but gives no lower bound.
  A child that contains its parent's interior point (on the side of the new neuron where that
  point lies) needs no LP.
* **Certified upper bound** of a node: the Jacobians of all completions lie in an interval matrix
  ``[C - R, C + R]`` obtained by midpoint-radius interval arithmetic through the layers (fixed
  neurons contribute their exact slope, free ones the interval ``[a, b]``); then
  ``||J|| <= ||C||_2 + ||R||_2`` (``|J - C| <= R`` entry-wise and the spectral norm is monotone on
  non-negative matrices). A second enclosure keeps ``||J - C||_2 <= rho``: a slope
  ``d = d_c + d_r e`` (``|e| <= 1``) applied to ``C + E`` adds
  ``|d_c| rho + ||d_r C||_2 + |d_r| rho`` (a diagonal with entries in ``[-1, 1]`` does not increase
  a row-scaled norm), a layer ``W`` multiplies ``rho`` by ``||W||_2``; the smaller radius is
  used. At every layer the enclosure so far can instead be followed by the AutoLip product of the
  remaining layers' norms; the node's bound is the smallest of these. All
  norms are exact float64 SVDs, and the final value gets the ``1 + 1e-9`` margin of
  :data:`~lipbound.linalg.spectral.CERTIFIED_RTOL`. Near the leaves (at most 8 free neurons) the
  bound is instead the largest ``||J||`` over all completions of the pattern, enumerated: ``J`` is
  affine in each slope, so the maximum over the slope box is reached at a vertex. At a leaf it is
  ``||J_P||`` itself.
* **Witnessed lower bound**: the Jacobian of the network at every interior point an LP returns,
  and before the search at random points of the domain and at the best point of a short
  :mod:`~lipbound.methods.lower` search; its norm by SVD; the witness is that
  point with the top right singular vector (:func:`lipbound.witness_value` re-checks it).

Nodes are explored best-first by upper bound; those whose bound does not exceed the best lower
bound are pruned. When the largest open bound meets the lower bound the result is of kind
``exact``. On a time-out (``time_budget``) the result is the best **certified upper** bound with
the witnessed lower bound in ``details["lower"]`` (and its witness in ``Result.witness``), never a
guess. The number of regions grows exponentially with the number of neurons (the problem is
NP-hard); expect this to finish for up to a few dozen ReLUs.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..linalg.spectral import CERTIFIED_RTOL
from ..report import Result
from .region import Box, as_box
from .lower import lower as lower_search
from .lp import DenseLP
from .piecewise import DenseLayer, mlp_layers

__all__ = ["exact", "MAX_DENSE"]

MAX_DENSE = 20_000_000  # refuse networks whose interval matrices (neurons x inputs) exceed this
_T_CAP = 1.0  # cap of the LP's ball radius (unbounded regions)
_T_NONE = 1e-9  # LP radius (relative to the problem's scale) at or below which a region has no interior
_VERTEX_FREE = 8  # with at most this many free neurons, bound a node by enumerating its completions
_VERTEX_SIZE = 4_000_000  # ... when the batch of Jacobians has at most this many entries


def exact(graph: Graph, *, seed: int = 0, progress: bool = False, domain: Any = None,
          time_budget: float = 60.0, rtol: float = 1e-9, samples: int = 256,
          lower_budget: float = 5.0) -> Result:
    """Exact Lipschitz constant (L2 -> L2) of a chain of affine layers and ReLU/LeakyReLU
    activations by branch and bound over activation patterns (module doc).

    Args:
        graph: the network; anything but an MLP-like chain raises :class:`NotApplicable`.
        seed: seed of the random points sampled before the search.
        progress: progress bar on stderr.
        domain: None (all of ``R^n``) or a box ``(low, high)``.
        time_budget: seconds before returning the certified upper bound found so far.
        rtol: stop when the upper bound is within this relative gap of the lower bound.
        samples: random points whose Jacobians seed the lower bound.
        lower_budget: seconds of the ``lower`` method's search (at most a quarter of
            ``time_budget``) whose best point also seeds the lower bound; 0 to skip.

    Returns:
        ``Result`` of kind ``exact`` (value = witnessed lower = certified upper within ``rtol``),
        or ``certified_upper`` on a time-out, with ``details`` (``lower``, ``upper``, ``search_nodes``,
        ``lps``, ``uncertain_regions``) and the lower bound's witness.
    """
    if not (time_budget > 0 and rtol >= 0 and samples >= 0):
        raise InvalidInput("exact: time_budget must be > 0, rtol >= 0 and samples >= 0")
    t0 = time.perf_counter()
    try:
        layers = mlp_layers(graph, method="exact")
    except UnsupportedOperation as exc:
        raise NotApplicable(f"exact: {exc}") from None
    size = sum(l.weight.shape[0] for l in layers[:-1]) * layers[0].weight.shape[1]
    if size > MAX_DENSE:
        raise NotApplicable(f"exact: too large ({size:.3g} interval-matrix entries > {MAX_DENSE:.3g})")
    box = as_box(domain, graph.input_shape)
    bb = _BranchAndBound(layers, box, rtol)
    gen = torch.Generator().manual_seed(seed)
    bb.sample(_sample_points(samples, bb.dim, box, gen).numpy())
    if lower_budget > 0:  # a good lower bound early prunes most of the tree
        found = lower_search(graph, seed=seed, domain=domain, time_budget=min(lower_budget, time_budget / 4),
                             steps=100, pairs=False)
        bb.sample(found.witness["x"].reshape(1, -1).to(torch.float64).numpy())
    center = np.zeros(bb.dim) if box is None else ((box.low + box.high) / 2).flatten().numpy()
    status = bb.run(t0 + time_budget, progress, center)
    upper = bb.upper() * (1 + CERTIFIED_RTOL)
    lower = bb.best
    witness = None
    if bb.best_x is not None:
        witness = {"form": "jacobian", "x": torch.from_numpy(bb.best_x).reshape(graph.input_shape),
                   "v": torch.from_numpy(bb.best_v).reshape(graph.input_shape)}
    details = {"lower": lower if lower > -math.inf else None, "upper": upper, "status": status,
               "neurons": bb.n_neurons, "search_nodes": bb.nodes, "lps": bb.lps,
               "uncertain_regions": bb.uncertain, "domain": "R^n" if box is None else box.describe()}
    is_exact = status == "solved" and lower > -math.inf and upper <= lower * (1 + rtol) + 1e-300
    if is_exact:
        return Result("exact", lower, "exact", time.perf_counter() - t0, witness=witness, details=details)
    return Result("exact", upper, "certified_upper", time.perf_counter() - t0, witness=witness, details=details)


def _sample_points(n: int, dim: int, box: Box | None, gen: torch.Generator) -> torch.Tensor:
    if box is not None:
        return box.sample(n, gen).reshape(n, dim)
    x = torch.randn((n, dim), generator=gen, dtype=torch.float64)
    return x * torch.logspace(-1, 1, n, dtype=torch.float64).reshape(-1, 1)[torch.randperm(n, generator=gen)]


@dataclass(order=True)
class _Node:
    key: tuple[float, int]  # (-upper bound, -depth): best first, deeper first on ties
    signs: np.ndarray = field(compare=False)  # +1 / -1 for the first `depth` neurons (layer order)
    point: np.ndarray | None = field(compare=False)  # a verified interior point, None: unverified
    upper: float = field(compare=False)


class _BranchAndBound:
    """The search over one MLP (module doc), in float64 numpy."""

    def __init__(self, layers: list[DenseLayer], box: Box | None, rtol: float) -> None:
        self.w = [l.weight.numpy() for l in layers]
        self.b = [l.bias.numpy() for l in layers]
        self.slopes = [l.slopes for l in layers[:-1]]
        self.sizes = [w.shape[0] for w in self.w[:-1]]
        self.offsets = np.cumsum([0] + self.sizes)
        self.n_neurons = int(self.offsets[-1])
        self.dim = self.w[0].shape[1]
        self.rtol = rtol
        self.lo = np.full(self.dim, -np.inf) if box is None else box.low.flatten().numpy()
        self.hi = np.full(self.dim, np.inf) if box is None else box.high.flatten().numpy()
        self.norms = [_spectral(w) for w in self.w]
        lips = [max(abs(a), abs(b)) for a, b in self.slopes]
        # AutoLip of everything after hidden layer m's activation, and of the whole network
        self.tail = [math.prod(self.norms[m + 1:]) * math.prod(lips[m + 1:]) for m in range(len(self.sizes))]
        self.autolip = math.prod(self.norms) * math.prod(lips)
        finite = np.abs(np.concatenate([self.lo, self.hi]))
        self.scale = (1.0 + max(np.abs(b).max(initial=0.0) for b in self.b)
                      + float(finite[np.isfinite(finite)].max(initial=0.0)))
        self.lp = DenseLP()
        self.best = -math.inf
        self.best_x: np.ndarray | None = None
        self.best_v: np.ndarray | None = None
        self.uncertain_max = -math.inf
        self.nodes = self.lps = self.uncertain = 0
        self.heap: list[_Node] = []

    # ---- the network at points ----------------------------------------------------------
    def _slope(self, m: int, positive: np.ndarray) -> np.ndarray:
        a, b = self.slopes[m]
        return np.where(positive, b, a)

    def _preactivations(self, x: np.ndarray) -> list[np.ndarray]:
        """Pre-activations of every hidden layer at a batch ``x (B, n)``."""
        zs, h = [], x
        for m, (w, b) in enumerate(zip(self.w[:-1], self.b[:-1])):
            z = h @ w.T + b
            zs.append(z)
            h = self._slope(m, z >= 0) * z
        return zs

    def sample(self, x: np.ndarray) -> None:
        """Lower bound from the Jacobians at points ``x (B, n)`` (slope ``b`` where ``z > 0``,
        the autograd convention of ReLU/LeakyReLU)."""
        if len(x) == 0:
            return
        j = np.broadcast_to(self.w[0], (len(x), *self.w[0].shape))
        for m, z in enumerate(self._preactivations(x)):
            j = self.w[m + 1] @ (self._slope(m, z > 0)[:, :, None] * j)
        _, s, vh = np.linalg.svd(j, full_matrices=False)
        i = int(np.argmax(s[:, 0]))
        if s[i, 0] > self.best:
            self.best, self.best_x, self.best_v = float(s[i, 0]), x[i].copy(), vh[i, 0].copy()

    # ---- regions ------------------------------------------------------------------------
    def _lp(self, signs: np.ndarray) -> tuple[str, np.ndarray | None]:
        """``("exists", point)``, ``("none", None)`` or ``("uncertain", point or None)``."""
        self.lps += 1
        rows, rhs = [], []
        a, c = np.eye(self.dim), np.zeros(self.dim)
        for m, (w, b) in enumerate(zip(self.w[:-1], self.b[:-1])):
            lo = self.offsets[m]
            k = min(len(signs), self.offsets[m + 1]) - lo
            if k <= 0:
                break
            a, c = w @ a, w @ c + b
            s = signs[lo:lo + k].astype(np.float64)
            # s (a x + c) >= t ||a||   <=>   -s a x + ||a|| t <= s c
            rows.append(np.hstack([-s[:, None] * a[:k], np.linalg.norm(a[:k], axis=1)[:, None]]))
            rhs.append(s * c[:k])
            d = self._slope(m, s > 0) if k == self.sizes[m] else None
            if d is None:
                break
            a, c = d[:, None] * a, d * c
        cost = np.zeros(self.dim + 1)
        cost[-1] = -1.0
        res = self.lp.solve(cost, np.vstack(rows), np.concatenate(rhs), np.append(self.lo, -np.inf),
                            np.append(self.hi, _T_CAP * self.scale))
        if res.status == "infeasible":
            return "none", None
        if res.status != "optimal":
            return "uncertain", None
        if res.x[-1] <= _T_NONE * self.scale:
            return "none", None
        x = np.clip(res.x[:-1], self.lo, self.hi)  # the solver's tolerance may step outside the box
        return ("exists" if self._check(signs, x) else "uncertain"), x

    def _check(self, signs: np.ndarray, x: np.ndarray) -> bool:
        """Every fixed neuron has its strict sign at ``x`` (float64 forward pass)."""
        z = np.concatenate(self._preactivations(x[None]), 1)[0, : len(signs)]
        return bool((signs * z > 0).all())

    # ---- bounds -------------------------------------------------------------------------
    def _upper(self, signs: np.ndarray) -> float:
        """Certified bound of ``||J_P||`` over the completions of ``signs`` (module doc): the
        largest norm over all completions when they are few, else the smallest of AutoLip and of
        two enclosures of the set of Jacobians followed at each layer by the AutoLip product of
        the remaining layers (and at the end by nothing)."""
        free = self.n_neurons - len(signs)
        if free <= _VERTEX_FREE and (1 << free) * max(self.sizes + [self.w[-1].shape[0]]) * self.dim <= _VERTEX_SIZE:
            return self._vertex_max(signs, free)
        best = self.autolip
        c = self.w[0]
        r = np.zeros_like(c)  # entry-wise radius: |J - C| <= R
        rho = 0.0  # spectral radius: ||J - C||_2 <= rho
        for m, (a, b) in enumerate(self.slopes):
            lo, hi = self.offsets[m], self.offsets[m + 1]
            dc = np.full(hi - lo, (a + b) / 2)
            dr = np.full(hi - lo, abs(b - a) / 2)
            k = max(0, min(len(signs), hi) - lo)
            if k:
                dc[:k] = self._slope(m, signs[lo:lo + k] > 0)
                dr[:k] = 0.0
            # (dc + dr e)(C + E) = dc C + [dc E + dr e C + dr e E], |e| <= 1 element-wise
            free = dr > 0
            spread = _spectral(dr[free, None] * c[free]) if free.any() else 0.0
            rho = np.abs(dc).max() * rho + spread + dr.max() * rho
            r = np.abs(dc)[:, None] * r + dr[:, None] * (np.abs(c) + r)
            c = dc[:, None] * c
            best = min(best, _enclosure_norm(c, r, rho) * self.tail[m])
            w = self.w[m + 1]
            c, r, rho = w @ c, np.abs(w) @ r, self.norms[m + 1] * rho
        return min(best, _enclosure_norm(c, r, rho))

    def _vertex_max(self, signs: np.ndarray, free: int) -> float:
        """``max ||J||`` over every completion of ``signs``, existing or not: ``J`` is affine in
        each slope separately, so its norm is convex in each and the maximum over the slope
        intervals is reached at their end points, which are all enumerated (batched SVDs)."""
        tails = ((np.arange(1 << free)[:, None] >> np.arange(free)) & 1) * 2 - 1
        patterns = np.hstack([np.broadcast_to(signs, (len(tails), len(signs))), tails])
        j = np.broadcast_to(self.w[0], (len(tails), *self.w[0].shape))
        for m in range(len(self.sizes)):
            d = self._slope(m, patterns[:, self.offsets[m]:self.offsets[m + 1]] > 0)
            j = self.w[m + 1] @ (d[:, :, None] * j)
        return float(np.linalg.svd(j, compute_uv=False)[:, 0].max())

    def upper(self) -> float:
        top = -self.heap[0].key[0] if self.heap else -math.inf
        return max(top, self.best, self.uncertain_max)

    # ---- search -------------------------------------------------------------------------
    def _push(self, signs: np.ndarray, point: np.ndarray | None) -> None:
        ub = self._upper(signs)
        if ub <= self.best * (1 + self.rtol):
            return
        heapq.heappush(self.heap, _Node((-ub, -len(signs)), signs, point, ub))

    def run(self, deadline: float, progress: bool, center: np.ndarray) -> str:
        self._push(np.zeros(0, dtype=np.int8), center)  # no constraint: any point is interior
        bar = tqdm(desc="exact", unit="node", disable=not progress, leave=False)
        status = "solved"
        while self.heap:
            if -self.heap[0].key[0] <= self.best * (1 + self.rtol):
                break
            if time.perf_counter() >= deadline:
                status = "time budget spent"
                break
            node = heapq.heappop(self.heap)
            self.nodes += 1
            if progress and self.nodes % 50 == 0:
                bar.update(50)
                bar.set_postfix_str(f"lower {self.best:.6g} upper {self.upper():.6g}")
            self._expand(node)
        bar.close()
        return status

    def _expand(self, node: _Node) -> None:
        signs, point = node.signs, node.point
        uncertain = False
        if point is None:
            verdict, point = self._lp(signs)
            if verdict == "none":
                return
            uncertain = verdict == "uncertain"
            if not uncertain:
                self.sample(point[None])
        depth = len(signs)
        if depth == self.n_neurons:  # a leaf: the Jacobian at its interior point is its region's
            if uncertain:
                self.uncertain += 1
                self.uncertain_max = max(self.uncertain_max, node.upper)
            else:
                self.sample(point[None])
            return
        z = None if uncertain else np.concatenate(self._preactivations(point[None]), 1)[0, depth]
        for s in (1, -1):
            child = np.append(signs, np.int8(s))
            self._push(child, point if z is not None and s * z > 0 else None)


def _enclosure_norm(c: np.ndarray, r: np.ndarray, rho: float) -> float:
    """``||C||_2 + min(||R||_2, rho) >= ||J||_2`` for every ``J`` with ``|J - C| <= R`` entry-wise
    and ``||J - C||_2 <= rho``."""
    out = _spectral(c)
    if rho == 0.0:
        return out
    return out + min(rho, _spectral(r))


def _spectral(m: np.ndarray) -> float:
    """``||M||_2`` by a float64 SVD (LAPACK, accurate to a few ulps)."""
    return float(np.linalg.svd(m, compute_uv=False)[0]) if m.size else 0.0
