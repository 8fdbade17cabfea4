"""Witnessed lower bound ``"lower"``: search the input for a large Jacobian norm (DESIGN §6).

``L(f) = sup_x ||Df(x)||_2`` (Rademacher), so every input ``x`` and unit vector ``v`` give
``||Df(x) v|| <= L(f)`` wherever ``f`` is continuously differentiable near ``x``: the result is a
**witnessed lower bound**. Its witness (see :mod:`lipbound.methods.witness`) is returned in
``Result.witness``; only witnesses that pass :func:`lipbound.witness_value` are returned (a
Jacobian witness off every kink and max-pool tie by more than the rounding error, confirmed by a
central difference; a pair with a rigorous rounding margin), and the reported value *is* that
re-check's number.

An **affine** graph (no max pooling, every activation affine) has one Jacobian ``J``: no search,
the power method to convergence at one point gives ``||J v||``, its norm up to the convergence.

The search, all batched over many starts (no Python loop per start):

1. **Starts**: random points (mixtures of scales on ``R^n``; in a region, a mixture of uniform
   samples, vertices of its bounding box and points near its centre, projected into it) and, when
   ``data`` is given, the data points with the largest Jacobian norms.
2. **Power iterations through autograd** at every start (``torch.func.jvp`` for ``J v``,
   ``torch.func.vjp`` for ``J^T u``), warm-started from one step to the next.
3. **Ascent that crosses region boundaries**: the Jacobian of a ReLU network is constant on each
   linear region, so its norm has no useful gradient. The ascent therefore follows the gradient
   of ``u^T J_tau(x) v`` (the top singular value, by the envelope theorem) for a *smoothed* copy
   of the network (:func:`~lipbound.methods.piecewise.smoothed`: each ReLU/LeakyReLU replaced by a
   softplus of width ``tau`` relative to its pre-activations' scale). That gradient pushes each
   pre-activation towards the side where its neuron raises the norm (``d sigma / d D_kk = g_k h_k``
   for the back- and forward-propagated singular vectors), weighted by how close the neuron is to
   its boundary. ``tau`` shrinks from coarse to sharp; the true network's norm is measured at
   every iterate and the best point of each start is kept. Smooth activations are left as they
   are (their Jacobian norm has a gradient already).
4. **Region walk** (:mod:`~lipbound.methods.region_walk`) from the best points of piecewise-linear
   networks: hill climbing over adjacent linear regions, each move crossing the boundary of the
   neuron whose flip raises ``u^T J v`` the most.
5. **Pair search**: gradient ascent on ``||f(x) - f(y)|| / ||x - y||`` from the best points and
   their top singular directions; valid even where ``f`` is not differentiable.
6. **Refinement** of the best candidates in float64 (power method to convergence), then the
   **validity check** (:func:`~lipbound.methods.rounding.jacobian_witness_values`) on the float64 graph as
   given (not fused). A candidate that fails it with a larger norm than every valid one (on a
   kink, or on a region's boundary where a kink passes) is **nudged** off it (random relative moves of
   ``1e-9, 1e-6, 1e-3``; in a region, pulled towards the centre) and checked again. Pairs are valued
   by the rigorous lower end of their quotient (:func:`~lipbound.methods.rounding.pair_bounds`). When no
   Jacobian witness is valid and no pair was searched, short pairs along the candidates' singular
   directions are the witnesses.

Before step 2 the first start point is checked and re-checked on its own (the **priming**,
:mod:`~lipbound.methods.lower_clock`): the best witness so far, and the measure of the re-check's
cost, which the wall-clock cap keeps free for the final re-checks.

On a region (a :class:`~lipbound.methods.region.Box` or a :class:`~lipbound.methods.region.Ball`,
:func:`~lipbound.methods.region.as_region`) every start is sampled in it and every iterate is
projected back into it, and each witness is accepted only after the region's rigorous
``contains`` (in :func:`~lipbound.methods.rounding.region_check` and the pair re-check), so the bound
is for ``f`` restricted to the region: a pair inside ``X`` bounds ``L_X`` by definition, and
``||Df(x) v||`` at a point of a convex ``X`` with an interior, where ``f`` is ``C^1``, is a limit of
Jacobian norms at interior points, hence at most ``L_X`` (DESIGN §7). On a box that is flat in some
elements (``low == high``, e.g. ACAS Xu property 4) a Jacobian witness counts only when ``v`` is 0
there (the witness re-check refuses it otherwise); pairs stay valid.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable

import torch

from ..errors import InvalidInput, LipboundError
from ..graph.ir import Activation, Graph, MaxPool
from ..report import Result
from .ascent import Search
from .budget import Clock, graph_macs
from .lower_clock import LowerClock, Loop
from .jacobian import power, through_pieces, unit
from .lower_starts import starts as start_points
from .region import BoxUnion, Region, as_region
from .region_walk import walk
from .rounding import jacobian_witness_values, pair_bounds
from .witness import PairWitness, PointWitness, Witness, jacobian_values

__all__ = ["lower", "jacobian_witness"]

_WALKERS = 64  # best ascent points that go on to the region walk
_CANDIDATES = 8  # neurons whose flip the region walk tries per point and round
_REFINED = 8  # best points refined in float64 and used for the pair search
_NUDGES = (1e-9, 1e-6, 1e-3)  # relative sizes of the moves off a kink or a face (_nudged, _segments)
_RECHECKS = 16  # most candidates re-checked one by one for each witness form (_confirmed)


def lower(graph: Graph, *, seed: int = 0, progress: bool = False, domain: Any = None,
          data: torch.Tensor | Iterable | None = None, starts: int = 64, steps: int = 200,
          power_steps: int = 3, pairs: bool = True, time_budget: float = 120.0, work: float = 4e9,
          max_data: int = 4096, walk_rounds: int = 20, rounds: int = 1) -> Result:
    """Witnessed lower bound of the Lipschitz constant (L2 -> L2) by Jacobian search (module doc).

    Args:
        graph: the network.
        seed: seed of the random starts (same seed, same result).
        progress: progress bar on stderr.
        domain: None (all of ``R^n``), ``(low, high)`` (numbers or tensors of the input shape), a
            :class:`~lipbound.methods.region.Box` or :class:`~lipbound.methods.region.Ball`; anything
            :func:`~lipbound.methods.region.as_region` takes except a union of boxes (not convex).
        data: inputs ``(N, *input_shape)``, or an iterable of such batches (a DataLoader; in
            ``(x, y)`` batches the first element is used): the ``max_data`` first are scored
            and the best half of ``starts`` begin there.
        starts: number of starts searched in parallel.
        steps: ascent steps per start (at most: see ``work``).
        power_steps: power iterations per ascent step (warm-started).
        pairs: also run the pair search (``steps // 4`` Adam steps, at most: see ``work``).
        time_budget: seconds, an outer cap only (:mod:`~lipbound.methods.budget`): the search
            stops on its counts (``steps``, ``work``, ``walk_rounds``, ...), and the budget only
            cuts it (:mod:`~lipbound.methods.lower_clock`). First one witness at a start point is
            re-checked (the *priming*: it pays the re-check's one-time cost, and its seconds are
            kept free at the end for the final re-checks); of the time left after it, the ascent
            gets half, the region walk up to 70%, the refinement up to 80%, the pairs (started
            before 85%) up to 90%, and no step (an ascent step, a batch of the walk, ten power
            iterations, an Adam step) starts that would end, at the pace of the step before it,
            inside the re-checks' reserve. When nothing but the priming fits, its witness is the
            result. The result stays valid (the best witness re-checked so far), and
            ``details["stopped_by"]`` is then ``"time"``; ``details["seconds"]`` gives each phase's.
        work: most multiply-accumulates of each ascent,
            ``starts * steps * graph_macs(graph)`` (:func:`~lipbound.methods.budget.graph_macs`),
            of the region walk, ``_WALKERS * 2 * candidates * walk_rounds * graph_macs(graph)``,
            and of the pair search, ``_REFINED * 4 * 6 * pair_steps * graph_macs(graph)``: a network
            too large for them gets fewer steps and rounds, the same on every machine
            (``details["steps_planned"]``, ``"walk_rounds_planned"``, ``"pair_steps_planned"``;
            ``stopped_by`` is then ``"work"``). The default keeps a 784-256-256-10 MLP at its
            full ``steps`` and ``walk_rounds``.
        rounds: ascents from fresh random starts, one after the other.
        walk_rounds: most rounds of the region walk (it stops earlier when no move helps; 0 skips it).
        max_data: most data points scored.

    Returns:
        A ``Result`` of kind ``witnessed_lower`` whose ``witness`` is a
        :class:`~lipbound.methods.witness.PointWitness` ``(x, v)`` or a
        :class:`~lipbound.methods.witness.PairWitness` ``(x, y)`` carrying ``value``,
        ``details`` the search's statistics.
    """
    _check(starts=starts, steps=steps, power_steps=power_steps, time_budget=time_budget, rounds=rounds, work=work)
    clock = Clock(time_budget)
    g = through_pieces(graph.fused())  # the search's copy: double backward works through every node
    region = as_region(domain, g.input_shape)
    if isinstance(region, BoxUnion):
        raise InvalidInput("lower: a union of boxes is not convex; run it on each part or on its hull() "
                           "(lipbound.estimate does both)")
    gen = torch.Generator().manual_seed(seed)
    g64 = g.to(dtype=torch.float64)
    checked = graph.to(device="cpu", dtype=torch.float64)  # witnesses are checked and valued on this one
    macs = graph_macs(g)
    planned = max(1, min(steps, int(work // (starts * macs))))
    walk_planned = min(walk_rounds, max(1, int(work // (_WALKERS * 2 * _CANDIDATES * macs))))
    pair_planned = max(1, min(steps // 4, int(work // (_REFINED * 4 * 6 * macs))))
    details: dict[str, Any] = {"domain": "R^n" if region is None else region.describe(), "starts": starts,
                               "steps": steps, "steps_planned": planned, "walk_rounds_planned": walk_planned,
                               "pair_steps_planned": pair_planned,
                               "work": work, "time_budget": time_budget, "constant_jacobian": False}
    if _constant_jacobian(g):
        return _affine_result(g64, checked, region, gen, clock, details)
    search, plan = Search(g, region, power_steps, gen), LowerClock(clock)
    found, n_data, done, primed, seconds = [], 0, 0, None, {}
    while done < rounds and not (done > 0 and plan.over(0.5)):
        x0, n = start_points(g, region, data if done == 0 else None, starts, max_data, gen)
        if done == 0:
            primed, primed_v = _primed(g64, checked, x0[:1], region, seed, plan)
            seconds["prime"] = clock.elapsed()
            if not plan.loop(0.5, plan.reserve).fits():  # the starts' first power iterations (measured on
                break  # the CNNs: a fourth of the cold check) would not fit: the priming point is all
        n_data = n_data or n
        ascent = plan.loop(0.5, 0.0)  # its first step is priced by Search.ascend
        found.append(search.ascend(x0, planned, ascent, progress))
        step = ascent.last  # the last ascent step's seconds: the first estimate of every later loop's step
        done += 1
    seconds["ascent"] = clock.elapsed() - sum(seconds.values())
    if found:
        jac, pair, walked = _witnesses(g64, checked, search, plan, found, region, gen, step, seconds,
                                       walk_rounds=walk_planned, pair_steps=pair_planned if pairs else 0)
    else:  # no search step fitted: the priming's witness, or pairs along its direction
        jac, pair, walked = primed, None, False
        if primed is None:
            pair = _best_pair(checked, *_segments(x0[:1].to(torch.float64), primed_v, region), region, clock)
    jac = _best(primed, jac)
    details.update({"data_starts": n_data, "rounds": done, "steps_done": search.steps_done, "seconds": seconds,
                    "stopped_by": "time" if clock.cut else "work" if planned < steps or walk_planned < walk_rounds
                    or (pairs and pair_planned < max(1, steps // 4)) else "iterations"})
    if jac is None and pair is None:  # nothing above 0 re-checks (e.g. a constant net): 0 <= L(f) needs no witness
        details.update({"form": None, "jacobian_value": None, "pair_value": None,
                        "note": "no candidate re-checked above 0 (every point on a kink, or the net constant there)"})
        return Result("lower", 0.0, "witnessed_lower", clock.elapsed(), details=details)
    witness = _best(jac, pair)
    details.update({"form": witness.form, "jacobian_value": None if jac is None else jac.value,
                    "pair_value": None if pair is None else pair.value,
                    "smoothed_activations": len(search.tau), "region_walk": walked})
    return Result("lower", witness.value, "witnessed_lower", clock.elapsed(), witness=witness, details=details)


def _witnesses(g64: Graph, checked: Graph, search: Search, plan: LowerClock, found: list, region: Region | None,
               gen: torch.Generator, step: float, seconds: dict[str, float], *, walk_rounds: int,
               pair_steps: int) -> tuple[Witness | None, Witness | None, bool]:
    """Steps 4-6 of the module doc on the ascents' ``found`` points: the region walk, the float64
    refinement, the Jacobian check, the pair search (``pair_steps`` > 0) and its check, each phase
    paced by ``plan`` (``step``: the last ascent step's seconds, the first estimate of each loop's
    step). Returns the Jacobian witness, the pair witness (None where none is valid) and whether
    the walk ran; adds each phase's seconds to ``seconds``."""
    clock = plan.clock
    best_x, best_v, best_sigma = (torch.cat(parts) for parts in zip(*found))
    order = torch.argsort(best_sigma, descending=True)[:_WALKERS]
    cand, v = best_x[order].to(torch.float64), best_v[order].to(torch.float64)
    walking = plan.loop(0.7, step)
    walked = bool(search.slopes) and walk_rounds > 0 and walking.fits()
    if walked:
        cand, v, _ = walk(g64, search.slopes, cand, v, region, candidates=_CANDIDATES, rounds=walk_rounds,
                          loop=walking, power_steps=2)
    seconds["walk"] = clock.elapsed() - sum(seconds.values())
    top = torch.arange(min(_REFINED, len(cand)))  # by the ascent's values when the clock refuses the ranking
    if plan.loop(0.8, step).fits():
        with torch.no_grad():  # a NaN (a start that diverged) must never be picked
            top = torch.argsort(torch.nan_to_num(jacobian_values(g64.forward, cand, v), nan=-1.0),
                                descending=True)[:_REFINED]
    cand, v = cand[top], _power64(g64, cand[top], v[top], plan.loop(0.8, step))
    seconds["refine"] = clock.elapsed() - sum(seconds.values())
    jac = jacobian_witness(g64, checked, cand, v, region, gen, clock, plan.loop(1.0, step))
    seconds["check"] = clock.elapsed() - sum(seconds.values())
    pair = None
    if pair_steps > 0 and not plan.over(0.85):
        px, py = search.pairs(cand, v, pair_steps, plan.loop(0.9, step))
        pair = _best_pair(checked, px, py, region, clock)
    if jac is None and pair is None:  # every candidate sits on a kink: pairs along its singular vector
        pair = _best_pair(checked, *_segments(cand, v, region), region, clock)
    seconds["pairs"] = clock.elapsed() - sum(seconds.values())
    return jac, pair, walked


def _constant_jacobian(g: Graph) -> bool:
    """True when ``Df`` is the same at every input: no max pooling, and every activation is affine
    (its exact pieces have one slope). Searching is then pointless."""
    return not any(isinstance(n, MaxPool) or (isinstance(n, Activation) and not _affine_activation(n)) for n in g)


def _affine_activation(node: Activation) -> bool:
    return node.pieces is not None and len(set(node.pieces.slopes)) == 1


def _affine_result(g64: Graph, checked: Graph, region: Region | None, gen: torch.Generator, clock: Clock,
                   details: dict[str, Any]) -> Result:
    """An affine ``f``: its constant is the norm of its one Jacobian ``J``; the power method to
    convergence at one point (the region's centre, or 0) gives ``||J v|| <= ||J||`` with ``v`` its top
    right singular vector."""
    x = (region.center if region is not None else torch.zeros(g64.input_shape, dtype=torch.float64)).unsqueeze(0)
    x = x.to(device=g64.device)
    v = unit(torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x))
    v = _power64(g64, x, v, Loop(clock, clock.deadline(), clock.deadline(), 0.0))
    found = jacobian_witness(g64, checked, x, v, region, gen, clock)
    if found is None:  # a box flat in some elements refuses v: pairs inside it instead
        found = _best_pair(checked, *_segments(x, v, region), region, clock)
    if found is None:
        raise LipboundError("the network is affine but neither its Jacobian nor a pair witness passed its re-check")
    details.update({"form": found.form, "jacobian_value": found.value if found.form == "jacobian" else None,
                    "pair_value": found.value if found.form == "pair" else None, "constant_jacobian": True,
                    "stopped_by": "time" if clock.cut else "converged"})
    return Result("lower", found.value, "witnessed_lower", clock.elapsed(), witness=found, details=details)


