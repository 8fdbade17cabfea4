"""One mixed-integer linear program solved by HiGHS: ``min cost^T y`` subject to
``rlo <= rows y <= rhi``, ``lo <= y <= hi`` and ``y_j`` integer where ``integ``.

Through ``highspy`` when it is installed (a fixed seed, a warm start, a node limit: the same
program and seed give the same answer), else through ``scipy.optimize.milp`` (HiGHS too, no warm
start). The node limit is the deterministic work cap; the time limit only caps it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp

from .lp import silent_stdout

__all__ = ["solve_milp"]


def solve_milp(cost: np.ndarray, rows: sp.csr_matrix, rlo: np.ndarray, rhi: np.ndarray, lo: np.ndarray, hi: np.ndarray,
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
