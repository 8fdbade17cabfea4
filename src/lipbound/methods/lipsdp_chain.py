"""The least feasible ``rho`` of a chain's Lipschitz LMI by block elimination (no assembly).

For a chain (an MLP: activation ``j`` reads only block ``j - 1``, the output only the last block;
:meth:`~lipbound.methods.lmi.LipschitzLMI.is_chain`), ``N(rho, t) - tau I`` is block tridiagonal
(the structure Chordal-LipSDP exploits): with ``W_j`` the (scaled) pre-activation map of block
``j``, ``T_j``, ``a_j b_j``, ``a_j + b_j`` the diagonals of its multipliers and sector,

* off-diagonal blocks ``C_j = N_(j, j-1) = -diag((a_j + b_j) t_j) W_j``;
* diagonal blocks ``D_j = diag(2 t_j) - tau I + 2 W_{j+1}^T diag(a_{j+1} b_{j+1} t_{j+1}) W_{j+1}``
  (the last one ``- A_out^T A_out``), and on the input ``N_xx^0 = 2 W_1^T diag(a_1 b_1 t_1) W_1``.

Eliminating the hidden blocks from the last one backwards (block ``LDL^T``),
``S_m = D_m``, ``S_j = D_j - C_{j+1}^T S_{j+1}^{-1} C_{j+1}``: the neuron block ``N_hh - tau I`` is
positive definite iff every ``S_j`` is (a Cholesky factorisation of each, ``O(sum n_j^3)``), and
the input block of its inverse is ``S_1^{-1}``, so the Schur complement of
:meth:`~lipbound.methods.lmi.LipschitzLMI.schur` is ``Q = C_1^T S_1^{-1} C_1 - N_xx^0`` and
``rho* = tau + lambda_max(Q)``. For an eigenvector ``u`` of ``Q`` the null vector of
``N(rho*, t) - tau I`` is ``z_0 = u``, ``z_j = -S_j^{-1} C_j z_{j-1}`` (the elimination's back
substitution), from which the gradient in ``t`` follows as in the generic path.

This is the same function of ``t`` as the generic, assembled :meth:`~lipbound.methods.lmi.
LipschitzLMI.schur` (which the check of :mod:`lipbound.methods.sdp_verify` uses independently):
only the first-order solver's evaluations go through here, so nothing certified depends on it.
Each step touches a layer through ``W_j`` and ``W_j^T`` only, so a layer given as an operator
(matvec / rmatvec) fits the same recursion once ``S_j`` is kept implicitly (e.g. by an inner
iterative solve), which is what a matrix-free CNN version would need.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla

from .lmi import LipschitzLMI, SchurResult


def chain_schur(lmi: LipschitzLMI, t: np.ndarray, tau: float = 0.0, *, gradient: bool = False,
                top: int = 1) -> SchurResult:
    """Same contract as :meth:`~lipbound.methods.lmi.LipschitzLMI.schur`, for a chain (module docstring)."""
    blocks, slices = lmi.blocks, lmi.neuron_slices
    m = len(blocks) - 1
    w = [None] + [blk.pre[j - 1] for j, blk in enumerate(blocks[1:], start=1)]
    ab = [None] + [blk.sector()[0] * t[sl] for blk, sl in zip(blocks[1:], slices)]
    cc = [None] + [blk.sector()[1] * t[sl] for blk, sl in zip(blocks[1:], slices)]
    a_out = lmi.out[m]
    factors: list = [None] * (m + 1)
    couplings: list = [None] * (m + 1)  # C_j
    schur_next = None  # C_{j+1}^T S_{j+1}^{-1} C_{j+1}
    for j in range(m, 0, -1):
        d = np.diag(2.0 * t[slices[j - 1]] - tau)
        if j < m:
            d += 2.0 * (w[j + 1].T * ab[j + 1]) @ w[j + 1] - schur_next
        else:
            d -= a_out.T @ a_out
        try:
            factors[j] = sla.cho_factor(d, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return SchurResult(math.inf, None, None)
        if not np.all(np.isfinite(factors[j][0])):
            return SchurResult(math.inf, None, None)
        couplings[j] = -cc[j][:, None] * w[j]
        half = sla.solve_triangular(factors[j][0], couplings[j], lower=True, check_finite=False)
        schur_next = half.T @ half
    nxx0 = 2.0 * (w[1].T * ab[1]) @ w[1]
    q = schur_next - nxx0
    n0 = blocks[0].size
    k = min(top, n0)
    lam, u = sla.eigh(0.5 * (q + q.T), subset_by_index=[n0 - k, n0 - 1])
    lam, u = lam[::-1] + tau, u[:, ::-1]
    if not gradient:
        return SchurResult(float(lam[0]), None, None)
    zs = [u]
    for j in range(1, m + 1):
        zs.append(-sla.cho_solve(factors[j], couplings[j] @ zs[-1], check_finite=False))
    z = np.concatenate(zs, 0)
    grads = lmi.gradient_at(z)
    return SchurResult(float(lam[0]), grads[:, 0], z[:, 0], lam, grads, z)
