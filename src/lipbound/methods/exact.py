"""Exact Lipschitz constant (L2 -> L2) of a small piecewise-linear network, ``"exact"`` (DESIGN §6, §7, §8).

The search itself is in :mod:`~lipbound.methods.exact_search`, the network's arithmetic in
:mod:`~lipbound.methods.exact_network`.

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
    (:meth:`~lipbound.methods.exact_network.PiecewiseNet.pieces_at`): a neighbourhood of that point of the closed box lies in the
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
``exact``. The search stops after ``max_nodes`` nodes (a work cap: the same on every machine);
``time_budget`` is only an outer cap (:mod:`~lipbound.methods.budget`). Stopped by either, the
result is the best **certified upper** bound with the witnessed lower bound in
``details["lower"]`` (and its witness in ``Result.witness``), never a guess, and
``details["stopped_by"]`` says which (``"work"`` or ``"time"``; ``"converged"`` when solved). A network without kinks (no hidden layer, or affine activations only) is one affine map
per pattern: its norm is exact. The number of regions grows exponentially with the number of
neurons (the problem is NP-hard); expect this to finish for up to a few dozen ReLU units.

**On a region** (issue 10). The domain is ``None`` (all of ``R^n``), a box ``(low, high)``, or a
region object (:mod:`~lipbound.methods.region`: a ``Box``, or a ``Ball`` of norm ``inf`` or 2);
on a localized graph it defaults to the graph's region. Each activation's bounds ``pre = (l, u)``
hold for every input of the graph's region, so a region of pattern ``P`` with an interior point
there has every neuron's pre-activation in its piece and in ``[l_j, u_j]``: only the pieces whose
open interval meets ``[l_j, u_j]`` are searched (:func:`~lipbound.methods.piecewise.piece_range`;
a neuron constant on a region is given the piece that holds its value, with the same function and
Jacobian). A **stable** neuron (one such piece) is never branched on, and only the unstable
neurons' kinks count against ``MAX_UNITS``. Free neurons' slopes range over their pieces' slopes
only (the upper bounds tighten). In terms of the shared argument: for ``x, y`` in a convex region
``X``, ``f(x) - f(y) = W_K D_{K-1} ... D_1 W_1 (x - y)`` with each ``D`` a diagonal of secant
slopes in the neurons' intervals, and ``L_X`` is the largest ``||J_P||`` over the regions meeting
``X``'s interior (DESIGN §7), which is what is maximised.

* A **box**, or an L-infinity ball (its box): the LPs express it, the value is ``exact`` on it.
* An **L2 ball**: an LP cannot express it (a second-order cone, which HiGHS does not take). The
  search runs on its bounding box with the ball's ``pre`` bounds: every pattern whose region meets
  the ball is admitted and meets the box, so the largest ``||J_P||`` found is a certified upper
  bound on the ball. Lower bounds come only from witnesses inside the ball (``region.contains``),
  and a verified leaf with no witness in the ball keeps its ``||J_P||`` in the upper bound
  (``details["unwitnessed_regions"]``). The result is ``exact`` when that witness meets the upper
  bound, else ``certified_upper``.
* The domain must lie in the graph's region (the ``pre`` bounds hold there only): any other is
  refused with :class:`~lipbound.errors.InvalidInput`. A union of boxes is not convex and is refused.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..linalg.spectral import CERTIFIED_RTOL
from ..report import Result
from .budget import stopped_by
from .exact_search import BranchAndBound
from .lower import lower as lower_search
from .piecewise import count_two_slope_neurons, mlp_layers
from .region import Box, as_box
from .witness import PointWitness

__all__ = ["exact", "rechecked", "MAX_DENSE"]

MAX_UNITS = 2048  # refuse networks with more unstable piecewise-linear units (kinks of all neurons) than this
MAX_DENSE = 20_000_000  # refuse networks whose interval matrices (neurons x inputs) exceed this
MAX_NODES = 4_000  # default work cap of the search: nodes explored (each at most one LP)
SAMPLE_SHARE = 0.1  # most of the time budget that the random points' Jacobians may take (planned from sizes)
_STOPPED_BY = {"solved": "converged", "node cap reached": "work", "time budget spent": "time"}


def exact(graph: Graph, *, seed: int = 0, progress: bool = False, domain: Any = None,
          time_budget: float = 120.0, max_nodes: int = MAX_NODES, rtol: float = 1e-9, samples: int = 256,
          lower_budget: float = 5.0) -> Result:
    """Exact Lipschitz constant (L2 -> L2) of a chain of affine layers and continuous
    piecewise-linear activations (ReLU, LeakyReLU, Abs, ReLU6, Hardtanh, Clip, HardSigmoid) by
    branch and bound over piece patterns, on all of ``R^n`` or on a region (module doc).

    Args:
        graph: the network, localized or not; anything but an MLP-like chain raises
            :class:`NotApplicable`.
        seed: seed of the random points sampled before the search.
        progress: progress bar on stderr.
        domain: None (the graph's region, or all of ``R^n``), a box ``(low, high)``, or a region
            object (``Box``, ``Ball`` of norm ``inf`` or 2) inside the graph's region.
        time_budget: seconds, an outer cap: a search step starts only if its predicted seconds fit
            in what is left (:meth:`~lipbound.methods.exact_search.BranchAndBound.run`), and the
            certified upper bound found so far is returned (``stopped_by`` ``"time"``; AutoLip if
            not even the root could be bounded).
        max_nodes: most search nodes (each at most one LP); past them the certified upper bound
            found so far is returned (``stopped_by`` ``"work"``).
        rtol: stop when the upper bound is within this relative gap of the lower bound.
        samples: random points whose Jacobians seed the lower bound (at most: fewer when their
            predicted seconds, :mod:`~lipbound.methods.work_plan`, exceed ``SAMPLE_SHARE`` of
            ``time_budget``: ``details["samples_planned"]``).
        lower_budget: outer cap in seconds (at most a quarter of ``time_budget``) of the ``lower``
            method's search (100 steps), whose best point also seeds the lower bound; 0 to skip.

    Returns:
        ``Result`` of kind ``exact`` (value = witnessed lower = certified upper within ``rtol``),
        or ``certified_upper`` on a time-out, when a region's existence stays undecided, or on an
        L2 ball whose witnesses do not reach the bound, with ``details`` (``lower``, ``upper``,
        ``search_nodes``, ``lps``, ``empty_regions`` (proved empty), ``uncertain_regions``,
        ``unwitnessed_regions``, ``neurons``, ``stable_neurons``, ``domain``) and the lower
        bound's witness.
    """
    if not (time_budget > 0 and max_nodes >= 1 and rtol >= 0 and samples >= 0):
        raise InvalidInput("exact: time_budget must be > 0, max_nodes >= 1, rtol >= 0 and samples >= 0")
    t0 = time.perf_counter()
    box, ball, described = _domain(graph, domain)
    units = count_two_slope_neurons(graph)
    if units is not None and units > MAX_UNITS:  # before anything is materialised
        raise NotApplicable(f"exact: {units} unstable piecewise-linear units (> {MAX_UNITS}): a branch and bound "
                            "over their patterns cannot finish; exact is for nets with a few dozen")
    try:
        layers = mlp_layers(graph, method="exact")
    except UnsupportedOperation as exc:
        raise NotApplicable(f"exact: {exc}") from None
    size = sum(l.weight.shape[0] for l in layers[:-1]) * layers[0].weight.shape[1]
    if size > MAX_DENSE:
        raise NotApplicable(f"exact: too large ({size:.3g} interval-matrix entries > {MAX_DENSE:.3g})")
    admits = None if ball is None else (
        lambda x: ball.contains(torch.from_numpy(x).reshape(-1, *graph.input_shape)).numpy())
    bb = BranchAndBound(layers, box, rtol, admits)
    gen = torch.Generator().manual_seed(seed)
    planned = min(samples, int(SAMPLE_SHARE * time_budget / max(bb.sample_seconds(1), 1e-12)))
    bb.sample(_sample_points(planned, bb.dim, box if ball is None else ball, gen).numpy())
    seeded_by = "converged"
    if lower_budget > 0 and bb.kinked:  # a good lower bound early prunes most of the tree
        found = lower_search(graph, seed=seed, domain=box, time_budget=min(lower_budget, time_budget / 4),
                             steps=100, pairs=False)
        seeded_by = found.details.get("stopped_by", "converged")
        if found.witness is not None:
            bb.sample(found.witness["x"].reshape(1, -1).to(torch.float64).numpy())
    center = np.zeros(bb.dim) if box is None else (box.center if ball is None else ball.center).flatten().numpy()
    status = bb.run(t0 + time_budget, progress, center.astype(np.float64), max_nodes)
    upper = bb.upper() * (1 + CERTIFIED_RTOL)
    lower, witness = rechecked(graph, bb, box, admits)
    details = {"lower": lower if lower > -math.inf else None, "upper": upper, "status": status,
               "neurons": bb.n_neurons, "stable_neurons": int(bb.stable.sum()), "search_nodes": bb.nodes,
               "lps": bb.lps, "empty_regions": bb.empty, "uncertain_regions": bb.uncertain,
               "unwitnessed_regions": bb.unwitnessed, "domain": described, "samples_planned": planned,
               "stopped_by": stopped_by([_STOPPED_BY[status], "time" if seeded_by == "time" else "converged"])}
    # exact: the search's bound (before the certified rounding margin) meets the re-checked lower bound
    is_exact = status == "solved" and lower > -math.inf and bb.upper() <= lower * (1 + rtol) + 1e-300
    if is_exact:
        return Result("exact", lower, "exact", time.perf_counter() - t0, witness=witness, details=details,
                      bracket=(lower, max(upper, lower)))
    return Result("exact", upper, "certified_upper", time.perf_counter() - t0, witness=witness, details=details)


def _domain(graph: Graph, domain: Any) -> tuple[Box | None, Any, str]:
    """``(box, ball, description)``: the box the LPs search (None: ``R^n``), the L2 ball that
    witnesses must lie in (None for a box), and the domain in words (module doc)."""
    region = graph.region if domain is None else domain
    if domain is not None and graph.region is not None and not _within(domain, graph.region, graph.input_shape):
        raise InvalidInput("exact: the domain must lie in the region the graph was localized on (its activations' "
                           "pre-activation bounds hold there only); pass domain=None to use that region")
    if region is None:
        return None, None, "R^n"
    norm = getattr(region, "norm", None)
    if isinstance(region, Box) or not hasattr(region, "low"):
        box = as_box(region, graph.input_shape)
        return box, None, box.describe()
    describe = region.describe() if hasattr(region, "describe") else type(region).__name__
    box = as_box((region.low, region.high), graph.input_shape)
    if norm == math.inf:
        return box, None, describe
    if norm == 2:
        return box, region, f"{describe} (patterns searched on its bounding box)"
    raise NotApplicable(f"exact: region {describe} is neither a box nor a ball (a union of boxes is not convex: "
                        "run each part and its hull)")


def _within(domain: Any, region: Any, shape) -> bool:
    """``domain`` is ``region``, or both are boxes (L-infinity balls) with ``domain``'s inside ``region``'s."""
    if domain is region:
        return True
    boxes = []
    for r in (domain, region):
        if hasattr(r, "low") and not (isinstance(r, Box) or getattr(r, "norm", None) == math.inf):
            return False
        boxes.append(as_box(r if not hasattr(r, "low") else (r.low, r.high), shape))
    return bool((boxes[0].low >= boxes[1].low).all() and (boxes[0].high <= boxes[1].high).all())


def _sample_points(n: int, dim: int, region: Any, gen: torch.Generator) -> torch.Tensor:
    """``n`` seed points: uniform in the region (a box or a ball), or at mixed scales on ``R^n``."""
    if region is not None:
        return region.sample(n, gen).to(torch.float64).reshape(n, dim)
    x = torch.randn((n, dim), generator=gen, dtype=torch.float64)
    return x * torch.logspace(-1, 1, n, dtype=torch.float64).reshape(-1, 1)[torch.randperm(n, generator=gen)]


def rechecked(graph: Graph, bb: BranchAndBound, box: Box | None,
               admits: Callable[[np.ndarray], np.ndarray] | None) -> tuple[float, PointWitness | None]:
    """The search's lower bound as its witness's re-checked value (rounding margins), with the
    witness; ``-inf`` and None without one."""
    if bb.best_x is None:
        return -math.inf, None
    x, v = (torch.from_numpy(t).reshape(graph.input_shape) for t in (bb.best_x, bb.best_v))
    if admits is not None and not admits(bb.best_x[None])[0]:
        return -math.inf, None
    try:
        lower = PointWitness(x, v).recheck(graph, box)
    except InvalidInput:
        return -math.inf, None
    return lower, PointWitness(x, v, value=lower)
