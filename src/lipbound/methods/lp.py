"""Small dense LPs ``min c^T x  s.t.  A x <= b,  lo <= x <= hi`` solved by HiGHS, and an exact
check of the emptiness certificates read from their duals.

``highspy`` (HiGHS's own Python interface) is used when installed: one solver object is reused,
which costs about a millisecond per small LP; otherwise ``scipy.optimize.linprog(method="highs")``
(the same solver behind an interface with more per-call overhead).

A floating-point LP proves nothing by itself: its answers are candidates. :func:`proves_no_interior`
turns the LP's dual multipliers into a proof, checked in exact rational arithmetic, that a
polyhedron has no interior point.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["LPResult", "DenseLP", "proves_no_interior", "silent_stdout"]


@dataclass
class LPResult:
    """``status``: "optimal", "infeasible" or "other" (unbounded, limits, errors); when optimal,
    ``x`` the solution and ``y >= 0`` the multipliers of the rows ``A x <= b`` (the dual solution,
    approximately ``c + A^T y = 0`` on the columns strictly inside their bounds)."""

    status: str
    x: np.ndarray | None
    y: np.ndarray | None = None


class DenseLP:
    """A reusable HiGHS solver for dense LPs (module doc)."""

    def __init__(self) -> None:
        try:
            import highspy
        except ImportError:
            self._highs = None
            return
        self._hs = highspy
        self._highs = silent_stdout(highspy.Highs)
        self._highs.setOptionValue("output_flag", False)

    def solve(self, c: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> LPResult:
        """``lo``/``hi`` may hold ``-inf``/``inf`` (free variables)."""
        if self._highs is None:
            return _scipy(c, a_ub, b_ub, lo, hi)
        hs = self._hs
        inf = hs.kHighsInf
        lp = hs.HighsLp()
        m, n = a_ub.shape
        lp.num_col_, lp.num_row_ = n, m
        lp.col_cost_ = np.ascontiguousarray(c, dtype=np.float64)
        lp.col_lower_ = np.where(np.isfinite(lo), lo, -inf).astype(np.float64)
        lp.col_upper_ = np.where(np.isfinite(hi), hi, inf).astype(np.float64)
        lp.row_lower_ = np.full(m, -inf)
        lp.row_upper_ = np.ascontiguousarray(b_ub, dtype=np.float64)
        lp.a_matrix_.format_ = hs.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.arange(0, m * n + 1, n, dtype=np.int32)
        lp.a_matrix_.index_ = np.tile(np.arange(n, dtype=np.int32), m)
        lp.a_matrix_.value_ = np.ascontiguousarray(a_ub, dtype=np.float64).ravel()
        h = self._highs
        h.clearModel()
        h.passModel(lp)
        h.run()
        status = h.getModelStatus()
        if status == hs.HighsModelStatus.kOptimal:
            sol = h.getSolution()
            return LPResult("optimal", np.array(sol.col_value), -np.array(sol.row_dual))
        if status == hs.HighsModelStatus.kInfeasible:
            return LPResult("infeasible", None)
        return LPResult("other", None)


def _scipy(c, a_ub, b_ub, lo, hi) -> LPResult:
    from scipy.optimize import linprog

    bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b) for a, b in zip(lo, hi)]
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status == 0:
        return LPResult("optimal", res.x, -np.asarray(res.ineqlin.marginals))
    return LPResult("infeasible" if res.status == 2 else "other", None)


def proves_no_interior(a: np.ndarray, c: np.ndarray, y_hint: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """True only if the polyhedron ``P = {x : a_j . x + c_j >= 0 for every row j, lo <= x <= hi}``
    has no interior point, proved in exact rational arithmetic (``a``, ``c``: object arrays of
    exact numbers, e.g. :class:`~fractions.Fraction` or ints, shapes ``(k, n)`` and ``(k,)``;
    ``lo``, ``hi``: float64, possibly infinite).

    The proof is a vector ``y >= 0`` whose affine function ``phi(x) = sum_j y_j (a_j . x + c_j)``
    has ``M = max of phi over the box`` (finite: ``v = sum_j y_j a_j`` is 0 where the box is
    unbounded) with either ``M < 0``, or ``M <= 0`` and ``y_j > 0`` for a row with ``a_j != 0``.
    Indeed an interior point ``x`` of ``P`` has ``a_j . x + c_j > 0`` on every row with
    ``a_j != 0`` (else a neighbour on the other side of that hyperplane leaves ``P``) and
    ``c_j >= 0`` on the others, so ``phi(x) <= M`` would be ``> 0`` in the second case and ``>= 0``
    in the first. A row with ``a_j = 0`` and ``c_j = 0`` (a pre-activation constant on a breakpoint)
    thus never empties ``P`` by itself.

    ``y_hint`` (float, e.g. an LP's dual) proposes ``y`` on its support (entries above ``1e-9``
    times its largest): first ``y_hint`` itself, then, when rounding left ``v`` slightly off 0 (two
    hyperplanes that coincide in exact arithmetic), the nearby ``y`` with ``v = 0`` exactly (it keeps
    the hint's values on the free coordinates of the null space of ``a^T`` and solves for the
    others); the box's own rows never need multipliers, ``M`` accounts for them.
    """
    y_hint = np.asarray(y_hint, dtype=np.float64)
    if not np.isfinite(y_hint).all() or y_hint.max(initial=0.0) <= 0:
        return False
    support = np.flatnonzero(y_hint > 1e-9 * y_hint.max())
    a_j, c_j = [list(a[j]) for j in support], [c[j] for j in support]
    hint = [Fraction(float(v)) for v in y_hint[support]]
    unbounded = [i for i in range(a.shape[1]) if not (np.isfinite(lo[i]) and np.isfinite(hi[i]))]
    for balanced in (unbounded, range(a.shape[1])):
        y = _balance(a_j, hint, balanced)
        if y is not None and _certifies(a_j, c_j, y, lo, hi):
            return True
    return False


def _balance(a_j: list[list], hint: list[Fraction], coords) -> list[Fraction] | None:
    """``y`` near ``hint`` with ``sum_j y_j a_j[i] = 0`` exactly for every ``i`` in ``coords``: the
    reduced row echelon form of that linear system in exact arithmetic, the hint's values on its
    free unknowns; None when only ``y = 0`` solves it."""
    rows = [[row[i] for row in a_j] for i in coords]  # the system's matrix, reduced in place
    k = len(a_j)
    pivots: list[tuple[int, int]] = []  # (row, column) of each pivot
    for col in range(k):
        r = len(pivots)
        piv = next((i for i in range(r, len(rows)) if rows[i][col] != 0), None)
        if piv is None:
            continue
        rows[r], rows[piv] = rows[piv], rows[r]
        inv = 1 / Fraction(rows[r][col])
        rows[r] = [v * inv for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col] != 0:
                f = rows[i][col]
                rows[i] = [u - f * v for u, v in zip(rows[i], rows[r])]
        pivots.append((r, col))
    if len(pivots) == k:
        return None
    y = list(hint)
    free = [j for j in range(k) if all(j != col for _, col in pivots)]
    for r, col in pivots:  # y_pivot = -(the reduced row's free entries) . y_free
        y[col] = -sum((rows[r][j] * y[j] for j in free), Fraction(0))
    return y


def _certifies(a_j: list[list], c_j: list, y: list[Fraction], lo: np.ndarray, hi: np.ndarray) -> bool:
    """The certificate condition of :func:`proves_no_interior` for ``y``, in exact arithmetic."""
    if any(v < 0 for v in y) or not any(v > 0 for v in y):
        return False
    top = sum((v * c for v, c in zip(y, c_j)), Fraction(0))  # max over the box of phi
    for i in range(len(lo)):
        v_i = sum((v * row[i] for v, row in zip(y, a_j)), Fraction(0))
        end = hi[i] if v_i > 0 else lo[i]
        if v_i != 0:
            if not np.isfinite(end):
                return False
            top += v_i * Fraction(float(end))
    moving = any(v > 0 and any(e != 0 for e in row) for v, row in zip(y, a_j))
    return bool(top < 0 or (top <= 0 and moving))


def silent_stdout(make):
    """Call ``make()`` with the process's stdout closed: HiGHS prints a banner from C++ when its
    solver object is created, which would corrupt the CLI's output (e.g. its JSON)."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        return make()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
