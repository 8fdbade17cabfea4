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
   (:class:`_Program`). Each neuron's pre-activation ``z`` has bounds ``[l, u]`` on ``X`` from
   :func:`~lipbound.methods.propagation.localize` (CROWN); a stable one (``l >= 0`` or ``u <= 0``)
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
limit ``max_nodes`` (``"work"``, deterministic: a fixed seed) or on the clock (``"time"``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Result
from .budget import Clock, stopped_by
from .jacobian import through_pieces
from .lower import jacobian_witness, lower
from .lp import DenseLP, silent_stdout
from .piecewise import DenseLayer, mlp_layers
from .propagation import localize
from .region import Ball, Box, as_box, as_region
from .witness import Witness, as_witness

__all__ = ["lower_milp"]

_PAD = 1e-9  # relative widening of the tangents' interval bounds (big-M constants only)


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
        layers = mlp_layers(localize(graph, box, time_budget=time_budget / 10), method="lower-milp")
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
    net = _Net(layers, slopes, box)
    checked = graph.to(device="cpu", dtype=torch.float64)
    g64 = through_pieces(graph.fused()).to(device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    best, x = witness, witness.x.reshape(-1).to(torch.float64).numpy()
    sigma, u, v = net.top_pair(x)
    history: list[dict[str, Any]] = []
    program = _Program(net)
    reason = "iterations"
    for _ in range(rounds):
        if clock.expired():
            break
        solved = program.solve(u, v, net.state(x), seed, max_nodes, time_limit=clock.deadline() - time.perf_counter())
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


#: the relative distance from a kink below which a MILP point is not offered as a witness
KINK_RTOL = 1e-9


class _Net:
    """The chain as float64 numpy matrices, with each neuron's class on the box: ``stable[k]`` the
    slope of a stable neuron (NaN: unstable)."""

    def __init__(self, layers: list[DenseLayer], slopes: list[tuple[float, float]], box: Box) -> None:
        self.W = [layer.weight.numpy() for layer in layers]
        self.c = [layer.bias.numpy() for layer in layers]
        self.slopes = slopes
        self.pre = [(layer.pre[0].numpy(), layer.pre[1].numpy()) for layer in layers[:-1]]
        self.low, self.high = box.low.reshape(-1).numpy(), box.high.reshape(-1).numpy()
        self.free = (self.high > self.low).astype(np.float64)  # inputs the box fixes carry no direction
        self.stable = [np.where(u <= 0, a, np.where(l >= 0, b, np.nan)) for (l, u), (a, b) in zip(self.pre, slopes)]

    def state(self, x: np.ndarray) -> dict[str, list[np.ndarray]]:
        """Pre-activations and slopes at ``x``, with ``r = relu(z)`` (slope ``b`` at ``z > 0``)."""
        zs, ds, h = [], [], x
        for W, c, (a, b) in zip(self.W, self.c, self.slopes):
            z = W @ h + c
            d = np.where(z > 0, b, a)
            zs.append(z)
            ds.append(d)
            h = d * z
        return {"x": x, "z": zs, "d": ds}

    def clear_of_kinks(self, x: np.ndarray, rtol: float = KINK_RTOL) -> bool:
        """Whether every pre-activation at ``x`` is at least ``rtol * (1 + max |z|)`` of its
        layer away from the kink at 0: a point closer than that (a slab thinner than float64
        evaluations can tell apart) is not offered as a witness, however the re-check decides."""
        return all(bool(np.all(np.abs(z) > rtol * (1.0 + np.abs(z).max()))) for z in self.state(x)["z"])

    def jacobian(self, ds: list[np.ndarray]) -> np.ndarray:
        """``J_P = W_K D_{K-1} ... D_1 W_1`` (columns of fixed inputs zeroed)."""
        J = self.W[0] * self.free
        for W, d in zip(self.W[1:], ds):
            J = W @ (d[:, None] * J)
        return J

    def top_pair(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """``(sigma, u, v)``: the top singular triple of the Jacobian at ``x`` (its pattern by
        :meth:`state`; it is autograd's where ``x`` is off every kink)."""
        U, S, Vt = np.linalg.svd(self.jacobian(self.state(x)["d"]))
        return float(S[0]), U[:, 0], Vt[0]

    def interior(self, pattern: list[np.ndarray]) -> np.ndarray | None:
        """A point of the box strictly inside the region of ``pattern`` (the slopes ``D_k``): the
        Chebyshev LP maximising ``m`` with ``sign_i z_i(x) >= m ||grad z_i||`` for every neuron that
        can change sign on the box, ``z`` affine in ``x`` once the pattern is fixed; None when the
        largest margin is not positive (no interior found)."""
        rows, offs = [], []
        A, off = np.eye(len(self.low)), np.zeros(len(self.low))
        for k, (W, c) in enumerate(zip(self.W[:-1], self.c[:-1])):
            A, off = W @ A, W @ off + c
            l, u = self.pre[k]
            a, b = self.slopes[k]
            open_ = (l <= 0) & (u >= 0)
            sign = np.where(pattern[k] == b, 1.0, -1.0)[open_] if a != b else np.ones(int(open_.sum()))
            rows.append(-sign[:, None] * A[open_])
            offs.append(sign * off[open_])
            A, off = pattern[k][:, None] * A, pattern[k] * off
        G = np.concatenate(rows)
        scale = np.linalg.norm(G, axis=1)
        keep = scale > 0
        G, h, scale = G[keep], np.concatenate(offs)[keep], scale[keep]
        n = len(self.low)
        a_ub = np.hstack([G, scale[:, None]])  # -sign (A x + off) + m |A| <= 0
        cost = np.zeros(n + 1)
        cost[-1] = -1.0
        width = float(np.max(self.high - self.low))
        res = DenseLP().solve(cost, a_ub, h, np.append(self.low, -np.inf), np.append(self.high, width))
        if res.status != "optimal" or res.x[-1] <= 0:
            return None
        return np.clip(res.x[:n], self.low, self.high)


class _Program:
    """The MILP of step 2 (module doc) for a :class:`_Net`; columns ``x`` then per hidden layer
    ``z, r, d, s, t, p`` (``r, d, p`` for the unstable neurons only)."""

    def __init__(self, net: _Net) -> None:
        self.net = net
        self.unstable = [np.flatnonzero(np.isnan(s)) for s in net.stable]
        sizes = [len(net.low)]
        for W, un in zip(net.W[:-1], self.unstable):
            m, k = W.shape[0], len(un)
            sizes += [m, k, k, m, m, k]
        self.offsets = np.cumsum([0, *sizes])
        self.size: dict[str, int] = {"columns": int(self.offsets[-1]), "binaries": int(sum(map(len, self.unstable)))}

    def _col(self, layer: int, block: str) -> int:
        return int(self.offsets[1 + 6 * layer + "zrdstp".index(block)])

    def solve(self, u: np.ndarray, v: np.ndarray, warm: dict[str, list[np.ndarray]], seed: int, max_nodes: int,
              time_limit: float) -> dict[str, Any]:
        """Maximise ``u^T J(x) v`` (module doc), warm-started from the point of ``warm``
        (:meth:`_Net.state`); returns ``objective``, ``x``, ``pattern`` (the slopes per layer),
        ``status`` (``optimal``, ``nodes``, ``time``, ``other``), ``nodes``, ``seconds``."""
        net = self.net
        lo, hi, integ = self._bounds(v)
        rows, rlo, rhi = self._rows()
        n_cols = self.size["columns"]
        cost = np.zeros(n_cols)
        last = len(net.W) - 2
        cost[self._col(last, "t"):self._col(last, "t") + net.W[-1].shape[1]] = -(net.W[-1].T @ u)
        self.size.update(rows=int(rows.shape[0]), nonzeros=int(rows.nnz))
        t0 = time.perf_counter()
        sol = _highs(cost, rows, rlo, rhi, lo, hi, integ, self._warm(warm, v), seed, max_nodes, max(time_limit, 0.01))
        seconds = time.perf_counter() - t0
        if sol["x"] is None:
            return {"objective": -math.inf, "x": None, "pattern": None, "seconds": seconds, **sol}
        y = sol["x"]
        pattern = []
        for k, un in enumerate(self.unstable):
            a, b = net.slopes[k]
            d = net.stable[k].copy()
            d[un] = np.where(y[self._col(k, "d"):self._col(k, "d") + len(un)] > 0.5, b, a)
            pattern.append(d)
        return {**sol, "objective": -sol["objective"], "x": np.clip(y[:len(net.low)], net.low, net.high),
                "pattern": pattern, "seconds": seconds}

    def _bounds(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column bounds and integrality; the tangents' bounds by interval arithmetic from ``t_0 = v``."""
        net = self.net
        lo, hi = np.full(self.size["columns"], -np.inf), np.full(self.size["columns"], np.inf)
        integ = np.zeros(self.size["columns"], dtype=np.uint8)
        lo[:len(net.low)], hi[:len(net.low)] = net.low, net.high
        t_lo = t_hi = v * net.free
        for k, un in enumerate(self.unstable):
            W, (l, u), (a, b) = net.W[k], net.pre[k], net.slopes[k]
            mid, rad = W @ ((t_lo + t_hi) / 2), np.abs(W) @ ((t_hi - t_lo) / 2)
            pad = _PAD * (np.abs(mid) + rad) if k > 0 else 0.0
            s_lo, s_hi = mid - rad - pad, mid + rad + pad
            if k == 0:
                s_lo = s_hi = W @ (v * net.free)
            ends = np.stack([a * s_lo, b * s_lo, a * s_hi, b * s_hi])
            t_lo = np.where(np.isnan(net.stable[k]), ends.min(0), np.nan_to_num(net.stable[k]) * np.minimum(s_lo, s_hi))
            t_hi = np.where(np.isnan(net.stable[k]), ends.max(0), np.nan_to_num(net.stable[k]) * np.maximum(s_lo, s_hi))
            t_lo, t_hi = np.minimum(t_lo, t_hi), np.maximum(t_lo, t_hi)
            for block, blo, bhi in (("z", l, u), ("r", np.zeros(len(un)), np.maximum(u[un], 0)),
                                    ("d", np.zeros(len(un)), np.ones(len(un))), ("s", s_lo, s_hi),
                                    ("t", t_lo, t_hi), ("p", np.minimum(s_lo[un], 0), np.maximum(s_hi[un], 0))):
                j = self._col(k, block)
                lo[j:j + len(blo)], hi[j:j + len(bhi)] = blo, bhi
            integ[self._col(k, "d"):self._col(k, "d") + len(un)] = 1
        self._s = [(lo[self._col(k, "s"):self._col(k, "s") + net.W[k].shape[0]][un],
                    hi[self._col(k, "s"):self._col(k, "s") + net.W[k].shape[0]][un]) for k, un in enumerate(self.unstable)]
        return lo, hi, integ

    def _rows(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """The constraint rows ``rlo <= A y <= rhi`` (module doc); :meth:`_bounds` first (the big-M
        constants of ``p`` are the bounds of ``s``)."""
        net = self.net
        n_cols = self.size["columns"]
        blocks, rlo, rhi = [], [], []

        def add(entries: list[tuple[str | int, int, np.ndarray, np.ndarray]], lo_: np.ndarray, hi_: np.ndarray) -> None:
            mats = [sp.coo_matrix(np.atleast_2d(m)) for *_, m in entries]
            m = mats[0].shape[0]
            cols = []
            for (block, layer, idx, _), mat in zip(entries, mats):
                start = 0 if block == "x" else self._col(layer, block)
                cols.append(sp.coo_matrix((mat.data, (mat.row, start + idx[mat.col])), shape=(m, n_cols)))
            blocks.append(sum(cols[1:], cols[0]).tocsr())
            rlo.append(np.broadcast_to(lo_, (m,)))
            rhi.append(np.broadcast_to(hi_, (m,)))

        for k, un in enumerate(self.unstable):
            W, c, (l, u), (a, b) = net.W[k], net.c[k], net.pre[k], net.slopes[k]
            m, nu, I, E = W.shape[0], len(un), np.eye(W.shape[0]), np.eye(len(un))
            all_ = np.arange(m)
            if k == 0:
                add([("x", 0, np.arange(W.shape[1]), -W), ("z", 0, all_, I)], c, c)
            else:  # z_k = W_k (slope * z_{k-1} + (b - a) r_{k-1}) + c_k
                prev, (pa, pb) = self.unstable[k - 1], net.slopes[k - 1]
                hz = np.where(np.isnan(net.stable[k - 1]), pa, net.stable[k - 1])
                add([("z", k - 1, np.arange(W.shape[1]), -W * hz), ("r", k - 1, np.arange(len(prev)), -(pb - pa) * W[:, prev]),
                     ("z", k, all_, I)], c, c)
                # s_k = W_k t_{k-1}
                add([("t", k - 1, np.arange(W.shape[1]), -W), ("s", k, all_, I)], 0.0, 0.0)
            stable = np.flatnonzero(~np.isnan(net.stable[k]))
            add([("t", k, stable, np.eye(len(stable))), ("s", k, stable, -np.diag(net.stable[k][stable]))], 0.0, 0.0)
            if nu == 0:
                continue
            ar = np.arange(nu)
            add([("t", k, un, E), ("s", k, un, -a * E), ("p", k, ar, -(b - a) * E)], 0.0, 0.0)
            add([("r", k, ar, E), ("z", k, un, -E)], 0.0, np.inf)  # r >= z
            add([("r", k, ar, E), ("z", k, un, -E), ("d", k, ar, -np.diag(l[un]))], -np.inf, -l[un])  # r <= z - l (1 - d)
            add([("r", k, ar, E), ("d", k, ar, -np.diag(u[un]))], -np.inf, 0.0)  # r <= u d
            s_lo, s_hi = self._s[k]
            add([("p", k, ar, E), ("d", k, ar, -np.diag(s_hi))], -np.inf, 0.0)  # p <= S d
            add([("p", k, ar, E), ("d", k, ar, -np.diag(s_lo))], 0.0, np.inf)  # p >= S' d
            add([("p", k, ar, E), ("s", k, un, -E), ("d", k, ar, -np.diag(s_lo))], -np.inf, -s_lo)  # p <= s - S'(1 - d)
            add([("p", k, ar, E), ("s", k, un, -E), ("d", k, ar, -np.diag(s_hi))], -s_hi, np.inf)  # p >= s - S(1 - d)
        return sp.vstack(blocks).tocsr(), np.concatenate(rlo), np.concatenate(rhi)

    def _warm(self, state: dict[str, list[np.ndarray]], v: np.ndarray) -> np.ndarray:
        """The column vector of the point ``state["x"]`` with its own pattern (stable neurons at
        their slope): a feasible solution, up to rounding."""
        net = self.net
        y = np.zeros(self.size["columns"])
        y[:len(net.low)] = state["x"]
        t = v * net.free
        for k, un in enumerate(self.unstable):
            z, (a, b) = state["z"][k], net.slopes[k]
            d = np.where(np.isnan(net.stable[k]), np.where(z > 0, b, a), net.stable[k])
            s = net.W[k] @ t
            t = d * s
            on = (d[un] == b).astype(np.float64) if a != b else np.ones(len(un))
            for block, val in (("z", z), ("r", np.maximum(z[un], 0)), ("d", on), ("s", s), ("t", t), ("p", on * s[un])):
                j = self._col(k, block)
                y[j:j + len(val)] = val
        return y


def _highs(cost: np.ndarray, rows: sp.csr_matrix, rlo: np.ndarray, rhi: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           integ: np.ndarray, warm: np.ndarray, seed: int, max_nodes: int, time_limit: float) -> dict[str, Any]:
    """``min cost^T y`` s.t. ``rlo <= rows y <= rhi``, ``lo <= y <= hi``, ``y_j`` integer where
    ``integ``: HiGHS through ``highspy`` (seed ``seed``, warm start ``warm``; the thread count is
    left to HiGHS's process-wide scheduler: setting it after another HiGHS object started that
    scheduler makes the run fail) when installed, else ``scipy.optimize.milp`` (no warm start). Returns ``x`` (None without a feasible
    point), ``objective``, ``status`` and ``nodes``."""
    try:
        import highspy
    except ImportError:
        return _scipy_milp(cost, rows, rlo, rhi, lo, hi, integ, max_nodes, time_limit)
    inf = highspy.kHighsInf
    h = silent_stdout(highspy.Highs)
    for name, value in (("output_flag", False), ("random_seed", seed), ("mip_max_nodes", max_nodes),
                        ("time_limit", time_limit), ("mip_rel_gap", 1e-9)):
        h.setOptionValue(name, value)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), rows.shape[0]
    lp.col_cost_ = cost
    lp.col_lower_, lp.col_upper_ = np.where(np.isfinite(lo), lo, -inf), np.where(np.isfinite(hi), hi, inf)
    lp.row_lower_, lp.row_upper_ = np.where(np.isfinite(rlo), rlo, -inf), np.where(np.isfinite(rhi), rhi, inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_, lp.a_matrix_.index_ = rows.indptr.astype(np.int32), rows.indices.astype(np.int32)
    lp.a_matrix_.value_ = rows.data.astype(np.float64)
    lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in integ]
    h.passModel(lp)
    start = highspy.HighsSolution()
    start.col_value = list(warm)
    start.value_valid = True
    h.setSolution(start)
    h.run()
    status, info = h.getModelStatus(), h.getInfo()
    name = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kTimeLimit: "time",
            highspy.HighsModelStatus.kSolutionLimit: "nodes"}.get(status, "other")
    found = info.primal_solution_status == 2  # kSolutionStatusFeasible
    return {"x": np.array(h.getSolution().col_value) if found else None,
            "objective": info.objective_function_value if found else math.inf,
            "status": name, "nodes": int(info.mip_node_count)}


def _scipy_milp(cost, rows, rlo, rhi, lo, hi, integ, max_nodes, time_limit) -> dict[str, Any]:
    from scipy.optimize import Bounds, LinearConstraint, milp
    res = milp(cost, integrality=integ, bounds=Bounds(lo, hi), constraints=LinearConstraint(rows, rlo, rhi),
               options={"node_limit": max_nodes, "time_limit": time_limit, "mip_rel_gap": 1e-9})
    status = "optimal" if res.status == 0 else ("time" if "time" in res.message.lower() else "nodes") \
        if res.status == 1 else "other"
    return {"x": res.x, "objective": res.fun if res.x is not None else math.inf, "status": status,
            "nodes": int(getattr(res, "mip_node_count", 0) or 0)}
