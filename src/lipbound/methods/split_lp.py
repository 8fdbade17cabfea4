"""Sound pre-activation bounds of a ReLU MLP on a box under neuron splits, by the LP relaxation
(Planet / triangle relaxation, Ehlers 2017) and Lagrangian duality; used by ``"neuron-bab"``
(:mod:`~lipbound.methods.neuron_bab`).

**The relaxation.** Variables ``v = (x, h_1, ..., h_{K-1})``: the input in its box and every hidden
layer's post-activations. For neuron ``i`` of hidden layer ``l`` with pre-activation
``z_i = W_i h_{l-1} + b_i`` (``h_0 = x``), bounds ``[l_i, u_i]`` valid on the node and a state:

* **active** (stable, ``l_i >= 0``, or split with ``z_i >= 0``): row ``h_i - W_i h_{l-1} = b_i`` and
  ``h_i`` in ``[max(l_i, 0), u_i]`` (which also enforces the split ``z_i >= 0``);
* **inactive** (``u_i <= 0`` or split with ``z_i <= 0``): ``h_i`` in ``[0, 0]``, and for a split one the
  row ``W_i h_{l-1} <= -b_i``;
* **free** (unstable, not split): ``h_i >= z_i``; ``t h_i - W_i h_{l-1} <= b_i - l_i`` (the triangle's
  upper line ``h_i <= (z_i - l_i) / t``), with ``t <= (u_i - l_i) / u_i`` rounded down and the right
  side rounded up, so the line stays above ``relu`` on ``[l_i, u_i]``; ``h_i`` in ``[0, u_i]``. All
  coefficients are the float64 weights themselves (no product is rounded into a row).

**The exact network.** ``W`` and ``b`` are float64 numbers that enclose the exact map:
``|W* - W| <= E``, ``|b* - b| <= e`` (:func:`.split_crown.chain_of`; a composed layer's
materialisation is off by ``~1e-13``). Over the variable box, ``|h_{l-1}| <= r`` (the previous
block's bounds), so ``z*_i = W*_i h_{l-1} + b*_i`` is within ``s_i = E_i r + e_i`` (rounded up) of
``W_i h_{l-1} + b_i``. Each row above is written for ``z*``: its right side moved outward by ``s_i``
(the active row's equality becomes the range ``b_i +- s_i``), rounded outward; a neuron's bound is
that of ``W_i h_{l-1} + b_i`` moved outward by ``s_i``. With ``E = e = 0`` every row is as above.

Every input of the node (a point of the box whose neurons satisfy the splits) with its exact
post-activations satisfies every row and every variable bound: the relaxation contains the node.

**Soundness of the bounds (weak duality).** For ``min c^T v`` over ``{v in box: lo_r <= (A v)_r <=
hi_r}`` (``lo_r = -inf``, ``= hi_r`` or a range), any multipliers ``y`` (``y <= 0`` on the rows
without a lower side, HiGHS's sign) give ``c^T v >= (c - A^T y)^T v + sum_r min(y_r lo_r, y_r hi_r)
>= sum_k min(g_k lo_k, g_k hi_k) + sum_r min(y_r lo_r, y_r hi_r)`` with ``g = c - A^T y``, for every
feasible ``v``. The LP (HiGHS, warm-started across objectives) only proposes ``y``; the bound is
evaluated from the float64 weights with a rigorous bound of its rounding error (Higham's
``gamma_n``), so it holds whatever the solver's tolerances. A node whose rigorous lower bound of a
neuron exceeds its rigorous upper bound, or whose LP is infeasible with a Farkas ray whose
Lagrangian (``c = 0``, the ray as ``y``) is rigorously positive, contains no input: it is **empty**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .lp import silent_stdout
from .float_error import TINY, gamma, round_up
from .relu_boxes import Layer

__all__ = ["SplitLP", "ACTIVE", "INACTIVE", "FREE"]

ACTIVE, INACTIVE, FREE = 1, 0, -1


def states(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per neuron: ACTIVE (``l >= 0``), INACTIVE (``u <= 0``) or FREE."""
    return np.where(lo >= 0, ACTIVE, np.where(hi <= 0, INACTIVE, FREE))


