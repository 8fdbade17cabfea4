"""Solvers for one SeqLip pair (DESIGN §5): ``max_{d in [lo, hi]^n} ||A diag(d) B||_2``.

``A`` is ``(p, n)``, ``B`` is ``(n, q)``, both float64; ``lo``/``hi`` are per-neuron slope bounds
(``(n,)`` tensors; an activation's range ``[a, b]`` repeated). ``d -> ||A diag(d) B||`` is convex,
so the maximum over the box is reached at a vertex, ``d_j in {lo_j, hi_j}`` (with negative
``lo`` for GELU, SiLU, ... as much as with ``lo = 0`` for ReLU). Write ``a_j`` for the columns of
``A`` and ``b_j`` for the rows of ``B``: ``A diag(d) B = sum_j d_j a_j b_j^T``.

The solvers live in :mod:`~lipbound.methods.seqlip_pair` (the shared types, and exact
enumeration), :mod:`~lipbound.methods.seqlip_relax` (the convex relaxation, branch and bound) and
:mod:`~lipbound.methods.seqlip_greedy` (the paper's greedy); this module reduces a pair and
dispatches (:func:`certified_pair`).
"""

from __future__ import annotations

import math
import time

import torch

from .seqlip_greedy import greedy_pair, greedy_pair_reference
from .seqlip_pair import MAX_ENUMERATE, PairSolution, _threaded, _vec, enumerate_pair, pair_norm
from .seqlip_relax import branch_and_bound, relaxation_bound, relaxation_seconds

__all__ = ["PairSolution", "pair_norm", "reduce_pair", "enumerate_pair", "relaxation_bound", "relaxation_seconds",
           "branch_and_bound",
           "greedy_pair", "greedy_pair_reference", "certified_pair", "MAX_ENUMERATE"]


def reduce_pair(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An equivalent pair with ``p, q <= n`` and no dead neuron.

    Neurons with ``a_j = 0`` or ``b_j = 0`` change nothing and are dropped (``keep`` lists the
    others). When ``p > n``, ``A = Q R`` (QR, ``Q`` with orthonormal columns) and
    ``||Q R D B|| = ||R D B||``, so ``A`` is replaced by ``R``; likewise ``B`` when ``q > n``.
    Returns ``(A', B', keep)``."""
    keep = torch.nonzero((A.abs().amax(0) > 0) & (B.abs().amax(1) > 0)).flatten()
    A, B = A[:, keep], B[keep]
    n = keep.numel()
    if A.shape[0] > n:
        A = torch.linalg.qr(A, mode="r")[1][:n]
    if B.shape[1] > n:
        B = torch.linalg.qr(B.T, mode="r")[1][:n].T
    return A, B, keep


# ---- the certified pair solver -------------------------------------------------------------

@_threaded
def certified_pair(A: torch.Tensor, B: torch.Tensor, lo, hi, *, enumerate_max: int = 20,
                   time_budget: float = 10.0, generator: torch.Generator | None = None) -> PairSolution:
    """A certified upper bound of the pair's maximum, exact whenever possible.

    Dead neurons are dropped and ``A``, ``B`` reduced (:func:`reduce_pair`). A ``1 x 1`` product
    has a closed form; up to ``enumerate_max`` neurons every vertex is enumerated; beyond,
    :func:`branch_and_bound` runs for ``time_budget`` seconds (after a greedy that gives its
    first vertex). ``upper`` is certified in exact arithmetic; the caller adds the rounding
    margin. ``pattern`` is over the original ``n`` neurons."""
    t0 = time.perf_counter()
    n_all = A.shape[1]
    lo, hi = _vec(lo, n_all, A), _vec(hi, n_all, A)
    A, B, keep = reduce_pair(A, B)
    lo_k, hi_k = lo[keep], hi[keep]
    n = keep.numel()
    p, q = A.shape[0], B.shape[1]

    def full(pattern: torch.Tensor | None) -> torch.Tensor | None:
        if pattern is None:
            return None
        out = torch.ones(n_all, dtype=torch.bool, device=A.device)
        out[keep] = pattern
        return out

    if n == 0 or p == 0 or q == 0:
        return PairSolution(0.0, 0.0, full(torch.ones(0, dtype=torch.bool, device=A.device)), "exact",
                            {"neurons": 0, "solver": "empty"})
    if p == 1 and q == 1:
        t = A[0] * B[:, 0]
        up_hi = hi_k * t >= lo_k * t
        pos = torch.maximum(hi_k * t, lo_k * t).sum().item()
        neg = torch.minimum(hi_k * t, lo_k * t).sum().item()
        pattern = up_hi if pos >= -neg else ~up_hi
        value = max(pos, -neg)
        return PairSolution(value, value, full(pattern), "exact", {"neurons": n, "solver": "closed form (1x1)"})
    deadline = t0 + time_budget
    if n > min(enumerate_max, MAX_ENUMERATE) and relaxation_seconds(p, q, n) > time_budget:
        return PairSolution(math.inf, 0.0, None, "bounded",
                            {"neurons": n, "solver": "none", "reason": "one relaxation step would take longer than "
                             f"time_budget ({relaxation_seconds(p, q, n):.0f} s predicted)"})
    greedy = greedy_pair(A, B, lo_k, hi_k, generator=generator, deadline=t0 + time_budget / 3)
    if n <= min(enumerate_max, MAX_ENUMERATE):
        sol = enumerate_pair(A, B, lo_k, hi_k, lower=greedy.lower)
        if sol.pattern is None:  # the greedy's vertex is the maximum
            sol.pattern = greedy.pattern
        sol.info.update(neurons=n, solver="enumeration", greedy=greedy.lower)
        sol.pattern = full(sol.pattern)
        return sol
    d = torch.where(greedy.pattern, hi_k, lo_k)
    Ug, _, Vh = torch.linalg.svd((A * d) @ B, full_matrices=False)
    sol = branch_and_bound(A, B, lo_k, hi_k, deadline=deadline, lower=greedy.lower, pattern=greedy.pattern,
                           start=(Ug[:, 0], Vh[0]))
    sol.info.update(neurons=n, solver="branch and bound", greedy=greedy.lower)
    sol.pattern = full(sol.pattern)
    return sol
