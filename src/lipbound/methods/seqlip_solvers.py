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
from .seqlip_relax import branch_and_bound, relaxation_bound, relaxation_flops

__all__ = ["PairSolution", "pair_norm", "reduce_pair", "enumerate_pair", "relaxation_bound", "relaxation_flops",
           "branch_and_bound",
           "greedy_pair", "greedy_pair_reference", "certified_pair", "enumeration_flops", "MAX_ENUMERATE", "PAIR_WORK"]

PAIR_WORK = 3e10  # floating-point operations of a pair's branch and bound (about 2 s on one loaded core)
GREEDY_SHARE = 0.25  # of a pair's time budget: the greedy start vertex (the rest: enumeration or branch and bound)


def reduce_pair(A: torch.Tensor, B: torch.Tensor, lo=None, hi=None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An equivalent pair with ``p, q <= n`` and no dead neuron.

    Neurons with ``a_j = 0`` or ``b_j = 0``, and, when the slope bounds are given, neurons stably
    at slope 0 (``lo_j = hi_j = 0``, e.g. a ReLU off on the whole region), change nothing and are
    dropped (``keep`` lists the others). When ``p > n``, ``A = Q R`` (QR, ``Q`` with orthonormal
    columns) and ``||Q R D B|| = ||R D B||``, so ``A`` is replaced by ``R``; likewise ``B`` when
    ``q > n``. Returns ``(A', B', keep)``."""
    live = (A.abs().amax(0) > 0) & (B.abs().amax(1) > 0)
    if lo is not None:
        n = A.shape[1]
        live &= (_vec(lo, n, A) != 0) | (_vec(hi, n, A) != 0)
    keep = torch.nonzero(live).flatten()
    A, B = A[:, keep], B[keep]
    n = keep.numel()
    if A.shape[0] > n:
        A = torch.linalg.qr(A, mode="r")[1][:n]
    if B.shape[1] > n:
        B = torch.linalg.qr(B.T, mode="r")[1][:n].T
    return A, B, keep


def enumeration_flops(k: int, p: int, q: int) -> float:
    """Rough floating-point operations of :func:`enumerate_pair` over ``k`` free neurons of a
    ``p x q`` pair: ``2^k`` products and Gram matrices."""
    return float(2 ** k) * (k * p * q + min(p, q) ** 2 * max(p, q))


# ---- the certified pair solver -------------------------------------------------------------

@_threaded
def certified_pair(A: torch.Tensor, B: torch.Tensor, lo, hi, *, enumerate_max: int = 20, work: float = PAIR_WORK,
                   time_budget: float = math.inf, generator: torch.Generator | None = None) -> PairSolution:
    """A certified upper bound of the pair's maximum, exact whenever possible.

    Dead neurons are dropped and ``A``, ``B`` reduced (:func:`reduce_pair`). **Stable** neurons
    (``lo_j = hi_j``: the activation is affine on the neuron's interval) are constants, not
    branching variables: ``A diag(d) B = C0 + A_F diag(d_F) B_F`` with ``C0`` the stable
    neurons' fixed part and ``F`` the free neurons, so only the free ones are enumerated or
    branched on, however wide the layer. No free neuron: one SVD gives the exact value. A
    ``1 x 1`` product has a closed form. Up to ``enumerate_max`` free neurons (and at most the
    work of enumerating ``enumerate_max`` neurons with no constant part, :func:`enumeration_flops`)
    every vertex is enumerated; beyond, :func:`branch_and_bound` with the work cap ``work``
    (floating-point operations, :func:`relaxation_flops`: the same on every machine); a pair
    whose one relaxation evaluation costs more than ``work`` gets no bound (``upper = inf``).
    A greedy gives the first vertex (within ``GREEDY_SHARE`` of ``time_budget``).

    ``time_budget`` (seconds) is an outer cap: an enumeration it cuts short is replaced by
    :func:`relaxation_bound` on the whole box, branch and bound returns its open bound. A
    bound that is not exact has ``status="bounded"`` and ``info["stopped"]`` says what stopped it
    (``"work"`` or ``"time_budget"``). ``upper`` is certified in exact
    arithmetic; the caller adds the rounding margin. ``pattern`` is over the original ``n``
    neurons."""
    t0 = time.perf_counter()
    deadline = t0 + time_budget
    n_all = A.shape[1]
    lo, hi = _vec(lo, n_all, A), _vec(hi, n_all, A)
    A, B, keep = reduce_pair(A, B, lo, hi)
    lo_k, hi_k = lo[keep], hi[keep]
    n = keep.numel()
    p, q = A.shape[0], B.shape[1]
    free = hi_k > lo_k
    k = int(free.sum())
    counts = {"neurons": n, "free": k}

    def full(pattern: torch.Tensor | None) -> torch.Tensor | None:
        if pattern is None:
            return None
        out = torch.ones(n_all, dtype=torch.bool, device=A.device)
        out[keep] = pattern
        return out

    if n == 0 or p == 0 or q == 0:
        return PairSolution(0.0, 0.0, full(torch.ones(0, dtype=torch.bool, device=A.device)), "exact",
                            {**counts, "solver": "empty"})
    if k == 0:
        value = pair_norm(A, B, lo_k)
        return PairSolution(value, value, full(torch.ones(n, dtype=torch.bool, device=A.device)), "exact",
                            {**counts, "solver": "no free neuron (one SVD)"})
    if p == 1 and q == 1:
        t = A[0] * B[:, 0]
        up_hi = hi_k * t >= lo_k * t
        pos = torch.maximum(hi_k * t, lo_k * t).sum().item()
        neg = torch.minimum(hi_k * t, lo_k * t).sum().item()
        pattern = up_hi if pos >= -neg else ~up_hi
        value = max(pos, -neg)
        return PairSolution(value, value, full(pattern), "exact", {**counts, "solver": "closed form (1x1)"})
    e = min(enumerate_max, MAX_ENUMERATE)
    enumerate_ = k <= e and enumeration_flops(k, p, q) <= enumeration_flops(e, e, e)
    if not enumerate_ and relaxation_flops(p, q, k) > work:
        return PairSolution(math.inf, 0.0, None, "bounded",
                            {**counts, "solver": "none", "stopped": "work", "reason": "one relaxation step "
                             f"({relaxation_flops(p, q, k):.2g} flops) exceeds the work cap ({work:.2g})"})
    greedy = greedy_pair(A, B, lo_k, hi_k, generator=generator, deadline=t0 + GREEDY_SHARE * time_budget)
    if enumerate_:
        fixed = ~free
        C0 = (A[:, fixed] * lo_k[fixed]) @ B[fixed] if bool(fixed.any()) else None
        sol = enumerate_pair(A[:, free], B[free], lo_k[free], hi_k[free], C0=C0, lower=greedy.lower,
                             deadline=deadline)
        if sol.status == "exact":
            pattern = greedy.pattern  # unless the enumeration found better: the greedy's vertex is the maximum
            if sol.pattern is not None:
                pattern = torch.ones(n, dtype=torch.bool, device=A.device)  # stable: lo = hi
                pattern[free] = sol.pattern
            sol.pattern = full(pattern)
            sol.info.update(counts, solver="enumeration", greedy=greedy.lower)
            return sol
        # cut by the time budget: the relaxation's bound on the whole box (its first step always runs)
        rel = relaxation_bound(A, B, lo_k, hi_k, deadline=deadline)
        return PairSolution(rel.bound, greedy.lower, full(greedy.pattern), "bounded",
                            {**counts, **sol.info, "solver": "enumeration cut short, relaxation bound",
                             "greedy": greedy.lower})
    d = torch.where(greedy.pattern, hi_k, lo_k)
    Ug, _, Vh = torch.linalg.svd((A * d) @ B, full_matrices=False)
    sol = branch_and_bound(A, B, lo_k, hi_k, work=work, deadline=deadline, lower=greedy.lower,
                           pattern=greedy.pattern, start=(Ug[:, 0], Vh[0]))
    sol.info.update(counts, solver="branch and bound", greedy=greedy.lower)
    if "stopped" in greedy.info:
        sol.info["stopped"] = "time_budget"  # the greedy's start vertex was cut short
    sol.pattern = full(sol.pattern)
    return sol
