"""Interior-point LipSDP for chains through the chordal decomposition (Chordal-LipSDP).

For a chain the LMI ``N(rho, t) >= 0`` of :mod:`lipbound.methods.lmi` is block tridiagonal (see
:mod:`lipbound.methods.lipsdp_chain`): its sparsity graph is chordal with the maximal cliques
``{0, 1}, {1, 2}, ..., {m-1, m}`` (consecutive blocks). By Agler's theorem (Agler, Helton,
McCullough & Rodman 1988; used for LipSDP by Xue et al., *Chordal sparsity for Lipschitz constant
estimation of deep neural networks*, 2022) a matrix with this pattern is PSD iff it is a sum
``sum_k E_k^T X_k E_k`` of PSD matrices ``X_k`` on the cliques. So LipSDP-Neuron is the SDP in
``(rho, t, X_0..X_{m-1})``: ``N(rho, t)`` equals that sum block by block, ``X_k >= 0``, ``t >= 0``,
whose cones have the order of two consecutive layers instead of the whole network: its cost
grows linearly with depth. Solved by cvxpy + Clarabel; nothing it returns is trusted (the
multipliers go through :func:`~lipbound.methods.sdp_verify.certify` like any other).

**Dual bound.** The duals of the block equalities form a partial symmetric matrix ``Y`` on the
pattern, PSD on every clique. :func:`markov_completion` builds a Gram factor of a PSD completion of
it (the completion of a chain of overlapping cliques: each block drawn from its clique's
conditional law given the previous block, so every clique block is reproduced), whatever the
solver's sign and scale conventions are; :func:`~lipbound.methods.lipsdp_dual.repaired_dual` then
makes it feasible and evaluates the weak-duality bound.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import NotApplicable
from .lipsdp_dual import repaired_dual
from .lmi import LipschitzLMI


def solve_chordal(lmi: LipschitzLMI, *, variant: str = "neuron", time_budget: float = 300.0) -> tuple[np.ndarray, float, dict]:
    """Minimise ``rho`` over the chordal form of a chain's LMI (module docstring); returns
    ``(t per neuron, rho, info)`` with ``info["dual_rho"]`` a lower bound of the optimum."""
    import cvxpy as cp

    if not lmi.is_chain():
        raise NotApplicable("the chordal LipSDP solver takes chains (MLPs) only")
    blocks = lmi.blocks
    m = len(blocks) - 1
    w = [None] + [blocks[j].pre[j - 1] for j in range(1, m + 1)]
    rho = cp.Variable()
    free = [cp.Variable(nonneg=True) if variant == "layer" else cp.Variable(b.size, nonneg=True) for b in blocks[1:]]
    t = [None] + [f * np.ones(b.size) if variant == "layer" else f for f, b in zip(free, blocks[1:])]
    cliques = [cp.Variable((blocks[k].size + blocks[k + 1].size,) * 2, PSD=True) for k in range(m)]
    diagonal, lower = [], []
    for j in range(m + 1):
        n = blocks[j].size
        block = rho * np.eye(n) if j == 0 else cp.diag(2 * t[j])
        if j < m and np.any(blocks[j + 1].sector()[0]):
            block = block + 2 * w[j + 1].T @ cp.diag(cp.multiply(blocks[j + 1].sector()[0], t[j + 1])) @ w[j + 1]
        if j == m:
            block = block - sum(a.T @ a for a in lmi.out.values())
        parts = ([cliques[j - 1][-n:, -n:]] if j > 0 else []) + ([cliques[j][:n, :n]] if j < m else [])
        diagonal.append(block == sum(parts))
    for j in range(1, m + 1):
        n = blocks[j - 1].size
        lower.append(-cp.diag(cp.multiply(blocks[j].sector()[1], t[j])) @ w[j] == cliques[j - 1][n:, :n])
    problem = cp.Problem(cp.Minimize(rho), diagonal + lower)
    t0 = time.perf_counter()
    try:
        problem.solve(solver="CLARABEL", time_limit=max(time_budget, 1e-3))
    except cp.error.SolverError as exc:
        raise NotApplicable(f"the chordal SDP solver failed ({exc})") from None
    if problem.status not in ("optimal", "optimal_inaccurate") or rho.value is None:
        raise NotApplicable(f"the chordal SDP solver failed ({problem.status})")
    if variant == "layer":
        t_all = np.concatenate([np.full(b.size, float(f.value)) for f, b in zip(free, blocks[1:])])
    else:
        t_all = np.concatenate([f.value for f in free])
    dual = _dual_rho(lmi, [c.dual_value for c in diagonal], [c.dual_value for c in lower])
    return (np.maximum(t_all, 0.0), float(rho.value),
            {"solver_status": problem.status, "solver_used": "CLARABEL (chordal)",
             "cliques": m, "ipm_seconds": time.perf_counter() - t0, "dual_rho": dual})


def _dual_rho(lmi: LipschitzLMI, diagonal: list, lower: list) -> float:
    """The best repaired dual from the equality duals, with either sign convention."""
    if any(d is None for d in diagonal + lower):
        return 0.0
    best = 0.0
    for sign in (1.0, -1.0):
        for off_scale in (0.5, 1.0):
            diag = [sign * np.atleast_2d(np.asarray(d, dtype=float)) for d in diagonal]
            low = [sign * off_scale * np.asarray(d, dtype=float) for d in lower]
            best = max(best, repaired_dual(lmi, markov_completion(diag, low)))
    return best


def markov_completion(diagonal: list[np.ndarray], lower: list[np.ndarray]) -> np.ndarray:
    """A Gram factor ``V`` (rows: the blocks stacked) of a PSD completion of the block-tridiagonal
    partial matrix with diagonal blocks ``diagonal[j]`` and blocks ``lower[j-1] = Y_(j, j-1)``,
    after projecting each clique onto the PSD cone: block ``j`` is ``B_j V_{j-1} + C_j G_j`` with
    ``B_j = Y_(j,j-1) Y_(j-1,j-1)^+`` and ``C_j`` a factor of the conditional covariance, so each
    clique's block ``[[Y_(j-1,j-1), .], [Y_(j,j-1), Y_(j,j)]]`` is reproduced (``G_j``: fresh
    orthonormal columns)."""
    sym = [0.5 * (d + d.T) for d in diagonal]
    factors = [_psd_sqrt(sym[0])]
    for j in range(1, len(sym)):
        prev, cur, cross = sym[j - 1], sym[j], lower[j - 1]
        clique = _psd_part(np.block([[prev, cross.T], [cross, cur]]))
        n = prev.shape[0]
        prev, cross, cur = clique[:n, :n], clique[n:, :n], clique[n:, n:]
        coupling = cross @ np.linalg.pinv(prev, rcond=1e-12, hermitian=True)
        conditional = _psd_sqrt(cur - coupling @ cross.T)
        factors = [np.hstack([f, np.zeros((f.shape[0], conditional.shape[1]))]) for f in factors]
        factors.append(np.hstack([coupling @ factors[-1][:, :-conditional.shape[1] or None], conditional]))
    return np.vstack(factors)


def _psd_part(a: np.ndarray) -> np.ndarray:
    lam, u = np.linalg.eigh(0.5 * (a + a.T))
    return (u * np.maximum(lam, 0.0)) @ u.T


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    lam, u = np.linalg.eigh(0.5 * (a + a.T))
    return u * np.sqrt(np.maximum(lam, 0.0))
