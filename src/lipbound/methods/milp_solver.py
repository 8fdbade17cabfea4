"""One mixed-integer linear program solved by HiGHS: ``min cost^T y`` subject to
``rlo <= rows y <= rhi``, ``lo <= y <= hi`` and ``y_j`` integer where ``integ``, by a deadline.

Through ``highspy`` when it is installed (a fixed seed, a warm start, a node limit: the same
program and seed give the same answer), else through ``scipy.optimize.milp`` (HiGHS too, no warm
start). The node limit is the deterministic work cap; the deadline ``T`` only caps it.

HiGHS checks its time limit only between steps, and at the root node one step (a separation
round with its cut generation, a root heuristic) took 2 to over 26 s on the ERAN 9x200 boxes: a run told
``T - now`` ended up to 7.5 s after ``T`` (11 s in session 10; ``benchmarks/results/lower_milp.md``),
and no step length seen before predicts the next. Its interrupt callback is called at the same
checks only. So the solve runs in a child process (:mod:`~lipbound.methods.milp_worker`, started
in about 0.4 s) that can be stopped at any moment:

* no process is started once ``T`` has passed; once it is ready, it is sent ``T - now`` and gives
  HiGHS that much less the time it took to read the program (the limit ends by ``T``);
* the caller waits until ``T + GRACE`` at most, then kills it: the call returns by
  ``T + GRACE`` plus the kill, whatever HiGHS is doing. A killed run returns no point (status
  ``"time"``); its incumbent is lost, but the caller's warm start is its own.
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["GRACE", "solve_milp"]

#: seconds a solve may run past its deadline before its process is killed (HiGHS stops within
#: 0.05 s of its limit when it reaches a check in time)
GRACE = 0.5

_WORKER = Path(__file__).with_name("milp_worker.py")
#: runs the worker as ``__main__`` with neither the current directory nor the worker's own on the path
_LAUNCH = "import runpy, sys; del sys.path[0]; runpy.run_path(sys.argv[1], run_name='__main__')"

_STOPPED: dict[str, Any] = {"x": None, "objective": math.inf, "status": "time", "nodes": 0}


def solve_milp(cost: np.ndarray, rows: sp.csr_matrix, rlo: np.ndarray, rhi: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           integ: np.ndarray, warm: np.ndarray, seed: int, max_nodes: int, deadline: float) -> dict[str, Any]:
    """``min cost^T y`` s.t. ``rlo <= rows y <= rhi``, ``lo <= y <= hi``, ``y_j`` integer where
    ``integ``, warm-started at ``warm``, by ``deadline`` (a ``time.perf_counter()`` value, ``inf``
    for none; module doc). Returns ``x`` (None without a feasible point), ``objective``, ``status``
    (``optimal``, ``nodes``, ``time``, ``other``) and ``nodes``; status ``time`` and no point when
    no solve was started (``deadline`` passed) or its process was killed."""
    if time.perf_counter() >= deadline:
        return dict(_STOPPED)
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(_WORKER)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if proc.stdout.read(1) != b"R":
            raise RuntimeError(f"the MILP worker did not start: {proc.communicate()[1].decode(errors='replace')[-2000:]}")
        left = deadline - time.perf_counter()
        buf = io.BytesIO()
        np.savez(buf, cost=cost, data=rows.data, indices=rows.indices, indptr=rows.indptr, rlo=rlo, rhi=rhi, lo=lo,
                 hi=hi, integ=integ, warm=warm, seed=seed, max_nodes=max_nodes, left=left)
        wait = max(left, 0.0) + GRACE
        out, err = proc.communicate(buf.getvalue(), timeout=wait if math.isfinite(wait) else None)
    except subprocess.TimeoutExpired:
        return dict(_STOPPED)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"the MILP worker failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    answer = np.load(io.BytesIO(out))
    x = answer["x"]
    return {"x": x if len(x) else None, "objective": float(answer["objective"]), "status": str(answer["status"]),
            "nodes": int(answer["nodes"])}
