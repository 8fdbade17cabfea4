"""The SeqLip pair problem (DESIGN §5) and its exact solution by enumeration.

A pair is ``max_{d in [lo, hi]} ||A diag(d) B||_2`` with ``A`` ``(p, n)``, ``B`` ``(n, q)``, float64,
``lo``/``hi`` per-neuron slope bounds (:mod:`~lipbound.methods.seqlip_solvers` explains the
problem and the solvers). This module holds what every solver shares (:class:`PairSolution`,
:func:`pair_norm`, the thread policy) and :func:`enumerate_pair`: every vertex, vectorised in
chunks. Each chunk builds all ``X = C0 + A diag(d) B`` with one matrix product, their Gram matrices
``G`` and discards the patterns whose cheap upper bounds ``||G||_F`` and ``||G^2||_F^{1/2}`` (both
``>= lambda_max(G) = ||X||^2``) are below the best value found, then takes ``eigvalsh`` of the
rest. Every pattern is either evaluated or proven no better, so the result is the exact maximum.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

__all__ = ["PairSolution", "pair_norm", "enumerate_pair", "MAX_ENUMERATE", "SMALL"]

MAX_ENUMERATE = 26  # hard cap on the neurons of one exhaustive enumeration (2^26 patterns)
_EPS = torch.finfo(torch.float64).eps


SMALL = 1 << 24  # pairs with p * q up to this run on one thread (see _few_threads)


@contextmanager
def _few_threads(small: bool) -> Iterator[None]:
    """One intra-op thread while working on small matrices: LAPACK calls on matrices of a few
    hundred rows are far slower with several threads (tens of times on a busy two-core machine:
    the threads spin and wait), and large products still get every thread."""
    if not small or torch.get_num_threads() == 1:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _threaded(fn):
    """Run ``fn(A, B, ...)`` under :func:`_few_threads` when ``A diag(d) B`` is small."""
    @functools.wraps(fn)
    def wrapper(A, B, *args, **kwargs):
        with _few_threads(A.shape[0] * B.shape[1] <= SMALL and A.device.type == "cpu"):
            return fn(A, B, *args, **kwargs)
    return wrapper


@dataclass
class PairSolution:
    """Outcome of a pair solver.

    ``upper``: the solver's value (a certified upper bound of the maximum for the certified
    solvers, the estimate for the greedy). ``lower``: ``||A diag(d) B||`` at the vertex
    ``pattern`` (a bool tensor, True where ``d_j = hi_j``), so ``lower <= max``. ``status``:
    ``"exact"`` (``upper`` and ``lower`` agree to rounding), ``"bounded"`` (a gap remains) or
    ``"greedy"``. ``info``: solver counters (rounds, evaluations, nodes, ...)."""

    upper: float
    lower: float
    pattern: torch.Tensor | None
    status: str
    info: dict[str, Any] = field(default_factory=dict)


def _vec(v, n: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float64, device=like.device)
    return t.expand(n).clone() if t.dim() == 0 else t.clone()


def pair_norm(A: torch.Tensor, B: torch.Tensor, d: torch.Tensor) -> float:
    """``||A diag(d) B||_2`` from an SVD (float64)."""
    if A.shape[0] == 0 or B.shape[1] == 0:
        return 0.0
    return torch.linalg.matrix_norm((A * d) @ B, ord=2).item()


# ---- exact enumeration -------------------------------------------------------------------

@_threaded
def enumerate_pair(A: torch.Tensor, B: torch.Tensor, lo, hi, *, lower: float = 0.0,
                   C0: torch.Tensor | None = None, chunk: int | None = None,
                   deadline: float | None = None) -> PairSolution:
    """Exact ``max_{d_j in {lo_j, hi_j}} ||C0 + A diag(d) B||`` over all ``2^n`` vertices.

    ``lower`` is the value of some vertex already known (e.g. the greedy's), used to discard
    patterns early; ``C0`` an optional fixed part (branch and bound leaves). Cost ``2^n`` times a
    ``p x q`` product and Gram matrix; about 5 s for ``n = p = q = 20`` on two CPU cores. The
    pattern of the maximum is returned. At ``deadline`` (a ``time.perf_counter()`` value, checked
    between chunks) it stops: ``status="bounded"``, ``upper = inf`` (the patterns left are not
    bounded), ``lower`` the best vertex seen and ``info["stopped"] = "time_budget"``.
    """
    p, n = A.shape
    q = B.shape[1]
    if n > MAX_ENUMERATE:
        raise ValueError(f"enumeration of {n} neurons (2^{n} patterns) is too large; at most {MAX_ENUMERATE}")
    dev = A.device
    lo, hi = _vec(lo, n, A), _vec(hi, n, A)
    base = (A * lo) @ B if C0 is None else C0 + (A * lo) @ B
    R = ((A.T * (hi - lo)[:, None])[:, :, None] * B[:, None, :]).reshape(n, p * q)
    left = p <= q  # Gram of the smaller side
    m = p if left else q
    # meet in the middle: pattern k = k_hi * 2^h + k_lo, X = base + X_lo[k_lo] + X_hi[k_hi]
    h = n // 2
    X_lo = _bits(h, dev) @ R[:h]
    X_hi = base.reshape(1, -1) + _bits(n - h, dev) @ R[h:]
    n_lo = 1 << h
    if chunk is None:
        chunk = max(1, (1 << 22) // max(1, p * q + 2 * m * m))
    per = max(1, chunk // n_lo)  # high halves per chunk
    best2 = max(lower, 0.0) ** 2
    best_idx = None
    evaluated = 0
    total = 1 << n
    lo_idx = torch.arange(n_lo, device=dev)
    for k0 in range(0, 1 << (n - h), per):
        if deadline is not None and time.perf_counter() > deadline:
            value = math.sqrt(max(best2, 0.0)) if best_idx is not None else lower
            return PairSolution(math.inf, value, _pattern(best_idx, n, dev), "bounded",
                                {"patterns": total, "eigensolves": evaluated, "stopped": "time_budget"})
        ks = torch.arange(k0, min(1 << (n - h), k0 + per), device=dev)
        X = (X_hi[ks][:, None, :] + X_lo[None, :, :]).reshape(-1, p, q)
        idx = (ks[:, None] * n_lo + lo_idx[None, :]).reshape(-1)
        G = X @ X.transpose(1, 2) if left else X.transpose(1, 2) @ X
        # lambda_max(G) <= ||G||_F and lambda_max(G) <= ||G^2||_F^(1/2); keep what may beat best2
        thresh = best2 * (1 - 1e-12)
        keep = torch.linalg.matrix_norm(G) >= thresh
        if not bool(keep.any()):
            continue
        G, idx = G[keep], idx[keep]
        keep = torch.linalg.matrix_norm(G @ G).sqrt() >= thresh
        if not bool(keep.any()):
            continue
        G, idx = G[keep], idx[keep]
        lam = torch.linalg.eigvalsh(G)[:, -1]
        evaluated += lam.numel()
        k = int(torch.argmax(lam))
        if lam[k].item() > best2 or best_idx is None and lam[k].item() >= best2:
            best2, best_idx = lam[k].item(), int(idx[k])
    value = math.sqrt(max(best2, 0.0))
    return PairSolution(value, value, _pattern(best_idx, n, dev), "exact", {"patterns": total, "eigensolves": evaluated})


def _pattern(idx: int | None, n: int, device) -> torch.Tensor | None:
    """The vertex numbered ``idx`` (bit ``j``: neuron ``j`` at ``hi``), or None."""
    if idx is None:
        return None
    return (torch.tensor(idx, device=device) & (1 << torch.arange(n, device=device))) != 0


def _bits(m: int, device) -> torch.Tensor:
    """All ``2^m`` patterns of ``m`` bits as rows of 0/1 (bit ``j`` of row ``k`` is ``(k >> j) & 1``)."""
    k = torch.arange(1 << m, device=device)
    return ((k[:, None] >> torch.arange(m, device=device)) & 1).to(torch.float64)
