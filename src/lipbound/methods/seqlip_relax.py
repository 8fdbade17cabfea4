"""Certified upper bounds of a SeqLip pair (DESIGN §5): a convex relaxation, and branch and
bound over the slope box with it as node bound.

* :func:`relaxation_bound` — for unit ``u, x``: ``u^T A D B x = sum_j d_j s_j t_j`` with
  ``s = A^T u``, ``t = B x``; ``max_{d_j} d_j s_j t_j = m_j s_j t_j + h_j |s_j t_j|`` (``m``, ``h``
  the box's mid-points and half-widths) and ``|s_j t_j| <= (lambda_j s_j^2 + t_j^2 / lambda_j) / 2``
  for any ``lambda_j > 0``. Adding ``mu (||u||^2 - ||x||^2) / 2 = 0`` gives, for every
  ``lambda > 0`` and real ``mu``::

      max_d ||A D B|| <= lambda_max [[P + mu I, C], [C^T, Q - mu I]]
      C = A diag(m) B,  P = A diag(h lambda) A^T,  Q = B^T diag(h / lambda) B

  (the quadratic form is taken at ``w = (u, x)`` with ``||w||^2 = 2``). The right side is convex
  in ``(log lambda, mu)``; it is minimised with L-BFGS from a start that makes the inequalities
  tight at a known good vertex. Every evaluated point is a valid bound (float64 ``eigh`` plus a
  rounding margin), so stopping early is safe. Stable neurons (``h_j = 0``) sit in ``C`` and carry
  no multiplier. On random pairs it is within a few per cent of the exact maximum, often exact;
  when no neuron is free it is ``||C||`` exactly.
* :func:`branch_and_bound` — exact or bounded for wide pairs: best-first over the box, the
  relaxation as node bound, vertex values (the sign rule ``d_j = hi_j`` iff ``s_j t_j > 0`` at
  the relaxation's top eigenvector) as lower bounds, small sub-boxes enumerated exactly. It only
  branches on free neurons (``lo_j < hi_j``). It stops on a work cap (floating-point operations
  of its relaxations and leaves, :func:`relaxation_flops`), the same on every machine; a deadline
  is only an outer cap. At any time ``max(best vertex, open and pruned node bounds)`` is a
  certified upper bound.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .seqlip_pair import _EPS, MAX_ENUMERATE, PairSolution, _threaded, _vec, enumerate_pair, pair_norm

__all__ = ["relaxation_bound", "relaxation_flops", "branch_and_bound"]


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


_EVAL_OVERHEAD = 1e7  # flops that one evaluation's fixed cost (L-BFGS step, Python) is worth


def relaxation_flops(p: int, q: int, n: int) -> float:
    """Rough floating-point operations of one :func:`relaxation_bound` evaluation with ``n`` free
    neurons: ``(p^2 + q^2) n`` for the Gram blocks, ``~9 (p + q)^3`` for ``eigh``, plus its fixed
    cost (:data:`_EVAL_OVERHEAD`, which dominates for small pairs)."""
    return (p * p + q * q) * n + 9.0 * (p + q) ** 3 + _EVAL_OVERHEAD


# ---- branch and bound --------------------------------------------------------------------

@_threaded
def branch_and_bound(A: torch.Tensor, B: torch.Tensor, lo, hi, *, work: float = math.inf,
                     deadline: float | None = None, lower: float = 0.0, pattern: torch.Tensor | None = None,
                     start: tuple[torch.Tensor, torch.Tensor] | None = None, rtol: float = 1e-9,
                     root_evals: int = 60, node_evals: int = 12, leaf_flops: float = 2e9) -> PairSolution:
    """Certified maximum (or upper bound, when its work cap or the deadline stops it) of
    ``||A diag(d) B||`` over ``d in [lo, hi]^n``, by best-first branch and bound with
    :func:`relaxation_bound` as the node bound. ``lower``/``pattern``/``start``: a known vertex,
    its value and top singular vectors (e.g. from the greedy). A node whose sub-box has few free
    neurons is enumerated exactly (at most ``leaf_flops`` floating-point operations).

    ``work``: most floating-point operations, counted as :func:`relaxation_flops` of the whole
    box per relaxation evaluation plus each leaf's enumeration (the root always gets at least one
    evaluation); no node starts once it is spent, and ``info["stopped"] = "work"``.
    ``deadline`` (a ``time.perf_counter()`` value) is an outer cap: ``info["stopped"] =
    "time_budget"`` when it stopped the search. ``status`` is ``"exact"`` when the bound and the
    best vertex meet within ``rtol``, else ``"bounded"``.
    """
    p, n = A.shape
    q = B.shape[1]
    lo, hi = _vec(lo, n, A), _vec(hi, n, A)
    best = {"value": lower, "pattern": pattern}
    info: dict[str, Any] = {"nodes": 0, "leaves": 0, "evaluations": 0}
    per_eval = relaxation_flops(p, q, int((hi > lo).sum()))
    spent = [0.0]  # floating-point operations so far

    def evals_left(cap: int) -> int:
        return max(1, min(cap, int((work - spent[0]) // per_eval))) if work < math.inf else cap

    def vertex(d_hi: torch.Tensor) -> None:
        val = pair_norm(A, B, torch.where(d_hi, hi, lo))
        if val > best["value"]:
            best.update(value=val, pattern=d_hi.clone())

    def node_bound(nlo, nhi, theta0=None, mu0=None, st=None, evals=node_evals):
        r = relaxation_bound(A, B, nlo, nhi, start=st, theta0=theta0, mu0=mu0, max_evals=evals_left(evals),
                             deadline=deadline)
        info["evaluations"] += r.evaluations
        spent[0] += r.evaluations * per_eval
        if deadline is not None and time.perf_counter() > deadline:  # it may have cut this relaxation short
            info["stopped"] = "time_budget"
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
        if spent[0] >= work:
            info["stopped"] = "work"
            break
        if deadline is not None and time.perf_counter() > deadline:
            info["stopped"] = "time_budget"
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
                spent[0] += leaf_cost
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
