"""LipSDP by a barrier interior point whose Newton system is built from rank-two constraint terms.

**The problem.** In the notation of :mod:`lipbound.methods.lmi`, LipSDP-Neuron is

    min rho   s.t.   N(rho, t) = C_0 + rho E + sum_i t_i F_i  >  0,   t > 0

(closure: ``>= 0``). Each neuron's term has rank two: for neuron ``i`` of activation ``j``, with
``e_i`` its output coordinate, ``w_i`` the row of its pre-activation map (placed in the blocks it
reads) and sector ``[a_i, b_i]``, ``xi^T F_i xi = 2 (q_i - a_i p_i)(q_i - b_i p_i)``, i.e.

    F_i = u_i v_i^T + v_i u_i^T,     u_i = e_i - a_i w_i,   v_i = e_i - b_i w_i.

**The method.** Path following on the self-concordant barrier
``phi(rho, t) = -log det N(rho, t) - sum_i log t_i`` (parameter ``nu = order + n_t``): for
increasing ``s``, damped Newton steps on ``s rho + phi`` (Nesterov & Nemirovski; Boyd &
Vandenberghe §11.3). With ``A = N^{-1}``, ``G_uv = U^T A V`` (``U``, ``V``: the columns ``u_i``,
``v_i``) and likewise ``G_uu``, ``G_vv``, the derivatives are

    d phi / d rho = -trace A_xx,              d phi / d t_i = -2 (G_uv)_ii - 1 / t_i,
    d2 phi / d rho2 = ||A_xx||_F^2,           d2 phi / d rho d t_i = 2 (A u_i)_x . (A v_i)_x,
    d2 phi / d t_i d t_k = 2 ((G_uu o G_vv) + (G_uv o G_uv^T))_ik + delta_ik / t_i^2,

(``o``: entrywise product), so one Newton step costs one dense inverse of ``N`` (``O(n^3)``, LAPACK),
products with the layers' maps (``O(n^2 w)``) and one Cholesky factorisation of the
``(n_t + 1)``-square Newton matrix. Trial points are tested by a banded Cholesky factorisation
of ``N`` for chains (block tridiagonal), dense otherwise; every iterate stays strictly feasible.
LipSDP-Layer ties the multipliers of a node: its Newton matrix is the neuron one summed over each
node's neurons. At a central point ``Z = A / s`` is dual feasible (``trace Z_xx = 1``,
``<F_i, Z> = -1 / (s t_i) < 0``) with duality gap ``nu / s``: the solver stops when
``nu / s <= rtol * rho`` once centred, at ``max_iter`` Newton steps or at the deadline, whichever
comes first (the same seed-free arithmetic gives the same iterates; the deadline only caps them).

**Limitation (measured).** Exact to ~1e-7 on small MLPs and residual nets (tests), and on
GLipSDP's mlp_L5_W32 (0.00% gap, 139 Newton steps, 1.6 s), but from the eclipse-fast start the
damped Newton phase crawls on deeper trained nets (mlp_L9_W32: 300 steps, gap 82%), so
``solver="auto"`` does not pick it; a primal-dual (HKM / NT) variant with the same rank-two
Newton matrix is the intended fix.

**Nothing here is trusted.** The returned ``(t, rho)`` go through
:func:`~lipbound.methods.sdp_verify.certify` (float64 Cholesky proof on the full LMI) like every
other solver's, and the dual bound ``details["dual_rho"]`` is :func:`~lipbound.methods.lipsdp_dual.
repaired_dual` of the Gram factor ``L^{-T}`` of ``A`` (``N = L L^T``), made feasible there before
weak duality is applied.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy.linalg import lapack

from ..errors import NotApplicable
from .lipsdp_dual import repaired_dual
from .lmi import LipschitzLMI

POLISH_STEPS = 5  # Newton steps at the final s that centre the dual candidate
START_GAP = 10.0  # the first target: a central point whose gap nu / s is a tenth of the start's rho


@dataclass
class _Point:
    """An iterate with what the Newton step needs: ``log det N``, the inverse factor ``L^{-1}``,
    the barrier's gradient (without ``s``) and Hessian in the free variables ``(rho, u)``."""

    rho: float
    u: np.ndarray
    logdet: float
    linv: np.ndarray
    grad: np.ndarray
    hess: np.ndarray