def _down(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A float at most ``v - s`` (``s >= 0``): ``v`` itself where ``s = 0``, else the rounded
    difference moved one ulp down."""
    return np.where(s > 0, np.nextafter(v - s, -np.inf), v)


def _up(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A float at least ``v + s`` (``s >= 0``): :func:`_down` mirrored."""
    return -_down(-v, s)


@dataclass
class _Rows:
    """``row_lo <= A v <= row_hi`` (``row_lo`` is ``-inf``, equal to ``row_hi``, or below it: a range)."""
    a: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray


class SplitLP:
    """The relaxation of one node (module doc): ``layers`` the hidden layers with their enclosures
    (:class:`.relu_boxes.Layer`), ``pre`` the node's bounds per hidden layer, ``split`` per hidden
    layer a bool mask of the neurons whose state was fixed by a split (their bounds say which side),
    the input box."""

    def __init__(self, layers: list[Layer], pre: list[tuple[np.ndarray, np.ndarray]],
                 split: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> None:
        self.sizes = [lo.size] + [l.W.shape[0] for l in layers]
        self.starts = np.cumsum([0] + self.sizes)
        self.weights, self.biases = [l.W.numpy() for l in layers], [l.b.numpy() for l in layers]
        self.slack: list[np.ndarray] = []  # per layer, s_i >= |z*_i - (W_i h + b_i)| over the box (module doc)
        v_lo, v_hi, blocks, row_lo, row_hi = [lo], [hi], [], [], []
        for m, (layer, w, b, (l, u), s) in enumerate(zip(layers, self.weights, self.biases, pre, split)):
            reach = np.maximum(np.abs(v_lo[-1]), np.abs(v_hi[-1]))
            reach = np.minimum(reach, np.finfo(np.float64).max)  # E = 0 times an infinite bound is 0, not nan
            slack = round_up(layer.E.numpy() @ reach + layer.e.numpy(), w.shape[1] + 1)
            self.slack.append(slack)
            st = states(l, u)
            v_lo.append(np.where(st == ACTIVE, np.maximum(l, 0.0), 0.0))
            v_hi.append(np.where(st == INACTIVE, 0.0, np.maximum(u, 0.0)))
            eye = sp.identity(w.shape[0], format="csr")
            act, free, cut = st == ACTIVE, st == FREE, (st == INACTIVE) & s
            # h <= (z - l) / t with t <= (u - l) / u rounded down: t h - W h_prev <= b - l rounded up
            t = np.where(free, (u - l) / np.where(free, u, 1.0), 1.0) * (1 - 8 * gamma(1))
            t_eye = sp.diags(t, format="csr")
            no_lo = np.full_like(b, -np.inf)
            for rows, coef_prev, coef_self, rlo, rhi in (
                    (act, -w, eye, _down(b, slack), _up(b, slack)),  # h = z
                    (cut, w, None, no_lo, _up(-b, slack)),  # z <= 0
                    (free, w, -eye, no_lo, _up(-b, slack)),  # z - h <= 0
                    (free, -w, t_eye, no_lo, _up(np.nextafter(b - l, np.inf), slack))):  # h <= (z - l) / t
                if not rows.any():
                    continue
                blocks.append(self._block(m, sp.csr_matrix(coef_prev[rows]), None if coef_self is None else
                                          coef_self[np.flatnonzero(rows)]))
                row_lo.append(rlo[rows])
                row_hi.append(rhi[rows])
        self.v_lo, self.v_hi = np.concatenate(v_lo), np.concatenate(v_hi)
        a = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, self.starts[-1]))
        self.rows = _Rows(a, np.concatenate(row_lo) if row_lo else np.zeros(0), np.concatenate(row_hi) if row_hi else np.zeros(0))
        self.col_count = int(np.diff(a.tocsc().indptr).max(initial=0))
        self.lps = 0
        self._highs = None

    def _block(self, m: int, prev: sp.csr_matrix, own: sp.csr_matrix | None) -> sp.csr_matrix:
        """Rows over all variables from coefficients on layer ``m``'s input and on its own outputs."""
        n = prev.shape[0]
        parts = [sp.csr_matrix((n, self.starts[m])), prev]
        parts.append(own if own is not None else sp.csr_matrix((n, self.sizes[m + 1])))
        parts.append(sp.csr_matrix((n, self.starts[-1] - self.starts[m + 2])))
        return sp.hstack(parts, format="csr")

    # ---- the solver ---------------------------------------------------------------------
    def _solver(self):
        if self._highs is None:
            import highspy
            h = silent_stdout(highspy.Highs)
            h.setOptionValue("output_flag", False)
            inf = highspy.kHighsInf
            lp = highspy.HighsLp()
            a = self.rows.a
            lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
            lp.col_cost_ = np.zeros(a.shape[1])
            lp.col_lower_, lp.col_upper_ = self.v_lo.copy(), self.v_hi.copy()
            lp.row_lower_ = np.where(np.isfinite(self.rows.row_lo), self.rows.row_lo, -inf)
            lp.row_upper_ = self.rows.row_hi.astype(np.float64)
            lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
            lp.a_matrix_.start_ = a.indptr.astype(np.int32)
            lp.a_matrix_.index_ = a.indices.astype(np.int32)
            lp.a_matrix_.value_ = a.data.astype(np.float64)
            h.passModel(lp)
            self._hs, self._highs = highspy, h
        return self._highs

    def _minimise(self, c: np.ndarray) -> tuple[str, np.ndarray | None, np.ndarray | None]:
        """``(status, y, v)``: HiGHS's row duals ``y`` and point ``v`` of ``min c^T v``."""
        h, hs = self._solver(), self._hs
        h.changeColsCost(len(c), np.arange(len(c), dtype=np.int32), c.astype(np.float64))
        h.run()
        self.lps += 1
        status = h.getModelStatus()
        if status == hs.HighsModelStatus.kOptimal:
            sol = h.getSolution()
            return "optimal", np.array(sol.row_dual), np.array(sol.col_value)
        if status == hs.HighsModelStatus.kInfeasible:
            return "infeasible", None, None
        return "other", None, None

    # ---- rigorous Lagrangian bounds ------------------------------------------------------
    def lagrangian(self, c: np.ndarray, y: np.ndarray) -> float:
        """A rigorous lower bound of ``min c^T v`` over the relaxation from multipliers ``y``
        (module doc; the multipliers of rows without a lower side are clipped to ``<= 0``)."""
        has_lo = np.isfinite(self.rows.row_lo)
        y = np.where(has_lo, y, np.minimum(y, 0.0))
        a = self.rows.a
        g = c - a.T @ y
        err = gamma(self.col_count + 2) * (np.abs(c) + abs(a).T @ np.abs(y))  # |g~ - g| up to its own rounding
        terms = np.minimum(g * self.v_lo, g * self.v_hi)
        reach = np.maximum(np.abs(self.v_lo), np.abs(self.v_hi))
        yb = np.where(y > 0, y * np.where(has_lo, self.rows.row_lo, 0.0), y * self.rows.row_hi)  # min(y lo, y hi)
        total = terms.sum() + yb.sum()
        n = len(terms) + len(yb) + 4
        slack = (2 * err * reach).sum() + gamma(n) * (np.abs(terms).sum() + np.abs(yb).sum()) + n * TINY
        return float(total - 2 * slack)

    def target(self, m: int, i: int) -> tuple[np.ndarray, float]:
        """``(c, b)`` with ``c^T v + b`` the float64 form of neuron ``i`` of hidden layer ``m`` (the exact
        ``z_i`` is within ``slack[m][i]`` of it)."""
        c = np.zeros(self.starts[-1])
        c[self.starts[m]:self.starts[m + 1]] = self.weights[m][i]
        return c, float(self.biases[m][i])

    def bound(self, m: int, i: int, sides: tuple[float, ...] = (1.0, -1.0)) -> tuple[float, float, list[np.ndarray]] | None:
        """Rigorous ``(lower, upper)`` of neuron ``i``'s pre-activation over the node (``-inf``/``inf``
        where the solver gave nothing, or for a side not in ``sides``: ``1.0`` the lower bound,
        ``-1.0`` the upper one) and the LP's input points; None when the node is proved empty."""
        c, b = self.target(m, i)
        out, points = [], []
        for sign in (1.0, -1.0):
            if sign not in sides:
                out.append(-math.inf)
                continue
            status, y, v = self._minimise(sign * c)
            if status == "infeasible":
                return None if self.proves_empty() else (-math.inf, math.inf, points)
            if status != "optimal":
                out.append(-math.inf)
                continue
            points.append(v[:self.sizes[0]])
            out.append(self.lagrangian(sign * c, y))
        low, high = out[0] + b, -out[1] + b  # the bias is exact; its sum rounds by at most one ulp each
        low, high = np.nextafter(low, -np.inf), np.nextafter(high, np.inf)
        s = self.slack[m][i]  # the exact neuron's distance from the float form
        return float(_down(low, s)), float(_up(high, s)), points

    def proves_empty(self) -> bool:
        """The relaxation is empty, by HiGHS's dual ray checked rigorously (module doc)."""
        h = self._solver()
        *_, has, ray = h.getDualRay()  # (status, has, ray)
        if not has:
            return False
        ray = np.asarray(ray, dtype=np.float64)
        zero = np.zeros(self.starts[-1])
        return any(self.lagrangian(zero, s * ray) > 0 for s in (1.0, -1.0))
