"""Solvers for one SeqLip pair (DESIGN §5): ``max_{d in [lo, hi]^n} ||A diag(d) B||_2``.

``A`` is ``(p, n)``, ``B`` is ``(n, q)``, both float64; ``lo``/``hi`` are per-neuron slope bounds
(``(n,)`` tensors; an activation's range ``[a, b]`` repeated). ``d -> ||A diag(d) B||`` is convex,
so the maximum over the box is reached at a vertex, ``d_j in {lo_j, hi_j}`` (with negative
``lo`` for GELU, SiLU, ... as much as with ``lo = 0`` for ReLU). Write ``a_j`` for the columns of
``A`` and ``b_j`` for the rows of ``B``: ``A diag(d) B = sum_j d_j a_j b_j^T``.

* :func:`enumerate_pair` — exact: every vertex, vectorised in chunks. Each chunk builds all
  ``X = A diag(d) B`` with one matrix product, their Gram matrices ``G`` and discards the
  patterns whose cheap upper bounds ``||G||_F`` and ``||G^2||_F^{1/2}`` (both ``>= lambda_max(G)
  = ||X||^2``) are below the best value found, then takes ``eigvalsh`` of the rest. Every pattern
  is either evaluated or proven no better, so the result is the exact maximum.
* :func:`relaxation_bound` — a certified upper bound for a whole box, from a convex relaxation.
  For unit ``u, x``: ``u^T A D B x = sum_j d_j s_j t_j`` with ``s = A^T u``, ``t = B x``;
  ``max_{d_j} d_j s_j t_j = m_j s_j t_j + h_j |s_j t_j|`` (``m``, ``h`` the box's mid-points and
  half-widths) and ``|s_j t_j| <= (lambda_j s_j^2 + t_j^2 / lambda_j) / 2`` for any
  ``lambda_j > 0``. Adding ``mu (||u||^2 - ||x||^2) / 2 = 0`` gives, for every ``lambda > 0`` and
  real ``mu``::

      max_d ||A D B|| <= lambda_max [[P + mu I, C], [C^T, Q - mu I]]
      C = A diag(m) B,  P = A diag(h lambda) A^T,  Q = B^T diag(h / lambda) B

  (the quadratic form is taken at ``w = (u, x)`` with ``||w||^2 = 2``). The right side is convex
  in ``(log lambda, mu)``; it is minimised with L-BFGS from a start that makes the inequalities
  tight at a known good vertex. Every evaluated point is a valid bound (float64 ``eigh`` plus a
  rounding margin), so stopping early is safe. On random pairs it is within a few per cent of
  the exact maximum, often exact; when no neuron is free it is ``||C||`` exactly.
* :func:`branch_and_bound` — exact or bounded for wide pairs: best-first over the box, the
  relaxation as node bound, vertex values (the sign rule ``d_j = hi_j`` iff ``s_j t_j > 0`` at
  the relaxation's top eigenvector) as lower bounds, small sub-boxes enumerated exactly.
  Within a time budget; at any time ``max(best vertex, open and pruned node bounds)`` is a
  certified upper bound.
* :func:`greedy_pair` — the paper's greedy (an estimate, never above the maximum): start from
  ``d = hi``, flip the coordinate that increases the norm most, until none does. Each flip is a
  rank-one update ``X += delta_j a_j b_j^T``; candidates are scored by exact lower bounds of
  ``||X + delta_j a_j b_j^T||`` from the top-``r`` singular subspace of ``X`` (the compression
  ``U^T (X + delta_j a_j b_j^T) V``, an ``r x r`` matrix per candidate, and one power step from
  ``u_1``/``v_1``), and the subspace is refreshed after a flip by warm-started block power
  iterations. No SVD of ``X`` per flip or per candidate. ``strategy="sweep"`` is the paper's
  first-improvement variant for very wide layers (its top-k code).
* :func:`greedy_pair_reference` — the straightforward greedy that recomputes the spectral norm
  from scratch for every candidate flip (the reference code's behaviour), for tests and
  benchmarks.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

__all__ = ["PairSolution", "pair_norm", "reduce_pair", "enumerate_pair", "relaxation_bound", "relaxation_seconds",
           "branch_and_bound",
           "greedy_pair", "greedy_pair_reference", "certified_pair", "MAX_ENUMERATE"]

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


# ---- exact enumeration -------------------------------------------------------------------

@_threaded
def enumerate_pair(A: torch.Tensor, B: torch.Tensor, lo, hi, *, lower: float = 0.0,
                   C0: torch.Tensor | None = None, chunk: int | None = None) -> PairSolution:
    """Exact ``max_{d_j in {lo_j, hi_j}} ||C0 + A diag(d) B||`` over all ``2^n`` vertices.

    ``lower`` is the value of some vertex already known (e.g. the greedy's), used to discard
    patterns early; ``C0`` an optional fixed part (branch and bound leaves). Cost ``2^n`` times a
    ``p x q`` product and Gram matrix, with ``p, q <= n`` after :func:`reduce_pair`; about 5 s for
    ``n = p = q = 20`` on two CPU cores. The pattern of the maximum is returned.
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
    pattern = None
    if best_idx is not None:
        pattern = (torch.tensor(best_idx, device=dev) & (1 << torch.arange(n, device=dev))) != 0
    value = math.sqrt(max(best2, 0.0))
    return PairSolution(value, value, pattern, "exact", {"patterns": total, "eigensolves": evaluated})


def _bits(m: int, device) -> torch.Tensor:
    """All ``2^m`` patterns of ``m`` bits as rows of 0/1 (bit ``j`` of row ``k`` is ``(k >> j) & 1``)."""
    k = torch.arange(1 << m, device=device)
    return ((k[:, None] >> torch.arange(m, device=device)) & 1).to(torch.float64)


# ---- convex relaxation -------------------------------------------------------------------

@dataclass
class _Relaxation:
    bound: float
    theta: torch.Tensor  # log lambda on the free neurons
    mu: float
    u: torch.Tensor  # top eigenvector, left part (p,)
    x: torch.Tensor  # right part (q,)
    evaluations: int


@_threaded
def relaxation_bound(A: torch.Tensor, B: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                     start: tuple[torch.Tensor, torch.Tensor] | None = None,
                     theta0: torch.Tensor | None = None, mu0: float | None = None,
                     max_evals: int = 60, deadline: float | None = None) -> _Relaxation:
    """Certified upper bound of ``max_{d in [lo, hi]} ||A diag(d) B||`` (module docstring).

    ``start``: top singular vectors ``(u, x)`` of ``A diag(d) B`` at a good vertex ``d``; the
    multipliers are then chosen to make the bound tight there (``lambda_j = |t_j| / |s_j|``).
    ``theta0``/``mu0``: a warm start (from a parent node). ``max_evals``: eigen-decompositions
    at most; ``deadline``: ``time.perf_counter()`` value after which no new one starts (the first
    one always runs). Each evaluation costs one ``eigh`` of order ``p + q``.
    """
    import numpy as np
    from scipy.optimize import minimize

    p, n = A.shape
    q = B.shape[1]
    m, h = (lo + hi) / 2, (hi - lo) / 2
    C = (A * m) @ B
    free = torch.nonzero(h > 0).flatten()
    Af, Bf, hf = A[:, free], B[free], h[free]
    nf = free.numel()
    eye_p = torch.eye(p, dtype=A.dtype, device=A.device)
    eye_q = torch.eye(q, dtype=A.dtype, device=A.device)
    an = Af.norm(dim=0).clamp_min(1e-300)
    bn = Bf.norm(dim=1).clamp_min(1e-300)
    starts: list[tuple[torch.Tensor, float]] = []
    if theta0 is not None:
        starts.append((theta0, 0.0 if mu0 is None else mu0))
    else:
        # uniform multipliers lambda = ||B_F|| / ||A_F||: the bound is then at most
        # ||C|| + max_j h_j ||A_F|| ||B_F||, never far above the pair's AutoLip factor
        c = _norm_estimate(Bf) / max(_norm_estimate(Af), 1e-300) if nf else 1.0
        starts.append((torch.full((nf,), math.log(max(c, 1e-300)), dtype=A.dtype, device=A.device), 0.0))
        if start is not None and nf:
            # tight at a known vertex: lambda_j |s_j| = |t_j| at its top singular vectors (u0, x0)
            u0, x0 = start
            s, t = Af.T @ u0, Bf @ x0
            lam = (t.abs().clamp_min(1e-300) / s.abs().clamp_min(1e-300)).clamp(1e-6 * bn / an, 1e6 * bn / an)
            P = (Af * (hf * lam)) @ Af.T
            Q = (Bf.T * (hf / lam)) @ Bf
            mu = 0.5 * (x0 @ (C.T @ u0 + Q @ x0) - u0 @ (P @ u0 + C @ x0)).item()
            starts.append((lam.log(), mu))
    best: dict[str, Any] = {"bound": math.inf}
    count = [0]

    class _Stop(Exception):
        pass

    memo: dict[bytes, tuple[float, np.ndarray]] = {}

    def evaluate(z: np.ndarray):
        key = z.tobytes()
        if key in memo:
            return memo[key]
        if count[0] >= max_evals or (count[0] > 0 and deadline is not None and time.perf_counter() > deadline):
            raise _Stop
        count[0] += 1
        th = torch.as_tensor(z[:nf], dtype=A.dtype, device=A.device)
        mu_ = float(z[nf])
        lam_ = th.exp()
        P = (Af * (hf * lam_)) @ Af.T + mu_ * eye_p
        Q = (Bf.T * (hf / lam_)) @ Bf - mu_ * eye_q
        M = torch.cat([torch.cat([P, C], 1), torch.cat([C.T, Q], 1)], 0)
        w, V = torch.linalg.eigh(M)
        top = w[-1].item()
        radius = max(abs(w[0].item()), abs(top))
        bound = top + 64 * _EPS * (p + q) * radius  # eigh is backward stable: cover its rounding
        v = V[:, -1]
        u, x = v[:p], v[p:]
        if bound < best["bound"]:
            best.update(bound=bound, theta=th.clone(), mu=mu_, u=u.clone(), x=x.clone())
        s, t = Af.T @ u, Bf @ x
        g_theta = hf * (lam_ * s * s - t * t / lam_)
        grad = np.concatenate([g_theta.cpu().numpy(), [(u @ u - x @ x).item()]])
        memo.clear()
        memo[key] = (top, grad)
        return top, grad

    try:
        z0, f0 = None, math.inf
        for th, mu in starts:
            z = np.concatenate([th.detach().cpu().numpy(), [mu]])
            f = evaluate(z)[0]
            if f < f0:
                z0, f0 = z, f
        if nf:
            minimize(evaluate, z0, jac=True, method="L-BFGS-B", options={"maxiter": max_evals, "maxfun": max_evals})
    except _Stop:
        pass
    return _Relaxation(best["bound"], best["theta"], best["mu"], best["u"], best["x"], count[0])


def _norm_estimate(M: torch.Tensor, iters: int = 30) -> float:
    """A rough ``||M||_2`` (power iteration from a fixed start); any positive value is valid
    where it is used (a relaxation multiplier)."""
    if M.numel() == 0:
        return 0.0
    v = torch.ones(M.shape[1], dtype=M.dtype, device=M.device) + torch.linspace(0, 1, M.shape[1], dtype=M.dtype,
                                                                              device=M.device)
    for _ in range(iters):
        w = M.T @ (M @ v)
        nv = w.norm()
        if nv == 0:
            return 0.0
        v = w / nv
    return (M @ v).norm().item()


def relaxation_seconds(p: int, q: int, n: int, flop_rate: float = 5e9) -> float:
    """Rough seconds of one :func:`relaxation_bound` evaluation (``(p^2 + q^2) n`` for the
    Gram blocks, ``~9 (p + q)^3`` for ``eigh``) at ``flop_rate`` flop/s."""
    return ((p * p + q * q) * n + 9.0 * (p + q) ** 3) / flop_rate


# ---- branch and bound --------------------------------------------------------------------

@_threaded
def branch_and_bound(A: torch.Tensor, B: torch.Tensor, lo, hi, *, deadline: float | None = None,
                     lower: float = 0.0, pattern: torch.Tensor | None = None,
                     start: tuple[torch.Tensor, torch.Tensor] | None = None, rtol: float = 1e-9,
                     root_evals: int = 60, node_evals: int = 12, leaf_flops: float = 2e9) -> PairSolution:
    """Certified maximum (or upper bound, when the time runs out) of ``||A diag(d) B||`` over
    ``d in [lo, hi]^n``, by best-first branch and bound with :func:`relaxation_bound` as the
    node bound. ``lower``/``pattern``/``start``: a known vertex, its value and top singular
    vectors (e.g. from the greedy). A node whose sub-box has few free neurons is enumerated
    exactly (at most ``leaf_flops`` floating-point operations). ``status`` is ``"exact"`` when
    the bound and the best vertex meet within ``rtol``, else ``"bounded"``.
    """
    p, n = A.shape
    q = B.shape[1]
    lo, hi = _vec(lo, n, A), _vec(hi, n, A)
    best = {"value": lower, "pattern": pattern}
    info = {"nodes": 0, "leaves": 0, "evaluations": 0}

    def vertex(d_hi: torch.Tensor) -> None:
        val = pair_norm(A, B, torch.where(d_hi, hi, lo))
        if val > best["value"]:
            best.update(value=val, pattern=d_hi.clone())

    def node_bound(nlo, nhi, theta0=None, mu0=None, st=None, evals=node_evals):
        r = relaxation_bound(A, B, nlo, nhi, start=st, theta0=theta0, mu0=mu0, max_evals=evals, deadline=deadline)
        info["evaluations"] += r.evaluations
        # the sign rule at the relaxation's eigenvector gives a good vertex of this box
        s, t = A.T @ r.u, B @ r.x
        free = nhi > nlo
        d_hi = torch.where(free, hi * s * t >= lo * s * t, nhi == hi)
        vertex(d_hi)
        return r

    root = node_bound(lo, hi, st=start, evals=root_evals)
    pruned_max = 0.0
    counter = itertools.count()
    heap: list = []
    free_all = hi > lo
    heapq.heappush(heap, (-root.bound, next(counter), lo, hi, root, free_all))
    while heap:
        top = -heap[0][0]
        if top <= best["value"] * (1 + rtol):
            break
        if deadline is not None and time.perf_counter() > deadline:
            break
        neg, _, nlo, nhi, rel, free = heapq.heappop(heap)
        info["nodes"] += 1
        idx = torch.nonzero(free).flatten()
        # branch on the free neuron whose relaxation term is largest at the top eigenvector
        s, t = A.T @ rel.u, B @ rel.x
        score = ((nhi - nlo) * (s * t).abs())[idx]
        j = int(idx[int(torch.argmax(score))])
        theta_map = dict(zip(idx.tolist(), rel.theta.tolist()))
        for val in (lo[j], hi[j]):
            clo, chi = nlo.clone(), nhi.clone()
            clo[j] = chi[j] = val
            cfree = free.clone()
            cfree[j] = False
            nfree = int(cfree.sum())
            m = min(p, q)
            leaf_cost = (2 ** nfree) * (nfree * p * q + m * m * max(p, q))
            if nfree == 0 or (nfree <= MAX_ENUMERATE and leaf_cost <= leaf_flops):
                info["leaves"] += 1
                fidx = torch.nonzero(cfree).flatten()
                fixed = ~cfree
                C0 = (A[:, fixed] * clo[fixed]) @ B[fixed]
                sol = enumerate_pair(A[:, fidx], B[fidx], clo[fidx], chi[fidx], C0=C0,
                                     lower=best["value"])
                if sol.pattern is not None and sol.lower > best["value"]:
                    d_hi = chi == hi
                    d_hi[fidx] = sol.pattern
                    best.update(value=sol.lower, pattern=d_hi)
                continue
            cidx = torch.nonzero(cfree).flatten().tolist()
            th0 = torch.tensor([theta_map[i] for i in cidx], dtype=A.dtype, device=A.device)
            r = node_bound(clo, chi, theta0=th0, mu0=rel.mu)
            if r.bound <= best["value"] * (1 + rtol):
                pruned_max = max(pruned_max, r.bound)
                continue
            heapq.heappush(heap, (-r.bound, next(counter), clo, chi, r, cfree))
    open_max = max((-h[0] for h in heap), default=0.0)
    upper = max(best["value"], pruned_max, open_max)
    upper = min(upper, root.bound)
    status = "exact" if upper <= best["value"] * (1 + max(rtol, 1e-9)) else "bounded"
    info["root_bound"] = root.bound
    info["open_nodes"] = len(heap)
    return PairSolution(upper, best["value"], best["pattern"], status, info)


# ---- greedy ------------------------------------------------------------------------------

def _orth(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(M)[0]


def _top_subspace(X: torch.Tensor, V: torch.Tensor, *, max_iter: int = 50, tol: float = 1e-12):
    """Warm-started block power iteration with Rayleigh-Ritz on ``X^T X`` from the columns of
    ``V``; returns ``(U, s, V)`` with ``X V = U diag(s)``, ``U``/``V`` orthonormal columns and
    ``s`` (descending) lower bounds of the top singular values of ``X``."""
    V = _orth(V)
    prev = None
    for _ in range(max_iter):
        Y = X @ V
        P, s, Qh = torch.linalg.svd(Y, full_matrices=False)
        if prev is not None and abs(s[0].item() - prev) <= tol * max(s[0].item(), 1e-300):
            break
        prev = s[0].item()
        V = _orth(X.T @ P)
    return P, s, V @ Qh.T


def _stop_reason(rounds: int, max_rounds: int | None, deadline: float | None) -> str | None:
    """Why a greedy loop stops before its next round: ``"max_rounds"``, ``"deadline"`` or None."""
    if max_rounds is not None and rounds >= max_rounds:
        return "max_rounds"
    if deadline is not None and time.perf_counter() > deadline:
        return "deadline"
    return None


class _Greedy:
    """State of one greedy run: ``X = A diag(d) B`` and its top-``r`` singular subspace."""

    def __init__(self, A, B, lo, hi, r: int, generator: torch.Generator | None, start_hi: torch.Tensor):
        self.A, self.B, self.lo, self.hi = A, B, lo, hi
        self.at_hi = start_hi.clone()
        d = torch.where(self.at_hi, hi, lo)
        self.X = (A * d) @ B
        p, q = self.X.shape
        self.r = max(1, min(r, p, q))
        g = generator or torch.Generator().manual_seed(0)
        V0 = torch.randn((q, self.r), generator=g, dtype=torch.float64).to(A.device)
        self.U, self.s, self.V = _top_subspace(self.X, V0, max_iter=200)
        self._w = None
        self._d = None
        self.a_sq = (A * A).sum(0)
        self.b_sq = (B * B).sum(1)
        self.flips = 0

    @property
    def w(self) -> torch.Tensor:
        """``X^T u_1`` (equal to ``s_1 v_1`` only once the subspace has converged)."""
        if self._w is None:
            self._w = self.X.T @ self.U[:, 0]
            self._w_sq = self._w @ self._w
        return self._w

    @property
    def w_sq(self) -> torch.Tensor:
        self.w
        return self._w_sq

    @property
    def sigma(self) -> float:
        return self.s[0].item()

    def delta(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.where(self.at_hi[idx], self.lo[idx] - self.hi[idx], self.hi[idx] - self.lo[idx])

    def _dots(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A^T u_1, B v_1, B w)`` for the current subspace (cached until the next flip)."""
        if self._d is None:
            self._d = (self.A.T @ self.U[:, 0], self.B @ self.V[:, 0], self.B @ self.w)
        return self._d

    def cheap_scores(self, idx: torch.Tensor) -> torch.Tensor:
        """Lower bounds of ``||X + delta_j a_j b_j^T||`` from one power step from ``v_1`` and
        from ``u_1``, exact with the candidate's full ``a_j`` and ``b_j`` (``O(1)`` each):
        ``(X + dl a b^T) v_1 = s_1 u_1 + dl (b.v_1) a``, ``(X + dl a b^T)^T u_1 = w + dl (a.u_1) b``."""
        dl = self.delta(idx)
        Au, Bv, Bw = (t[idx] for t in self._dots())
        s1 = self.s[0]
        sv = (s1 * s1 + 2 * s1 * dl * Au * Bv + dl * dl * Bv * Bv * self.a_sq[idx]).clamp_min(0).sqrt()
        su = (self.w_sq + 2 * dl * Au * Bw + dl * dl * Au * Au * self.b_sq[idx]).clamp_min(0).sqrt()
        return torch.maximum(sv, su)

    def scores(self, idx: torch.Tensor) -> torch.Tensor:
        """Lower bounds of ``||X + delta_j a_j b_j^T||``: the cheap ones and the norm of the
        compression ``U^T (X + delta_j a_j b_j^T) V = diag(s) + delta_j (U^T a_j)(V^T b_j)^T``."""
        best = self.cheap_scores(idx)
        if self.r > 1:
            dl = self.delta(idx)
            al = self.U.T @ self.A[:, idx]  # (r, c)
            be = self.B[idx] @ self.V  # (c, r)
            core = torch.diag_embed(self.s).expand(idx.numel(), self.r, self.r)
            comp = core + (dl[:, None, None] * al.T[:, :, None]) * be[:, None, :]
            best = torch.maximum(best, torch.linalg.matrix_norm(comp, ord=2))
        return best

    def refine(self, idx: torch.Tensor, iters: int) -> torch.Tensor:
        """Sharper lower bounds of ``||X + delta_j a_j b_j^T||`` for a few candidates: ``iters``
        power iterations on each updated matrix (applied through the rank-one form, batched),
        started from the top right singular vector of its compression, lifted."""
        dl = self.delta(idx)
        a, b = self.A[:, idx], self.B[idx]  # (p, m), (m, q)
        al, be = self.U.T @ a, b @ self.V  # (r, m), (m, r)
        comp = torch.diag_embed(self.s).expand(idx.numel(), self.r, self.r) + \
            (dl[:, None, None] * al.T[:, :, None]) * be[:, None, :]
        w = torch.linalg.svd(comp)[2][:, 0, :]  # (m, r) top right singular vectors
        v = self.V @ w.T  # (q, m), unit columns
        best = torch.zeros(idx.numel(), dtype=self.X.dtype, device=self.X.device)
        for _ in range(iters):
            y = self.X @ v + a * (dl * (b * v.T).sum(1))
            best = torch.maximum(best, y.norm(dim=0))
            z = self.X.T @ y + b.T * (dl * (a * y).sum(0))
            v = z / z.norm(dim=0).clamp_min(1e-300)
        return best

    def flip(self, j: int) -> None:
        dl = self.delta(torch.tensor([j], device=self.A.device))[0]
        self.X += dl * torch.outer(self.A[:, j], self.B[j])
        self.at_hi[j] = ~self.at_hi[j]
        self.flips += 1
        # warm start: the previous subspace plus the new direction b_j
        V0 = torch.cat([self.V, self.B[j][:, None]], 1)
        U, s, V = _top_subspace(self.X, V0, max_iter=8, tol=1e-10)
        self.U, self.s, self.V = U[:, : self.r], s[: self.r], V[:, : self.r]
        self._w = None
        self._d = None


@_threaded
def greedy_pair(A: torch.Tensor, B: torch.Tensor, lo, hi, *, strategy: str = "auto", r: int = 16,
                max_sweeps: int = 10, max_rounds: int | None = None, deadline: float | None = None,
                block: int = 512, generator: torch.Generator | None = None,
                sweep_threshold: int = 16384, refine: int = 8) -> PairSolution:
    """The paper's greedy SeqLip for one pair (an estimate: a vertex value, never above the max).

    ``strategy="best"``: start at ``d = hi``; each round scores every flip and applies the best
    one if it increases the norm; stop when none does (the paper's ``optim_greedy``).
    ``"sweep"``: pass over the neurons in order and apply every flip that increases the norm,
    at most ``max_sweeps`` passes (the paper's top-k routine, for very wide layers). ``"auto"``:
    ``"best"`` up to ``sweep_threshold`` neurons, else ``"sweep"``. ``r``: size of the singular
    subspace that scores the candidates (first by ``O(1)`` one-step bounds, the best 64 by the
    ``r x r`` compression); the ``refine`` best are sharpened by a few batched power iterations
    on their updated matrices, and ``4 refine`` by more before the greedy stops. Every score is
    a lower bound of the candidate's norm, compared with the current top Ritz value; a flip whose
    gain the bounds miss (seen: gains of ``1e-5`` relative) can end the search a few flips before
    the exact-score greedy, at a value within about 0.1 % of it on the pairs benchmarked. The returned value is the exact norm at the final
    vertex. ``deadline`` / ``max_rounds`` stop early (the value stays a vertex value).
    """
    p, n = A.shape
    lo, hi = _vec(lo, n, A), _vec(hi, n, A)
    if strategy == "auto":
        strategy = "best" if n <= sweep_threshold else "sweep"
    if strategy not in ("best", "sweep"):
        raise ValueError(f"strategy must be 'best', 'sweep' or 'auto', got {strategy!r}")
    if n == 0 or p == 0 or B.shape[1] == 0:
        return PairSolution(0.0, 0.0, torch.ones(n, dtype=torch.bool, device=A.device), "greedy", {"rounds": 0})
    state = _Greedy(A, B, lo, hi, r, generator, torch.ones(n, dtype=torch.bool, device=A.device))
    rounds = 0
    stopped = None
    all_idx = torch.arange(n, device=A.device)
    if strategy == "best":
        while True:
            stopped = _stop_reason(rounds, max_rounds, deadline)
            if stopped:
                break
            rounds += 1
            cheap = state.cheap_scores(all_idx)
            # the best by the cheap scores get the compressed scores, the best few of those are
            # sharpened by power iterations on their updated matrices; before stopping, a longer
            # check of more candidates
            for m_cheap, m, iters in ((64, refine, 6), (4096, 4 * refine, 40)):
                cand = torch.topk(cheap, min(m_cheap, n)).indices
                sc = state.scores(cand)
                order = torch.topk(sc, min(m, cand.numel())).indices
                top = cand[order]
                val = torch.maximum(sc[order], state.refine(top, iters))
                k = int(torch.argmax(val))
                if val[k].item() > state.sigma * (1 + 1e-12):
                    break
            else:
                break
            state.flip(int(top[k]))
    else:
        for sweep in range(max_sweeps):
            rounds += 1
            changed = False
            for c0 in range(0, n, block):
                idx = all_idx[c0:c0 + block]
                while idx.numel():
                    if deadline is not None and time.perf_counter() > deadline:
                        stopped = "deadline"
                        break
                    thresh = state.sigma * (1 + 1e-12)
                    up = torch.nonzero(state.cheap_scores(idx) > thresh).flatten()
                    if up.numel() == 0:  # the compressed scores of the 16 most promising
                        cand = torch.topk(state.cheap_scores(idx), min(16, idx.numel())).indices.sort().values
                        up = cand[state.scores(idx[cand]) > thresh]
                    if up.numel() == 0:
                        break
                    k = int(up[0])
                    state.flip(int(idx[k]))
                    changed = True
                    idx = idx[k + 1:]
                if stopped:
                    break
            if stopped or not changed:
                break
    d = torch.where(state.at_hi, hi, lo)
    value = pair_norm(A, B, d)
    info = {"strategy": strategy, "rounds": rounds, "flips": state.flips, "subspace": state.r}
    if stopped:
        info["stopped"] = stopped
    return PairSolution(value, value, state.at_hi, "greedy", info)


@_threaded
def greedy_pair_reference(A: torch.Tensor, B: torch.Tensor, lo, hi, *, max_rounds: int | None = None,
                          deadline: float | None = None) -> PairSolution:
    """The straightforward best-improvement greedy: every candidate flip is scored by a fresh
    spectral norm (an SVD of ``A diag(d) B``), as the 2018 reference code does. ``n`` SVDs per
    round; for tests and benchmarks."""
    p, n = A.shape
    lo, hi = _vec(lo, n, A), _vec(hi, n, A)
    at_hi = torch.ones(n, dtype=torch.bool, device=A.device)
    cur = pair_norm(A, B, hi)
    rounds = 0
    svds = 1
    while True:
        stopped = _stop_reason(rounds, max_rounds, deadline)
        if stopped:
            break
        rounds += 1
        best, best_j = cur, -1
        for j in range(n):
            trial = at_hi.clone()
            trial[j] = ~trial[j]
            v = pair_norm(A, B, torch.where(trial, hi, lo))
            svds += 1
            if v > best:
                best, best_j = v, j
        if best_j < 0:
            break
        at_hi[best_j] = ~at_hi[best_j]
        cur = best
    info = {"rounds": rounds, "svds": svds}
    if stopped:
        info["stopped"] = stopped
    return PairSolution(cur, cur, at_hi, "greedy", info)


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