class _Barrier:
    """The LMI's data laid out for the barrier ``phi`` (module docstring); ``variant`` ``"neuron"``
    (``u = t``) or ``"layer"`` (``u``: one multiplier per activation node)."""

    def __init__(self, lmi: LipschitzLMI, variant: str):
        self.lmi, self.variant = lmi, variant
        self.off = lmi.offsets
        self.n0 = lmi.blocks[0].size
        self.lo = np.concatenate([b.lo for b in lmi.blocks[1:]])
        self.hi = np.concatenate([b.hi for b in lmi.blocks[1:]])
        self.slices = lmi.neuron_slices
        bw = lmi.bandwidth(0)
        self.band = bw if 3 * bw < lmi.size else None

    def expand(self, u: np.ndarray) -> np.ndarray:
        """Per-neuron multipliers ``t`` from the free ones ``u``."""
        if self.variant == "neuron":
            return u
        return np.concatenate([np.full(sl.stop - sl.start, ui) for sl, ui in zip(self.slices, u)])

    def reduce(self, g: np.ndarray, axis: int = 0) -> np.ndarray:
        """Sum over each node's neurons along ``axis`` (the chain rule for ``t = expand(u)``)."""
        if self.variant == "neuron":
            return g
        return np.stack([np.take(g, range(sl.start, sl.stop), axis=axis).sum(axis=axis) for sl in self.slices],
                        axis=axis)

    def logdet(self, rho: float, u: np.ndarray) -> float:
        """``log det N(rho, t)``, or ``-inf`` outside the cone (``u > 0`` required)."""
        if not np.all(u > 0):
            return -math.inf
        parts = self.lmi.blocks_of_N(rho, self.expand(u))
        try:
            if self.band is not None:
                fac = sla.cholesky_banded(self.lmi.assemble(parts, banded=self.band), lower=True, check_finite=True)
                return 2.0 * float(np.sum(np.log(fac[0])))
            fac = sla.cholesky(self.lmi.assemble(parts), lower=True, check_finite=True)
        except (np.linalg.LinAlgError, ValueError):
            return -math.inf
        return 2.0 * float(np.sum(np.log(np.diag(fac))))

    def wt(self, x: np.ndarray) -> np.ndarray:
        """``W^T x``: row block ``j`` is ``sum_r P_jr x_r`` (``P_jr``: activation ``j``'s map of block ``r``)."""
        rows = []
        for blk in self.lmi.blocks[1:]:
            rows.append(sum(m @ x[self.off[r]:self.off[r + 1]] for r, m in blk.pre.items()))
        return np.concatenate(rows, 0)

    def point(self, rho: float, u: np.ndarray) -> _Point | None:
        """The iterate at ``(rho, u)`` with its derivatives, or None outside the cone."""
        if not np.all(u > 0):
            return None
        t = self.expand(u)
        n = self.lmi.size
        l_fac, info = lapack.dpotrf(self.lmi.dense_N(rho, t), lower=1, clean=1)
        if info != 0 or not np.all(np.isfinite(l_fac)):
            return None
        linv, info = lapack.dtrtri(l_fac, lower=1)
        if info != 0:
            return None
        a = linv.T @ linv  # N^{-1}
        h, x = slice(self.n0, n), slice(0, self.n0)
        k_t = self.wt(a)  # W^T A  (n_t x n)
        waw = self.wt(k_t.T)  # W^T A W
        k = k_t[:, h]  # W^T A Q
        lo, hi = self.lo, self.hi

        def gram(p: np.ndarray, q: np.ndarray) -> np.ndarray:
            """``(Q - W D_p)^T A (Q - W D_q)``."""
            return a[h, h] - k.T * q[None, :] - p[:, None] * k + p[:, None] * waw * q[None, :]

        guv, guu, gvv = gram(lo, hi), gram(lo, lo), gram(hi, hi)
        au_x = a[x, h] - k_t[:, x].T * lo[None, :]
        av_x = a[x, h] - k_t[:, x].T * hi[None, :]
        h_tt = self.reduce(self.reduce(2.0 * (guu * gvv + guv * guv.T), 0), 1) + np.diag(1.0 / u ** 2)
        h_rt = self.reduce(2.0 * np.sum(au_x * av_x, axis=0))
        hess = np.empty((u.size + 1, u.size + 1))
        hess[0, 0] = float(np.sum(a[x, x] ** 2))
        hess[0, 1:] = hess[1:, 0] = h_rt
        hess[1:, 1:] = h_tt
        grad = np.concatenate([[-np.trace(a[x, x])], self.reduce(-2.0 * np.diag(guv)) - 1.0 / u])
        return _Point(rho, u, 2.0 * float(np.sum(np.log(np.diag(l_fac)))), linv, grad, hess)