def jacobian_witness(g64: Graph, checked: Graph, x: torch.Tensor, v: torch.Tensor, region: Region | None,
                     gen: torch.Generator, clock: Clock, loop: Loop | None = None) -> PointWitness | None:
    """The best valid Jacobian witness (:func:`~lipbound.methods.rounding.jacobian_witness_values`) among the
    points ``x`` (with their singular vectors ``v``) and, for those that fail the check with a larger
    autograd value than the best valid one, their nudges off the kink or face (:func:`_nudged`), with
    power iterations there (paced by ``loop``; by default until ``clock``'s deadline); None when none
    is valid."""
    values = _checked_values(checked, x, v, region)
    with torch.no_grad():
        claimed = torch.nan_to_num(jacobian_values(g64.forward, x, v), nan=-1.0).cpu()
    retry = torch.isnan(values) & (claimed > torch.nan_to_num(values, nan=-1.0).max())
    if retry.any():
        nx = _nudged(x[retry.to(x.device)], region, gen)
        loop = loop or Loop(clock, clock.deadline(), clock.deadline(), 0.0)
        nv = _power64(g64, nx, v[retry.to(v.device)].repeat(len(_NUDGES), *([1] * (v.dim() - 1))), loop)
        values = torch.cat([values, _checked_values(checked, nx, nv, region)])
        x, v = torch.cat([x, nx]), torch.cat([v, nv])
    return _confirmed(checked, values, lambda i: PointWitness(x[i].cpu(), v[i].cpu()), region, clock)


