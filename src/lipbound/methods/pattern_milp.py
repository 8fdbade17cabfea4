"""The mixed-integer program of ``lower-milp`` (:mod:`lipbound.methods.lower_milp`, step 2 of its
module doc): a chain of affine maps and two-slope activations on a box, as numpy matrices
(:class:`ChainNet`: patterns, Jacobians ``J_P``, interior points of a pattern's region), and the
LipMIP-style MILP that maximises ``u^T J(x) v`` over the points of the box and the patterns
realisable there (:class:`PatternProgram`: big-M encodings of ``relu(z)`` and of ``d s`` on the
unstable neurons, from the pre-activation bounds of the box). The MILP proves nothing by itself:
its points are re-checked as witnesses by the caller.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from .lp import DenseLP
from .milp_solver import solve_milp
from .piecewise import DenseLayer
from .region import Box

__all__ = ["KINK_RTOL", "ChainNet", "PatternProgram"]

_PAD = 1e-9  # relative widening of the tangents' interval bounds (big-M constants only)


#: the relative distance from a kink below which a MILP point is not offered as a witness
KINK_RTOL = 1e-9


class ChainNet:
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


class PatternProgram:
    """The MILP of step 2 of lower_milp's module doc for a :class:`ChainNet`; columns ``x`` then per
    hidden layer ``z, r, d, s, t, p`` (``r, d, p`` for the unstable neurons only)."""

    def __init__(self, net: ChainNet) -> None:
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
              deadline: float) -> dict[str, Any]:
        """Maximise ``u^T J(x) v`` (lower_milp's module doc), warm-started from the point of ``warm``
        (:meth:`ChainNet.state`), by ``deadline`` (a ``time.perf_counter()`` value; plus
        :data:`~lipbound.methods.milp_solver.GRACE` at most); returns ``objective``, ``x``,
        ``pattern`` (the slopes per layer), ``status`` (``optimal``, ``nodes``, ``time``, ``other``),
        ``nodes``, ``seconds`` (from the model's build to the solver's return)."""
        net = self.net
        t0 = time.perf_counter()
        lo, hi, integ = self._bounds(v)
        rows, rlo, rhi = self._rows()
        n_cols = self.size["columns"]
        cost = np.zeros(n_cols)
        last = len(net.W) - 2
        cost[self._col(last, "t"):self._col(last, "t") + net.W[-1].shape[1]] = -(net.W[-1].T @ u)
        self.size.update(rows=int(rows.shape[0]), nonzeros=int(rows.nnz))
        sol = solve_milp(cost, rows, rlo, rhi, lo, hi, integ, self._warm(warm, v), seed, max_nodes, deadline)
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
        """The constraint rows ``rlo <= A y <= rhi`` (lower_milp's module doc); :meth:`_bounds` first
        (the big-M constants of ``p`` are the bounds of ``s``)."""
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
