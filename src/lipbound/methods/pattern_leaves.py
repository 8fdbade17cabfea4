"""The top leaves of the pattern tree (:func:`.relu_patterns.pattern_tree`) settled by one LP each: a
point inside the leaf's linear region (a candidate **witness** of the leaf's Jacobian norm) or a proof
that the leaf is empty (it leaves the part's **certified** bound).

**The LP.** A leaf is an activation pattern with its branched signs ``c_j . x + c_{0j} <= 0`` and the
part of the box they allow, ``[low, high]``; every point of the part with that pattern satisfies them
(:class:`.relu_patterns.PatternTree`). HiGHS (:func:`scipy.optimize.linprog`, default options) solves

    maximise t  subject to  c_j . x + ||c_j||_2 t <= -c_{0j}  (every j),  low <= x <= high,  t <= cap.

* ``t* > 0``: ``x*`` satisfies every sign with a margin: the chain's pattern there is the leaf's (up to
  the rounding the constraints carry, and a neuron decided by its range sitting on its kink), so its
  Jacobian is the leaf's. It is only a **candidate**: the caller re-checks it as every witness is
  (:class:`~lipbound.methods.witness.PointWitness`, :mod:`.local_bab_witness`), whatever the LP said.
* ``t* <= 0``: the LP's duals ``lam >= 0`` (``sum_j lam_j ||c_j|| = 1``) satisfy, by LP duality,
  ``min_box sum_j lam_j (c_j . x + c_{0j}) = -t* >= 0``. When that is positive, rounding included
  (:func:`.relu_patterns.farkas_proves_empty`: the check does not trust the solver), no point of the
  part has the leaf's pattern, and dropping the leaf keeps the part's bound certified
  (:meth:`.relu_patterns.PatternTree.bound`). An unproved leaf is kept.

On a piecewise-linear chain the constant on a part is the largest Jacobian norm of a linear region
that meets it: the leaves list exactly the candidate regions (those not already shown below the
seed), so settling the top leaf of a part either closes the part's bracket (a point) or lowers its
bound to the next leaf (a proof). Leaves are settled largest value first, at most ``lps`` per part; a
part stops at its first leaf not proved empty (one with a point: the leaves below it cannot raise the
part's bound; one left unproved: it keeps the bound where it is).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

from .relu_patterns import PatternTree, farkas_proves_empty

__all__ = ["settle_leaves"]


def settle_leaves(tree: PatternTree, lps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaves of ``tree`` kept (a mask ``(L,)``: False for a leaf proved empty) and the points found
    inside leaves ``(n, d)`` (candidates, to be re-checked), at most ``lps`` LPs per box, largest leaf
    value first (module doc)."""
    keep = torch.ones(len(tree.box), dtype=torch.bool)
    points: list[torch.Tensor] = []
    order = torch.argsort(tree.value, descending=True, stable=True)
    tried = torch.zeros(len(tree.rest), dtype=torch.long)
    settled = torch.zeros(len(tree.rest), dtype=torch.bool)
    for leaf in order.tolist():
        b = int(tree.box[leaf])
        if settled[b] or tried[b] >= lps:
            continue
        tried[b] += 1
        point, lam = _interior(tree.A[leaf], tree.low[leaf], tree.high[leaf])
        if point is not None:
            points.append(point)
            settled[b] = True
        elif lam is not None and bool(farkas_proves_empty(tree.A[leaf][None], tree.low[leaf][None],
                                                          tree.high[leaf][None], lam[None])[0]):
            keep[leaf] = False
        else:
            settled[b] = True  # unproved: it keeps the box's bound at its value
    d = tree.low.shape[1]
    return keep, torch.stack(points) if points else torch.empty(0, d, dtype=torch.float64)


def _interior(A: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The LP of the module doc on one leaf (``A`` ``(k, d + 1)``, zero rows ignored): ``(x*, None)`` when
    ``t* > 0``, else ``(None, lam)`` with the duals ``lam`` ``(k,)`` (zero on the ignored rows) as Farkas
    multipliers to be checked; ``(None, None)`` when HiGHS gives neither."""
    c, c0 = A[:, :-1].numpy(), A[:, -1].numpy()
    norms = np.linalg.norm(c, axis=1)
    used = norms > 0
    d = c.shape[1]
    cap = float((high - low).max()) + 1.0
    A_ub = np.hstack([c[used], norms[used, None]])
    bounds = [(float(lo), float(hi)) for lo, hi in zip(low.tolist(), high.tolist())] + [(None, cap)]
    objective = np.zeros(d + 1)
    objective[-1] = -1.0
    res = linprog(objective, A_ub=A_ub if len(A_ub) else None, b_ub=-c0[used] if len(A_ub) else None,
                  bounds=bounds, method="highs")
    if res.status != 0:
        return None, None
    if -res.fun > 0:
        return torch.as_tensor(res.x[:d], dtype=torch.float64), None
    lam = np.zeros(len(c0))
    lam[used] = np.maximum(-res.ineqlin.marginals, 0.0)
    return None, torch.as_tensor(lam, dtype=torch.float64)