def _confirmed(checked: Graph, values: torch.Tensor, witness_at: Callable[[int], Witness],
               region: Region | None, clock: Clock) -> Witness | None:
    """The witness with the largest batched value (NaN: invalid) that its one-point re-check
    (:meth:`~lipbound.methods.witness.Witness.recheck`, the computation of :func:`~lipbound.witness_value`)
    confirms, carrying the re-checked value; None when there is none, or when the first
    :data:`_RECHECKS` re-checks fail, or the first fails and ``clock`` has run out (each further
    candidate costs one more re-check)."""
    values = torch.nan_to_num(values, nan=-1.0)
    for j, i in enumerate(torch.argsort(values, descending=True).tolist()):
        if values[i] < 0 or j >= _RECHECKS or (j > 0 and clock.expired()):
            break
        witness = witness_at(i)
        try:
            return dataclasses.replace(witness, value=witness.recheck(checked, region))
        except InvalidInput:
            continue
    return None


def _primed(g64: Graph, checked: Graph, x: torch.Tensor, region: Region | None, seed: int,
            plan: LowerClock) -> tuple[PointWitness | None, torch.Tensor]:
    """The priming of the re-checks (:mod:`~lipbound.methods.lower_clock`): the Jacobian witness at
    the start ``x`` (one point), after a few float64 power iterations from a direction of its own
    generator (the search's ``gen`` is left untouched), re-checked if valid. The seconds of the
    check and re-check (not of the power iterations, whose first call may import modules) are the
    reserve of ``plan``. Returns the witness (None if invalid) and the direction ``v``."""
    x = x.to(device=g64.device, dtype=torch.float64)
    v0 = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(x)
    _, v = power(g64.forward, x, unit(v0), 4)
    t = time.perf_counter()
    found = _confirmed(checked, _checked_values(checked, x, v, region),
                       lambda i: PointWitness(x[i].cpu(), v[i].cpu()), region, plan.clock)
    plan.primed(time.perf_counter() - t)
    return found, v