def solve_ipm(lmi: LipschitzLMI, *, variant: str = "neuron", t0: np.ndarray, time_budget: float = 300.0,
              max_iter: int = 300, rtol: float = 1e-7, growth: float = 8.0) -> tuple[np.ndarray, float, dict]:
    """Minimise ``rho`` over ``N(rho, t) >= 0``, ``t >= 0`` by the barrier method of the module
    docstring, from the strictly feasible multipliers ``t0`` (``N_hh(t0) > 0``, e.g.
    :func:`~lipbound.methods.eclipse.fast_multipliers`). ``s`` grows by ``growth`` whenever the
    Newton decrement says the iterate is centred (``lambda^2 <= 1/4``). Returns
    ``(t per neuron, rho, info)``; ``info["dual_rho"]`` is a lower bound of the optimum."""
    deadline = time.perf_counter() + time_budget
    bar = _Barrier(lmi, variant)
    t0 = np.asarray(t0, dtype=np.float64)
    u = np.array([float(t0[sl].mean()) for sl in bar.slices]) if variant == "layer" else t0.copy()
    u = np.maximum(u, 1e-12 * max(float(u.max()), 1e-300))
    rho_star = lmi.schur(bar.expand(u)).rho
    if not math.isfinite(rho_star):
        raise NotApplicable("the interior-point LipSDP solver needs multipliers whose neuron block is positive definite")
    rho = rho_star + max(0.1 * abs(rho_star), 1e-6)
    pt = bar.point(rho, u)
    if pt is None:
        raise NotApplicable("the interior-point LipSDP solver could not factorise its starting point")
    nu = lmi.size + u.size
    c = np.zeros(u.size + 1)
    c[0] = 1.0
    hfac = _factor(pt.hess)
    s = max(_central_s(hfac, pt.grad, c, nu, rho), START_GAP * nu / rho)
    status, steps, raises, polish = "iteration limit", 0, 0, 0
    while steps < max_iter:
        g = s * c + pt.grad
        d = -_solve(hfac, g)
        dec2 = -float(g @ d)
        if dec2 <= 0.25 and nu / s <= rtol * pt.rho:  # done: a few more steps centre Z = A / s for the dual
            if dec2 <= 1e-6 or polish >= POLISH_STEPS:
                status = "converged"
                break
            polish += 1
        elif dec2 <= 0.25:  # centred: tighten the path
            s *= growth
            raises += 1
            continue
        if time.perf_counter() > deadline:
            status = "time limit"
            break
        step, f0 = 1.0, s * pt.rho - pt.logdet - float(np.sum(np.log(pt.u)))
        while True:
            rho_n, u_n = pt.rho + step * d[0], pt.u + step * d[1:]
            ld = bar.logdet(rho_n, u_n)
            if math.isfinite(ld) and s * rho_n - ld - float(np.sum(np.log(u_n))) <= f0 - 0.25 * step * dec2:
                break
            step *= 0.5
            if step < 1e-6:
                break
        if step < 1e-6:  # float64 resolves no further decrease of the barrier along the Newton step
            status = "converged (line search stalled)"
            break
        new = bar.point(rho_n, u_n)
        if new is None:
            raise NotApplicable("the interior-point LipSDP solver lost positive definiteness (rounding)")
        pt, hfac, steps = new, _factor(new.hess), steps + 1
    dual = repaired_dual(lmi, pt.linv.T)
    return (bar.expand(pt.u), pt.rho, {"solver_status": status, "iterations": steps, "path_raises": raises,
                                        "barrier_gap": nu / s, "dual_rho": dual})


def _factor(hess: np.ndarray):
    """Cholesky factor of the Newton matrix, diagonally scaled (Jacobi) for its wide range of scales."""
    scale = 1.0 / np.sqrt(np.maximum(np.diag(hess), 1e-300))
    fac = sla.cho_factor(hess * scale[:, None] * scale[None, :], lower=True, check_finite=True)
    return _Scaled(fac, scale)


@dataclass
class _Scaled:
    fac: tuple
    scale: np.ndarray


def _solve(f: _Scaled, b: np.ndarray) -> np.ndarray:
    return f.scale * sla.cho_solve(f.fac, f.scale * b)


def _central_s(hfac: _Scaled, grad: np.ndarray, c: np.ndarray, nu: int, rho: float) -> float:
    """The ``s`` that makes the start closest to central: least ``||s c + grad||`` in the Hessian's
    inverse norm (positive; else ``nu / rho``, the gap a central point at this ``rho`` would have)."""
    hc, hg = _solve(hfac, c), _solve(hfac, grad)
    s = -float(c @ hg) / float(c @ hc)
    return s if s > 0 and math.isfinite(s) else nu / max(rho, 1e-300)
