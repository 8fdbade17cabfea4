"""Exact Lipschitz constant (L2 -> L2) of a small piecewise-linear network, ``"exact"`` (DESIGN §6, §8).

For ``f = W_K s_{K-1}(W_{K-1} ... s_1(W_1 x + c_1) ...) + c_K`` with continuous piecewise-linear
activations ``s_m`` (ReLU, LeakyReLU, Abs, ReLU6, Hardtanh, Clip, HardSigmoid:
:mod:`~lipbound.methods.piecewise`), ``f`` is affine on each **linear region** of a *piece pattern*
``P`` (a piece of its activation for every neuron): the closed polyhedron where every
pre-activation lies in its piece. There ``Df = J_P = W_K D_{K-1} ... D_1 W_1``, ``D_m`` holding the
pieces' slopes. The regions with an interior point in the domain cover it up to a null set, so
(Rademacher; on a box ``X``, ``L_X`` is the sup over its interior, DESIGN §7)

    ``L(f) = max { ||J_P||_2 : P's region has an interior point in the domain }``.

Biases matter: they decide which regions exist. The maximum is found by **branch and bound** over
piece patterns, fixing neurons layer by layer (the pre-activations of layer ``l`` are affine in
``x`` once the layers before it are fixed). Branching on pieces is branching on the units of the
equivalent wider ReLU network (:mod:`~lipbound.methods.piecewise`), with its empty combinations
left out.

* **Existence** of a partial pattern's region is decided by proofs only; an LP (HiGHS,
  :mod:`~lipbound.methods.lp`) proposes them. It maximises ``t`` subject to
  ``s (z_j(x) - bp) >= t ||a_j||`` for each breakpoint ``bp`` bounding the piece of a fixed neuron
  ``j`` (``z_j = a_j x + c_j``, ``s = +1`` below it, ``-1`` above), ``x`` in the box domain.
  - The region **exists** when the LP's point (clipped to the box) has every fixed pre-activation
    inside its piece by more than the rounding bound of its float64 evaluation
    (:meth:`_BranchAndBound.pieces_at`): a neighbourhood of that point of the closed box lies in the
    region and meets the open box.
  - The region is **empty** (dropped) only on a certificate, read from the LP's dual and checked
    in exact rational arithmetic from the float64 weights
    (:func:`~lipbound.methods.lp.proves_no_interior`), that the region and the box have no common
    interior point.
  - A thin region is blurred by the solver's tolerance (``1e-7``): when the first LP's point is
    neither verified nor proved empty, up to 3 more LPs re-solve it in coordinates magnified around
    that point (slabs down to ``1e-15`` wide are found).
  - Otherwise it is **uncertain**: it is kept and branched; an uncertain leaf's ``||J_P||`` stays in
    the upper bound and gives no lower bound, so the result is at worst ``certified_upper``. A
    tiny LP radius proves nothing: a slab of width ``1e-9`` is a region (and one with no float64
    point inside can be neither verified nor refuted).
  A child that contains its parent's verified point (with the same margin) needs no LP. A neuron
  whose pre-activation is constant on the region (no path of non-zero weights and slopes reaches
  it from the input) constrains nothing: its one child takes the piece of its exact value (either
  one on a breakpoint: its slope multiplies a zero row), and witnesses need no margin from its
  breakpoints.
* **Certified upper bound** of a node: the Jacobians of all completions lie in an interval matrix
  ``[C - R, C + R]`` obtained by midpoint-radius interval arithmetic through the layers (fixed
  neurons contribute their exact slope, free ones the hull ``[a, b]`` of their activation's
  slopes); then ``||J|| <= ||C||_2 + ||R||_2`` (``|J - C| <= R`` entry-wise and the spectral norm is
  monotone on non-negative matrices). A second enclosure keeps ``||J - C||_2 <= rho``: a slope
  ``d = d_c + d_r e`` (``|e| <= 1``) applied to ``C + E`` adds
  ``|d_c| rho + ||d_r C||_2 + |d_r| rho`` (a diagonal with entries in ``[-1, 1]`` does not increase
  a row-scaled norm), a layer ``W`` multiplies ``rho`` by ``||W||_2``; the smaller radius is
  used. At every layer the enclosure so far can instead be followed by the AutoLip product of the
  remaining layers' norms; the node's bound is the smallest of these. All
  norms are exact float64 SVDs, and the final value gets the ``1 + 1e-9`` margin of
  :data:`~lipbound.linalg.spectral.CERTIFIED_RTOL`. Near the leaves (at most 8 free neurons) the
  bound is instead the largest ``||J||`` over the completions' slopes at the ends of the hulls:
  ``J`` is affine in each slope, so its maximum over the slope box is reached at a vertex. At a
  leaf it is ``||J_P||`` itself.
* **Witnessed lower bound**: the Jacobian of the network at every verified point an LP returns,
  and before the search at random points of the domain and at the best point of a short
  :mod:`~lipbound.methods.lower` search, each **accepted only** in the closed box with every
  pre-activation off every breakpoint by more than its rounding bound (DESIGN §8: elsewhere the
  Jacobian may belong to no region, e.g. on a box face or a kink); its norm by SVD; the witness is
  that point with the top right singular vector (:func:`lipbound.witness_value` re-checks it).

Nodes are explored best-first by upper bound; those whose bound does not exceed the best lower
bound are pruned. When the largest open bound meets the lower bound the result is of kind
``exact``. On a time-out (``time_budget``) the result is the best **certified upper** bound with
the witnessed lower bound in ``details["lower"]`` (and its witness in ``Result.witness``), never a
guess. A network without kinks (no hidden layer, or affine activations only) is one affine map
per pattern: its norm is exact. The number of regions grows exponentially with the number of
neurons (the problem is NP-hard); expect this to finish for up to a few dozen ReLU units.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..linalg.spectral import CERTIFIED_RTOL
from ..report import Result
from .region import Box, as_box
from .witness import PointWitness
from .lower import lower as lower_search
from .lp import DenseLP, proves_no_interior
from .piecewise import DenseLayer, count_two_slope_neurons, mlp_layers

__all__ = ["exact", "MAX_DENSE"]

MAX_UNITS = 2048  # refuse networks with more piecewise-linear units (kinks of all neurons) than this
MAX_DENSE = 20_000_000  # refuse networks whose interval matrices (neurons x inputs) exceed this
_T_CAP = 1.0  # cap of the LP's ball radius (unbounded regions), relative to the problem's scale
_VERTEX_FREE = 8  # with at most this many free neurons, bound a node by enumerating its completions
_VERTEX_SIZE = 4_000_000  # ... when the batch of Jacobians has at most this many entries
_REFINE = 3  # LPs zooming in on a region whose first LP point is neither verified nor proved empty
_ZOOM = 1e-6  # their first magnification (relative to the scale) when that LP found no positive radius
_UNIT_ROUNDOFF = 2.0 ** -53  # float64
_TINY = float(np.finfo(np.float64).tiny)  # the least normal float64: a bound of each operation's underflow


def exact(graph: Graph, *, seed: int = 0, progress: bool = False, domain: Any = None,
          time_budget: float = 60.0, rtol: float = 1e-9, samples: int = 256,
          lower_budget: float = 5.0) -> Result:
    """Exact Lipschitz constant (L2 -> L2) of a chain of affine layers and continuous
    piecewise-linear activations (ReLU, LeakyReLU, Abs, ReLU6, Hardtanh, Clip, HardSigmoid) by
    branch and bound over piece patterns (module doc).

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
        or ``certified_upper`` on a time-out or when a region's existence stays undecided, with
        ``details`` (``lower``, ``upper``, ``search_nodes``, ``lps``, ``empty_regions`` (proved
        empty), ``uncertain_regions``) and the lower bound's witness.
    """
    if not (time_budget > 0 and rtol >= 0 and samples >= 0):
        raise InvalidInput("exact: time_budget must be > 0, rtol >= 0 and samples >= 0")
    t0 = time.perf_counter()
    units = count_two_slope_neurons(graph)
    if units is not None and units > MAX_UNITS:  # before anything is materialised
        raise NotApplicable(f"exact: {units} piecewise-linear units (> {MAX_UNITS}): a branch and bound over "
                            "their patterns cannot finish; exact is for nets with a few dozen")
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
    if lower_budget > 0 and bb.kinked:  # a good lower bound early prunes most of the tree
        found = lower_search(graph, seed=seed, domain=domain, time_budget=min(lower_budget, time_budget / 4),
                             steps=100, pairs=False)
        if found.witness is not None:
            bb.sample(found.witness["x"].reshape(1, -1).to(torch.float64).numpy())
    center = np.zeros(bb.dim) if box is None else ((box.low + box.high) / 2).flatten().numpy()
    status = bb.run(t0 + time_budget, progress, center)
    upper = bb.upper() * (1 + CERTIFIED_RTOL)
    lower, witness = bb.best, None
    if bb.best_x is not None:  # the reported lower bound is the witness's re-checked value (rounding margins)
        x, v = (torch.from_numpy(t).reshape(graph.input_shape) for t in (bb.best_x, bb.best_v))
        try:
            lower = PointWitness(x, v).recheck(graph, domain)
            witness = PointWitness(x, v, value=lower)
        except InvalidInput:
            lower = -math.inf
    details = {"lower": lower if lower > -math.inf else None, "upper": upper, "status": status,
               "neurons": bb.n_neurons, "search_nodes": bb.nodes, "lps": bb.lps, "empty_regions": bb.empty,
               "uncertain_regions": bb.uncertain, "domain": "R^n" if box is None else box.describe()}
    # exact: the search's bound (before the certified rounding margin) meets the re-checked lower bound
    is_exact = status == "solved" and lower > -math.inf and bb.upper() <= lower * (1 + rtol) + 1e-300
    if is_exact:
        return Result("exact", lower, "exact", time.perf_counter() - t0, witness=witness, details=details,
                      bracket=(lower, max(upper, lower)))
    return Result("exact", upper, "certified_upper", time.perf_counter() - t0, witness=witness, details=details)


def _sample_points(n: int, dim: int, box: Box | None, gen: torch.Generator) -> torch.Tensor:
    if box is not None:
        return box.sample(n, gen).reshape(n, dim)
    x = torch.randn((n, dim), generator=gen, dtype=torch.float64)
    return x * torch.logspace(-1, 1, n, dtype=torch.float64).reshape(-1, 1)[torch.randperm(n, generator=gen)]


def _gamma(k: int) -> float:
    """``gamma_k = k u / (1 - k u)``: ``|fl(sum of k terms) - sum| <= gamma_k sum |terms|`` for a
    float64 sum of ``k`` exact products or ``k - 1`` rounded ones, in any order (Higham, Accuracy
    and Stability of Numerical Algorithms, §3.1)."""
    return k * _UNIT_ROUNDOFF / (1 - k * _UNIT_ROUNDOFF)


@dataclass
class _Numbers:
    """The network's numbers in one arithmetic: float64 arrays (``unit = 1``), or exact integers
    ``value * unit`` (Python ints in object arrays, ``unit = 2^E``: products of integers are exact
    and about 50 times faster than of fractions). Per hidden layer ``m``, its activation's
    ``breakpoints[m]`` and, per piece, ``slopes[m]`` and ``offsets[m]``."""

    w: list[np.ndarray]
    b: list[np.ndarray]
    breakpoints: list[np.ndarray]
    slopes: list[np.ndarray]
    offsets: list[np.ndarray]
    unit: float | int = 1.0

    @staticmethod
    def of(layers: list[DenseLayer]) -> "_Numbers":
        hidden = [l.pieces for l in layers[:-1]]
        return _Numbers([l.weight.numpy() for l in layers], [l.bias.numpy() for l in layers],
                        [np.array(p.breakpoints, dtype=np.float64) for p in hidden],
                        [np.array(p.slopes, dtype=np.float64) for p in hidden],
                        [np.array(p.offsets, dtype=np.float64) for p in hidden])

    def integer(self) -> "_Numbers":
        """The same numbers as exact integers ``value * 2^E``, ``E`` the least exponent that makes
        every float64 value here an integer."""
        groups = (self.w, self.b, self.breakpoints, self.slopes, self.offsets)
        ratios = [[[float(v).as_integer_ratio() for v in np.ravel(x)] for x in group] for group in groups]
        unit = max((q for group in ratios for x in group for _, q in x), default=1)  # powers of 2
        return _Numbers(*([np.array([p * (unit // q) for p, q in r], dtype=object).reshape(np.shape(x))
                           for x, r in zip(group, group_ratios)]
                          for group, group_ratios in zip(groups, ratios)), unit=unit)


@dataclass(order=True)
class _Node:
    key: tuple[float, int]  # (-upper bound, -depth): best first, deeper first on ties
    pieces: np.ndarray = field(compare=False)  # piece index of the first `depth` neurons (layer order)
    point: np.ndarray | None = field(compare=False)  # a verified interior point, None: unverified
    upper: float = field(compare=False)


class _BranchAndBound:
    """The search over one MLP (module doc), in float64 numpy; proofs of emptiness in exact
    arithmetic."""

    def __init__(self, layers: list[DenseLayer], box: Box | None, rtol: float) -> None:
        self.num = _Numbers.of(layers)
        self._integers: _Numbers | None = None  # exact, built for the first proof
        self.w = self.num.w
        self.sizes = [w.shape[0] for w in self.w[:-1]]
        self.offsets = np.cumsum([0] + self.sizes)
        self.n_neurons = int(self.offsets[-1])
        self.layer = np.repeat(np.arange(len(self.sizes)), self.sizes)  # hidden layer of each neuron
        self.kinked = any(size and len(bp) for size, bp in zip(self.sizes, self.num.breakpoints))
        self.dim = self.w[0].shape[1]
        self.rtol = rtol
        self.lo = np.full(self.dim, -np.inf) if box is None else box.low.flatten().numpy()
        self.hi = np.full(self.dim, np.inf) if box is None else box.high.flatten().numpy()
        self.hull = [(float(s.min()), float(s.max())) for s in self.num.slopes]  # slopes of a free neuron
        self.lips = [max(abs(a), abs(b)) for a, b in self.hull]
        self.norms = [_spectral(w) for w in self.w]
        # AutoLip of everything after hidden layer m's activation, and of the whole network
        self.tail = [math.prod(self.norms[m + 1:]) * math.prod(self.lips[m + 1:]) for m in range(len(self.sizes))]
        self.autolip = math.prod(self.norms) * math.prod(self.lips)
        finite = np.abs(np.concatenate([self.lo, self.hi]))
        self.scale = (1.0 + max(np.abs(b).max(initial=0.0) for b in self.num.b)
                      + max((np.abs(bp).max(initial=0.0) for bp in self.num.breakpoints), default=0.0)
                      + float(finite[np.isfinite(finite)].max(initial=0.0)))
        self.lp = DenseLP()
        self.best = -math.inf
        self.best_x: np.ndarray | None = None
        self.best_v: np.ndarray | None = None
        self.uncertain_max = -math.inf
        self.nodes = self.lps = self.empty = self.uncertain = 0
        self.heap: list[_Node] = []

    # ---- the network at points ----------------------------------------------------------
    def _slopes(self, pieces: np.ndarray) -> np.ndarray:
        """Slopes of the first ``pieces.shape[-1]`` neurons in the given pieces (any batch shape)."""
        out = np.empty(pieces.shape, dtype=np.float64)
        for m in range(len(self.sizes)):
            lo, hi = self.offsets[m], min(self.offsets[m + 1], pieces.shape[-1])
            if hi > lo:
                out[..., lo:hi] = self.num.slopes[m][pieces[..., lo:hi]]
        return out

    def pieces_at(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(piece, clear, varies)`` of every neuron at a batch ``x (B, n)``: the piece of the
        float64 pre-activation ``z^``; whether ``z^`` is off every breakpoint by more than a bound
        ``e`` of ``|z^ - z|``, ``z`` the exact pre-activation (which then lies strictly inside that
        piece); and whether ``z`` may vary near ``x`` (False: constant on a neighbourhood, as
        :meth:`_varying` decides from the pieces found).

        Forward error analysis, ``u = 2^-53``, ``gamma_k = k u / (1 - k u)``: with ``h^`` the float
        input of a layer ``W h + c`` (fan-in ``k``) and ``|h^ - h| <= e_h`` (``e_h = 0`` for ``x``),
        ``|fl(W h^ + c) - (W h + c)| <= |W| e_h + gamma_{k+1} (|W| |h^| + |c|)``; the activation,
        ``fl(a z^ + o)`` with the slope and offset of ``z^``'s piece, then has
        ``e_h' = lip e_z + gamma_2 (|a z^| + |o|)`` (``lip``: the activation's Lipschitz constant).
        Each operation adds at most the least normal number by underflow (even flushed to zero).
        Each bound is evaluated in float64 and doubled, which covers the rounding of its own
        evaluation (a relative ``gamma_{k+2} << 1``).
        """
        h, e, moving = x, np.zeros_like(x), np.ones_like(x, dtype=bool)
        out = [[np.zeros((len(x), 0), dtype=int)], [np.ones((len(x), 0), dtype=bool)],
               [np.ones((len(x), 0), dtype=bool)]]
        for m in range(len(self.sizes)):
            w, b, bp = self.w[m], self.num.b[m], self.num.breakpoints[m]
            aw = np.abs(w)
            z = h @ w.T + b
            ez = 2 * (e @ aw.T + _gamma(w.shape[1] + 1) * (np.abs(h) @ aw.T + np.abs(b))
                      + (w.shape[1] + 1) * _TINY)
            piece = np.searchsorted(bp, z)
            varies = moving.astype(np.float64) @ (w != 0).T > 0
            for part, value in zip(out, (piece, (np.abs(z[..., None] - bp) > ez[..., None]).all(-1), varies)):
                part.append(value)
            a, o = self.num.slopes[m][piece], self.num.offsets[m][piece]
            h = a * z + o
            e = 2 * (self.lips[m] * ez + _gamma(2) * (np.abs(a * z) + np.abs(o)) + 2 * _TINY)
            moving = varies & (a != 0)
        return tuple(np.concatenate(part, 1) for part in out)

    def _varying(self, pieces: np.ndarray) -> np.ndarray:
        """Whether each neuron up to the end of the layer of neuron ``len(pieces)`` may depend on
        ``x`` on the region of ``pieces``. False is exact: no path of non-zero weights and slopes
        reaches it from the input, so its pre-activation is a constant there (its row of ``A`` in
        :meth:`_forms` is zero)."""
        moving, out = np.ones(self.dim, dtype=bool), []
        for m in range(len(self.sizes)):
            varies = (self.w[m] != 0).astype(np.float64) @ moving > 0
            out.append(varies)
            lo, hi = self.offsets[m], self.offsets[m + 1]
            if len(pieces) < hi:
                break
            moving = varies & (self.num.slopes[m][pieces[lo:hi]] != 0)
        return np.concatenate(out)

    def _in_box(self, x: np.ndarray) -> np.ndarray:
        return ((x >= self.lo) & (x <= self.hi)).all(-1)

    def sample(self, x: np.ndarray) -> None:
        """Lower bound from the Jacobians at those points of ``x (B, n)`` that lie in the closed
        box with every pre-activation clear of every breakpoint or constant nearby (:meth:`pieces_at`):
        there ``f`` is affine on a neighbourhood, with the Jacobian of those pieces (a constant
        neuron's slope multiplies a zero row) (DESIGN §8)."""
        piece, clear, varies = self.pieces_at(x)
        keep = self._in_box(x) & (clear | ~varies).all(1)
        if not keep.any():
            return
        x, d = x[keep], self._slopes(piece[keep])
        j = np.broadcast_to(self.w[0], (len(x), *self.w[0].shape))
        for m in range(len(self.sizes)):
            j = self.w[m + 1] @ (d[:, self.offsets[m]:self.offsets[m + 1], None] * j)
        _, s, vh = np.linalg.svd(j, full_matrices=False)
        i = int(np.argmax(s[:, 0]))
        if s[i, 0] > self.best:
            self.best, self.best_x, self.best_v = float(s[i, 0]), x[i].copy(), vh[i, 0].copy()

    # ---- regions ------------------------------------------------------------------------
    def _forms(self, pieces: np.ndarray, num: _Numbers) -> tuple[np.ndarray, np.ndarray, list]:
        """``(A, c, scale)`` with ``z_j(x) = (A_j . x + c_j) / scale_j`` the pre-activation of each
        fixed neuron ``j`` on the region of ``pieces`` (the layers before ``j``'s are fully
        fixed), in ``num``'s arithmetic (``scale`` is a power of ``num.unit``: 1 in float64)."""
        forms_a, forms_c, scales = [], [], []
        a = c = None  # the last hidden layer's output as an affine map of x (None: x itself) ...
        scale = 1  # ... times scale
        for m in range(len(self.sizes)):
            lo = self.offsets[m]
            k = min(len(pieces), self.offsets[m + 1]) - lo
            if k <= 0:
                break
            w, b = num.w[m], num.b[m]
            a, c, scale = (w, b, num.unit) if a is None else (w @ a, w @ c + b * scale, scale * num.unit)
            forms_a.append(a[:k])
            forms_c.append(c[:k])
            scales += [scale] * k
            if k < self.sizes[m]:
                break
            p = pieces[lo:lo + k]
            d, o = num.slopes[m][p], num.offsets[m][p]
            a, c, scale = d[:, None] * a, d * c + o * scale, scale * num.unit
        return np.concatenate(forms_a), np.concatenate(forms_c), scales

    def _constraints(self, pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The region of ``pieces`` as rows ``s (z_j(x) - bp) >= 0``, ``(j, s, bp)`` per row: the
        breakpoints below (``s = 1``) and above (``s = -1``) the piece of each fixed neuron that
        varies (a constant one was given the piece of its value: :meth:`_constant_piece`)."""
        rows = []
        varies = self._varying(pieces)
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
        ``pieces`` (:meth:`_varying`); the lower one on a breakpoint, where both closed pieces hold
        it and the neuron's slope multiplies a zero row."""
        if self._integers is None:
            self._integers = self.num.integer()
        _, c, scale = self._forms(np.append(pieces, 0), self._integers)
        value = Fraction(c[-1], scale[-1])
        return sum(value > Fraction(float(bp)) for bp in self.num.breakpoints[self.layer[len(pieces)]])

    def _inside(self, pieces: np.ndarray, x: np.ndarray) -> bool:
        """``x`` lies in the closed box and every fixed neuron that varies has its exact
        pre-activation strictly inside its piece (:meth:`pieces_at`)."""
        piece, clear, _ = self.pieces_at(x[None])
        k = len(pieces)
        fits = (clear[0, :k] & (piece[0, :k] == pieces)) | ~self._varying(pieces)[:k]
        return bool(self._in_box(x) and fits.all())

    def _lp(self, pieces: np.ndarray) -> tuple[str, np.ndarray | None]:
        """``("exists", verified point)``, ``("none", None)`` (proved empty) or ``("uncertain", None)``."""
        j, s, bp = self._constraints(pieces)
        if len(j) == 0:  # only neurons without breakpoints are fixed: the whole domain
            return "uncertain", None
        a, c, _ = self._forms(pieces, self.num)
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
        if self._integers is None:
            self._integers = self.num.integer()
        a, c, scale = self._forms(pieces, self._integers)
        used = np.flatnonzero(y > 0)
        rows_a = [[Fraction(int(s[r]) * v, scale[j[r]]) for v in a[j[r]]] for r in used]
        rows_c = [int(s[r]) * (Fraction(c[j[r]], scale[j[r]]) - Fraction(float(bp[r]))) for r in used]
        return proves_no_interior(np.array(rows_a, dtype=object).reshape(-1, self.dim), np.array(rows_c, dtype=object),
                                  y[used], self.lo, self.hi)

    # ---- bounds -------------------------------------------------------------------------
    def _upper(self, pieces: np.ndarray) -> float:
        """Certified bound of ``||J_P||`` over the completions of ``pieces`` (module doc): the
        largest norm over the vertices of the free neurons' slope hulls when they are few, else
        the smallest of AutoLip and of two enclosures of the set of Jacobians followed at each
        layer by the AutoLip product of the remaining layers (and at the end by nothing)."""
        free = self.n_neurons - len(pieces)
        if free <= _VERTEX_FREE and (1 << free) * max(self.sizes + [self.w[-1].shape[0]]) * self.dim <= _VERTEX_SIZE:
            return self._vertex_max(pieces, free)
        fixed = self._slopes(pieces)
        best = self.autolip
        c = self.w[0]
        r = np.zeros_like(c)  # entry-wise radius: |J - C| <= R
        rho = 0.0  # spectral radius: ||J - C||_2 <= rho
        for m, (a, b) in enumerate(self.hull):
            lo, hi = self.offsets[m], self.offsets[m + 1]
            dc = np.full(hi - lo, (a + b) / 2)
            dr = np.full(hi - lo, (b - a) / 2)
            k = max(0, min(len(pieces), hi) - lo)
            if k:
                dc[:k] = fixed[lo:lo + k]
                dr[:k] = 0.0
            # (dc + dr e)(C + E) = dc C + [dc E + dr e C + dr e E], |e| <= 1 element-wise
            spreading = dr > 0
            spread = _spectral(dr[spreading, None] * c[spreading]) if spreading.any() else 0.0
            rho = np.abs(dc).max(initial=0.0) * rho + spread + dr.max(initial=0.0) * rho
            r = np.abs(dc)[:, None] * r + dr[:, None] * (np.abs(c) + r)
            c = dc[:, None] * c
            best = min(best, _enclosure_norm(c, r, rho) * self.tail[m])
            w = self.w[m + 1]
            c, r, rho = w @ c, np.abs(w) @ r, self.norms[m + 1] * rho
        return min(best, _enclosure_norm(c, r, rho))

    def _vertex_max(self, pieces: np.ndarray, free: int) -> float:
        """``max ||J||`` over the completions of ``pieces`` where each free neuron takes an end of
        its slope hull, existing or not: ``J`` is affine in each slope separately, so its norm is
        convex in each and its maximum over the hulls (which hold every completion's slopes) is
        reached at their end points, which are all enumerated (batched SVDs)."""
        high = ((np.arange(1 << free)[:, None] >> np.arange(free)) & 1).astype(bool)
        ends = np.array([self.hull[m] for m in self.layer[len(pieces):]]).reshape(free, 2)
        d = np.hstack([np.broadcast_to(self._slopes(pieces), (len(high), len(pieces))),
                       np.where(high, ends[:, 1], ends[:, 0])])
        j = np.broadcast_to(self.w[0], (len(high), *self.w[0].shape))
        for m in range(len(self.sizes)):
            j = self.w[m + 1] @ (d[:, self.offsets[m]:self.offsets[m + 1], None] * j)
        return float(np.linalg.svd(j, compute_uv=False)[:, 0].max())

    def upper(self) -> float:
        top = -self.heap[0].key[0] if self.heap else -math.inf
        return max(top, self.best, self.uncertain_max)

    # ---- search -------------------------------------------------------------------------
    def _push(self, pieces: np.ndarray, point: np.ndarray | None) -> None:
        ub = self._upper(pieces)
        if ub <= self.best * (1 + self.rtol):
            return
        heapq.heappush(self.heap, _Node((-ub, -len(pieces)), pieces, point, ub))

    def run(self, deadline: float, progress: bool, center: np.ndarray) -> str:
        """Best-first search from the root (no neuron fixed), whose region is the whole domain
        with ``center`` as its interior point; returns the status."""
        self.sample(center[None])
        self._push(np.zeros(0, dtype=int), center)
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
        pieces, point = node.pieces, node.point
        if point is None:
            verdict, point = self._lp(pieces)
            if verdict == "none":
                return
            if point is not None:
                self.sample(point[None])
        depth = len(pieces)
        if depth == self.n_neurons:  # a leaf: its verified point's Jacobian is sampled
            if point is None:
                self.uncertain += 1
                self.uncertain_max = max(self.uncertain_max, node.upper)
            return
        if not self._varying(pieces)[depth]:  # a constant: one child, it is the parent's region
            self._push(np.append(pieces, self._constant_piece(pieces)), point)
            return
        carried = None  # the child that contains the verified point
        if point is not None:
            piece, clear, _ = self.pieces_at(point[None])
            carried = piece[0, depth] if clear[0, depth] else None
        for p in range(len(self.num.breakpoints[self.layer[depth]]) + 1):
            self._push(np.append(pieces, p), point if p == carried else None)

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
