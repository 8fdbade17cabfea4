"""Small dense LPs ``min c^T x  s.t.  A x <= b,  lo <= x <= hi`` solved by HiGHS.

``highspy`` (HiGHS's own Python interface) is used when installed: one solver object is reused,
which costs about a millisecond per small LP; otherwise ``scipy.optimize.linprog(method="highs")``
(the same solver behind an interface with more per-call overhead).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

__all__ = ["LPResult", "DenseLP"]


@dataclass
class LPResult:
    """``status``: "optimal", "infeasible" or "other" (unbounded, limits, errors); ``x`` the
    solution when optimal."""

    status: str
    x: np.ndarray | None


class DenseLP:
    """A reusable HiGHS solver for dense LPs (module doc)."""

    def __init__(self) -> None:
        try:
            import highspy
        except ImportError:
            self._highs = None
            return
        self._hs = highspy
        self._highs = _silent(highspy.Highs)
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
            return LPResult("optimal", np.array(h.getSolution().col_value))
        if status == hs.HighsModelStatus.kInfeasible:
            return LPResult("infeasible", None)
        return LPResult("other", None)


def _scipy(c, a_ub, b_ub, lo, hi) -> LPResult:
    from scipy.optimize import linprog

    bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b) for a, b in zip(lo, hi)]
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status == 0:
        return LPResult("optimal", res.x)
    return LPResult("infeasible" if res.status == 2 else "other", None)


def _silent(make):
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