def _best(*witnesses: Witness | None) -> Witness | None:
    """The witness with the largest value (None when there is none)."""
    return max((w for w in witnesses if w is not None), key=lambda w: w.value, default=None)


def _checked_values(checked: Graph, x: torch.Tensor, v: torch.Tensor, region: Region | None) -> torch.Tensor:
    return jacobian_witness_values(checked, x.to(device="cpu", dtype=torch.float64),
                                   v.to(device="cpu", dtype=torch.float64), region)[0]


def _nudged(x: torch.Tensor, region: Region | None, gen: torch.Generator) -> torch.Tensor:
    """For each radius ``r`` of :data:`_NUDGES`, each point moved by a random ``r``-relative step (on
    a region: then pulled towards its centre by the fraction ``r``, off every face)."""
    out = []
    for r in _NUDGES:
        xi = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
        if region is None:
            size = x.flatten(1).abs().amax(dim=1).clamp_min(1.0).reshape(-1, *([1] * (x.dim() - 1)))
            out.append(x + r * size * xi)
        else:
            low, high = region.low.to(x), region.high.to(x)
            y = region.project(x + r * (high - low) * xi)
            out.append(region.project(y + r * (region.center.to(x) - y)))
    return torch.cat(out)


def _segments(x: torch.Tensor, v: torch.Tensor, region: Region | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``(x, x + d v)`` along the candidates' singular directions, ``d`` in :data:`_NUDGES`
    relative to the point's size (kept in the region)."""
    size = x.flatten(1).norm(dim=1).clamp_min(1.0).reshape(-1, *([1] * (x.dim() - 1)))
    ys = [x + r * size * unit(v) for r in _NUDGES]
    ys = torch.cat(ys if region is None else [region.project(y) for y in ys])
    return x.repeat(len(_NUDGES), *([1] * (x.dim() - 1))), ys


def _best_pair(checked: Graph, x: torch.Tensor, y: torch.Tensor, region: Region | None,
               clock: Clock) -> PairWitness | None:
    """The pair with the largest rigorous lower bound of its quotient (:func:`~lipbound.methods.rounding.pair_bounds`),
    None when no pair has a finite one."""
    x, y = x.to(device="cpu", dtype=torch.float64), y.to(device="cpu", dtype=torch.float64)
    return _confirmed(checked, pair_bounds(checked, x, y)[0], lambda j: PairWitness(x[j], y[j]), region, clock)


def _check(**kw: float) -> None:
    for name, val in kw.items():
        if not (isinstance(val, (int, float)) and val > 0 and math.isfinite(val)):
            raise InvalidInput(f"lower: {name} must be a positive number, got {val!r}")
        if name not in ("time_budget", "work") and int(val) != val:
            raise InvalidInput(f"lower: {name} must be an integer, got {val!r}")


def _power64(g64: Graph, x: torch.Tensor, v: torch.Tensor, loop: Loop, max_iter: int = 500,
             tol: float = 1e-13) -> torch.Tensor:
    """Top right singular vectors of the Jacobians at ``x`` (float64), to the relative tolerance
    ``tol`` or ``max_iter`` iterations, from ``v``, by rounds of 10 that ``loop`` paces (any unit
    vector gives a valid bound; this one only makes it larger)."""
    prev = None
    for _ in loop.steps(max_iter // 10):
        s, v = power(g64.forward, x, v, 10)
        if prev is not None and bool(((s - prev).abs() <= tol * s.clamp_min(1e-300)).all()):
            break
        prev = s
    return v
