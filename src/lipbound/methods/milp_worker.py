"""The process that solves one MILP for :mod:`lipbound.methods.milp_solver` (run as a script: it
imports numpy and HiGHS only, not lipbound, so that it starts in about 0.4 s).

Protocol: once its imports are done it writes ``R`` to its stdout and reads an ``.npz`` from stdin
(the program's arrays, ``seed``, ``max_nodes`` and ``left``: the seconds to the caller's deadline
when the caller sent it, at most its ``R``'s reception); it solves with HiGHS's ``time_limit``
``left`` minus the seconds since it wrote ``R`` (so the limit never ends after the caller's
deadline), and writes an ``.npz`` answer (``x`` empty without a feasible point, ``objective``,
``status``, ``nodes``). HiGHS's banner goes to stderr: stdout carries the protocol only.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time

import numpy as np


def solve(p: dict, time_limit: float) -> dict:
    """``min cost^T y`` s.t. ``rlo <= A y <= rhi``, ``lo <= y <= hi``, ``y_j`` integer where
    ``integ`` (``A`` rowwise: ``data``, ``indices``, ``indptr``): HiGHS through ``highspy`` (seed,
    warm start, node limit, ``time_limit``; the thread count is left to HiGHS) when installed, else
    ``scipy.optimize.milp`` (no warm start)."""
    if time_limit <= 0:
        return {"x": np.empty(0), "objective": math.inf, "status": "time", "nodes": 0}
    try:
        import highspy
    except ImportError:
        return _scipy(p, time_limit)
    inf = highspy.kHighsInf
    h = highspy.Highs()
    for name, value in (("output_flag", False), ("random_seed", int(p["seed"])), ("mip_max_nodes", int(p["max_nodes"])),
                        ("mip_rel_gap", 1e-9)):
        h.setOptionValue(name, value)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(p["cost"]), len(p["rlo"])
    lp.col_cost_ = p["cost"]
    lp.col_lower_, lp.col_upper_ = np.where(np.isfinite(p["lo"]), p["lo"], -inf), np.where(np.isfinite(p["hi"]), p["hi"], inf)
    lp.row_lower_, lp.row_upper_ = np.where(np.isfinite(p["rlo"]), p["rlo"], -inf), np.where(np.isfinite(p["rhi"]), p["rhi"], inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_, lp.a_matrix_.index_ = p["indptr"].astype(np.int32), p["indices"].astype(np.int32)
    lp.a_matrix_.value_ = p["data"].astype(np.float64)
    lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in p["integ"]]
    h.passModel(lp)
    start = highspy.HighsSolution()
    start.col_value = list(p["warm"])
    start.value_valid = True
    h.setSolution(start)
    h.setOptionValue("time_limit", time_limit)
    h.run()
    status, info = h.getModelStatus(), h.getInfo()
    name = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kTimeLimit: "time",
            highspy.HighsModelStatus.kSolutionLimit: "nodes"}.get(status, "other")
    found = info.primal_solution_status == 2  # kSolutionStatusFeasible
    return {"x": np.array(h.getSolution().col_value) if found else np.empty(0),
            "objective": info.objective_function_value if found else math.inf,
            "status": name, "nodes": int(info.mip_node_count)}


def _scipy(p: dict, time_limit: float) -> dict:
    import scipy.sparse as sp
    from scipy.optimize import Bounds, LinearConstraint, milp
    rows = sp.csr_matrix((p["data"], p["indices"], p["indptr"]), shape=(len(p["rlo"]), len(p["cost"])))
    res = milp(p["cost"], integrality=p["integ"], bounds=Bounds(p["lo"], p["hi"]),
               constraints=LinearConstraint(rows, p["rlo"], p["rhi"]),
               options={"node_limit": int(p["max_nodes"]), "time_limit": time_limit, "mip_rel_gap": 1e-9})
    status = "optimal" if res.status == 0 else ("time" if "time" in res.message.lower() else "nodes") \
        if res.status == 1 else "other"
    return {"x": res.x if res.x is not None else np.empty(0), "objective": res.fun if res.x is not None else math.inf,
            "status": status, "nodes": int(getattr(res, "mip_node_count", 0) or 0)}


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # HiGHS prints its banner to stdout
    out.write(b"R")
    out.flush()
    ready = time.perf_counter()
    p = dict(np.load(io.BytesIO(sys.stdin.buffer.read())))
    answer = solve(p, float(p["left"]) - (time.perf_counter() - ready))
    buf = io.BytesIO()
    np.savez(buf, **answer)
    out.write(buf.getvalue())
    out.flush()


if __name__ == "__main__":
    main()
