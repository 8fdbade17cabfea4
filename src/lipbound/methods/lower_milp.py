"""Witnessed lower bound ``"lower-milp"``: activation patterns searched by a mixed-integer program.

On a box ``X`` a chain ``f = A_K o s o ... o s o A_1`` of affine maps ``A_k z = W_k z + c_k`` and
two-slope activations ``s`` (slope ``a`` below 0, ``b`` above: ReLU, LeakyReLU, Abs) is affine on
each linear region, with Jacobian ``J_P = W_K D_{K-1} ... D_1 W_1`` for its pattern ``P`` (``D_k``
diagonal, entries in ``{a, b}``). Gradient ascent stalls on this piecewise-constant map, so the
patterns are searched directly, alternating (the LipMIP encoding, Jordan & Dimakis 2020, with a
fixed direction pair instead of a norm):

1. ``u, v`` := the top singular pair of the best Jacobian ``J`` found so far (at first: at the
   witness of :func:`~lipbound.methods.lower.lower`, run on a share of the budget, or ``start``);
2. a **MILP** maximises ``u^T J(x) v`` over ``x`` in ``X`` and the patterns realisable at ``x``
   (:class:`~lipbound.methods.pattern_milp.PatternProgram`). Each neuron's pre-activation ``z``
   has bounds ``[l, u]`` on ``X``: CROWN's (:func:`~lipbound.methods.propagation.localize`) intersected
   with those the graph carries when it was localized on a region that contains ``X`` (e.g. the API's
   split-refined bounds: :func:`~lipbound.methods.carried_bounds.localize_keeping`; both hold on ``X``,
   so does their intersection, and tighter bounds make fewer neurons unstable and smaller big-M's);
   a stable one (``l >= 0`` or ``u <= 0``)
   has a constant slope, an unstable one a binary ``d`` with ``r = relu(z)`` by big-M
   (``r >= z``, ``r <= z - l (1 - d)``, ``r <= u d``, ``r >= 0``) and ``s(z) = a z + (b - a) r``.
   The directional derivative ``t_k = D_k W_k t_{k-1}`` (``t_0 = v``) is linear in ``d`` given
   ``s_k = W_k t_{k-1}``: ``t = a s + (b - a) p`` with ``p = d s`` linearised exactly by big-M on
   interval bounds of ``s`` (``p <= S d``, ``p >= S' d``, ``p <= s - S'(1 - d)``, ``p >= s - S(1 - d)``).
   The objective is ``u^T W_K t_{K-1}``. Every realisable pattern is feasible with its own ``x``, so
   the optimum is ``max_P u^T J_P v`` over the patterns whose regions meet ``X``.
3. The MILP's pattern ``P`` gives a point strictly inside its region (a Chebyshev LP: the largest
   margin of the unstable pre-activations from 0, scaled by their gradients, with ``x`` in ``X``),
   where autograd's Jacobian is ``J_P``; its norm ``>= u^T J_P v`` improves the last one whenever the
   MILP's optimum does. The point and ``J_P``'s top right singular vector become a
   :class:`~lipbound.methods.witness.PointWitness`, **re-checked** like ``lower``'s (off every kink
   by the rounding bound, central-difference agreement; nudged off a kink when needed). The MILP
   proves nothing: only re-checked witnesses count, so the value is a **witnessed lower bound**.

The loop stops when the MILP finds no pattern better than the current one for ``u, v`` (a fixed
point: ``"converged"``), after ``rounds`` MILPs (``"iterations"``), when HiGHS stops on its node
limit ``max_nodes`` (``"work"``, deterministic: a fixed seed) or on the clock (``"time"``). No MILP
starts after the deadline, and a running one is stopped by it (its process killed
:data:`~lipbound.methods.milp_solver.GRACE` seconds after it: HiGHS checks its own time limit only
between steps of up to 26 s and more; :mod:`~lipbound.methods.milp_solver`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Result
from .budget import Clock, stopped_by
from .carried_bounds import localize_keeping
from .jacobian import through_pieces
from .lower import jacobian_witness, lower
from .pattern_milp import ChainNet, PatternProgram
from .piecewise import DenseLayer, mlp_layers
from .region import Ball, Box, as_box, as_region
from .witness import Witness, as_witness

__all__ = ["lower_milp"]

def lower_milp(graph: Graph, *, seed: int = 0, progress: bool = False, domain: Any = None,
               time_budget: float = 60.0, lower_share: float = 0.25, start: Witness | dict | None = None,
               rounds: int = 20, max_nodes: int = 20000, rtol: float = 1e-6) -> Result:
    """Witnessed lower bound of the Lipschitz constant (L2 -> L2) on a box, by MILP over
    activation patterns (module doc).

    Args:
        graph: a chain of affine layers and two-slope activations (ReLU, LeakyReLU, Abs).
        seed: seed of ``lower`` and of HiGHS.
        progress: unused (kept for the method signature).
        domain: a box ``(low, high)``, a ``Box`` or an L-infinity ``Ball``; None: the graph's region.
        time_budget: seconds, an outer cap of the whole call (``lower`` and the MILPs).
        lower_share: fraction of ``time_budget`` given to ``lower`` (unused when ``start`` is given).
        start: a witness to start from instead of running ``lower`` (re-checked here).
        rounds: most MILPs solved.
        max_nodes: HiGHS's branch-and-bound node limit per MILP (the deterministic work cap).
        rtol: a MILP optimum must beat the current Jacobian's ``u^T J v`` by this relative margin.

    Returns:
        A ``Result`` of kind ``witnessed_lower`` with the best re-checked witness (the start's if no
        MILP improved it); ``details``: ``start_value``, ``milp`` (per round: objective, the new
        Jacobian's norm, seconds, HiGHS status, nodes), ``milp_size`` (columns, binaries, rows,
        non-zeros), ``stopped_by``.
    """
    if not (time_budget > 0 and 0 < lower_share < 1 and rounds >= 1 and max_nodes >= 1 and rtol >= 0):
        raise InvalidInput("lower-milp: time_budget must be > 0, 0 < lower_share < 1, rounds >= 1, max_nodes >= 1, "
                           "rtol >= 0")
    clock = Clock(time_budget)
    box = _box(graph, domain)
    try:
        layers = mlp_layers(localize_keeping(graph, box, time_budget=time_budget / 10), method="lower-milp")
    except UnsupportedOperation as exc:
        raise NotApplicable(f"lower-milp: {exc}") from None
    if len(layers) == 1:
        raise NotApplicable("lower-milp: the network has no activation (its Jacobian is one matrix: use 'lower' or 'exact')")
    slopes = [_slopes(layer) for layer in layers[:-1]]
    if start is None:
        found = lower(graph, seed=seed, domain=box, time_budget=lower_share * time_budget)
        witness, reasons = found.witness, [found.details.get("stopped_by", "converged")]
    else:
        witness = as_witness(start)
        witness = type(witness)(witness.x, witness.other, value=witness.recheck(graph, box))
        reasons = []
    if witness is None:
        raise NotApplicable("lower-milp: lower found no witness to start from")
    net = ChainNet(layers, slopes, box)
    checked = graph.to(device="cpu", dtype=torch.float64)
    g64 = through_pieces(graph.fused()).to(device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    best, x = witness, witness.x.reshape(-1).to(torch.float64).numpy()
    sigma, u, v = net.top_pair(x)
    history: list[dict[str, Any]] = []
    program = PatternProgram(net)
    reason = "iterations"
    for _ in range(rounds):
        if clock.expired():
            break
        solved = program.solve(u, v, net.state(x), seed, max_nodes, clock.deadline())
        history.append({k: solved[k] for k in ("objective", "seconds", "status", "nodes")})
        if solved["status"] == "time":
            clock.cut = True
        if solved["x"] is None or solved["objective"] <= sigma * (1 + rtol):
            reason = {"optimal": "converged", "nodes": "work"}.get(solved["status"], "converged")
            break
        inside = net.interior(solved["pattern"])
        x = solved["x"] if inside is None else inside
        sigma_new, u_new, v_new = net.top_pair(x)
        history[-1]["norm"] = sigma_new
        if sigma_new <= sigma * (1 + rtol):
            reason = "converged"
            break
        sigma, u, v = sigma_new, u_new, v_new
        if not net.clear_of_kinks(x):
            continue  # a region thinner than float64 can tell apart: no witness anyone could re-check
        shape = graph.input_shape
        found_w = jacobian_witness(g64, checked, torch.from_numpy(x).reshape(1, *shape),
                                   torch.from_numpy(v).reshape(1, *shape), box, gen, clock)
        if found_w is not None and found_w.value > best.value:
            best = found_w
    details = {"domain": box.describe(), "start_value": witness.value, "start_form": witness.form,
               "milp": history, "milp_size": program.size, "form": best.form,
               "improved": best is not witness, "stopped_by": stopped_by([*reasons, reason], clock)}
    return Result("lower-milp", best.value, "witnessed_lower", clock.elapsed(), witness=best, details=details)


def _box(graph: Graph, domain: Any) -> Box:
    """The box searched: ``domain`` (or the graph's region) as a :class:`Box`."""
    region = as_region(graph.region if domain is None else domain, graph.input_shape)
    if region is None:
        raise NotApplicable("lower-milp needs a box domain (on all of R^n use 'lower' or 'exact')")
    if isinstance(region, Ball) and region.norm == math.inf:
        return as_box((region.low, region.high), graph.input_shape)
    if not isinstance(region, Box):
        raise NotApplicable(f"lower-milp searches boxes only (a MILP over the bounding box of {region.describe()} "
                            "would leave it); use 'lower'")
    return region


def _slopes(layer: DenseLayer) -> tuple[float, float]:
    pair = layer.pieces.two_slope if layer.pieces is not None else None
    if pair is None:
        raise NotApplicable(f"lower-milp: node '{layer.origin}' is not a two-slope activation (ReLU, LeakyReLU, Abs)")
    return pair
