"""LipSDP by a dual-scaling interior point (DSDP-style) on the rank-two Newton matrix.

**The problem.** In the notation of :mod:`lipbound.methods.lmi`, LipSDP-Neuron is

    min rho   s.t.   N(y) = C_0 + rho E + sum_i t_i F_i  >=  0,   t >= 0,     y = (rho, t),

and its dual (:mod:`lipbound.methods.lipsdp_dual`) is ``max <A_out^T A_out, X>`` over ``X >= 0``
with ``<E, X> = 1`` and ``<F_i, X> <= 0``. The solver keeps ``y`` strictly feasible (every iterate
is a candidate certificate) and never forms ``X``: this is the dual-scaling method of Benson, Ye &
Zhang (*Solving large-scale sparse semidefinite programs for combinatorial optimization*, SIAM J.
Optim. 2000; the DSDP solver), which suits LipSDP: its constraint matrices have rank two and
``N`` is block tridiagonal on a chain, so everything but one dense inverse is cheap.

**One iteration.** With the barrier ``phi`` of :mod:`lipbound.methods.lipsdp_newton` (negative
gradient ``g``, Hessian ``H``; ``c = (1, 0, ..., 0)`` the objective), the Newton step towards the
central point of parameter ``mu`` (the minimiser of ``c^T y / mu + phi``) is

    dy(mu) = H^{-1} g - H^{-1} c / mu         (two solves with one Cholesky factor of H).

*Primal candidates, hence a lower bound, for free.* For any ``mu' > 0``,
``X(mu') = mu' N^{-1} N(y - dy(mu')) N^{-1}`` satisfies ``<E, X> = 1`` and
``<F_i, X> = -mu' (t_i - dt_i) / t_i^2`` exactly (this is ``H dy = g - c / mu'``), so it is dual
feasible iff ``y - dy(mu')`` is inside the cone (``N(y - dy) >= 0``, ``t - dt >= 0``: a
banded Cholesky test). Its objective ``mu' trace(P^T N(y - dy(mu')) P)`` with ``P = N^{-1}
A_out^T`` is affine in ``mu'`` and lower-bounds the optimum (weak duality); ``mu'`` is scanned on a
grid around ``mu`` and the best bound ``ell`` kept.

*Step.* ``mu = (rho - ell) / (GAP_REDUCTION * nu)`` (``nu = order + n_t``: a central point of
parameter ``mu`` has gap ``nu mu``), and ``y <- y + alpha dy(mu)`` with ``alpha`` the largest step
up to 1 that keeps ``y`` a ``FRACTION`` of the way from the boundary. The method stops when
``rho - ell <= rtol * rho``, at ``max_iter`` iterations (``stopped_by="iterations"``) or at the
deadline (``"time"``); the same data give the same iterates, the clock only caps them.

**Why the earlier pure barrier stalled** (measured on GLipSDP's mlp_L9_W32: 300 Newton steps, 82%
gap, its barrier parameter never raised once): it started its path at a target ``s`` ten times past
the start's centre, so its damped Newton phase had to decrease ``s rho + phi`` by thousands at
a few tenths per step. Here the target follows the gap itself, which the free lower bound measures.

**Scale.** The LMI is the balanced one of :func:`~lipbound.methods.eclipse.balanced` (each block in
units that make the eclipse-fast recursion's blocks of unit size, ``rho`` near 1), the diagonal
congruence under which LipSDP is equivariant; the Newton matrix is Jacobi-scaled before its
Cholesky factorisation.

**Nothing here is trusted.** The returned ``(t, rho)`` go through
:func:`~lipbound.methods.sdp_verify.certify` (float64 Cholesky proof on the full LMI), and the dual
bound ``info["dual_rho"]`` is :func:`~lipbound.methods.lipsdp_dual.repaired_dual` of the Gram
factor ``sqrt(mu') N^{-1} L`` (``N(y - dy) = L L^T``) of the best ``X(mu')``, made feasible there
before weak duality is applied.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg as sla

from ..errors import NotApplicable
from .lipsdp_dual import repaired_dual
from .lipsdp_newton import (RankTwoBarrier, cholesky_or_none, largest_step, psd_step, ratio_step, scaled_cholesky,
                            scaled_solve)
from .lmi import LipschitzLMI

TRACE = False
X0_MODE = 'centred'
X0_SCALE = 1.0
FRACTION = 0.95  # steps stop this fraction of the way to the cones' boundaries


def solve_ipm(lmi: LipschitzLMI, *, variant: str = "neuron", t0: np.ndarray, time_budget: float = 300.0,
              max_iter: int = 100, rtol: float = 1e-7) -> tuple[np.ndarray, float, dict]:
    """Minimise ``rho`` over ``N(rho, t) >= 0``, ``t >= 0`` by the method of the module docstring,
    from the strictly feasible multipliers ``t0`` (``N_hh(t0) > 0``, e.g.
    :func:`~lipbound.methods.eclipse.fast_multipliers`). Returns ``(t per neuron, rho, info)``;
    ``info["dual_rho"]`` is a lower bound of the optimum."""
    deadline = time.perf_counter() + time_budget
    bar = RankTwoBarrier(lmi, variant)
    y = _start(lmi, bar, np.asarray(t0, dtype=np.float64))
    n, m = lmi.size, y.size - 1
    c = np.zeros(y.size)
    c[0] = 1.0
    s_parts, s_fac = bar.parts(y), bar.factor(y)
    if X0_MODE == "centred":
        x = s_fac.inverse()  # the centred start X = mu N^{-1}, z = mu / t, with mu making trace X_xx = 1
        mu = X0_SCALE / float(np.trace(x[:bar.n0, :bar.n0]))
        x *= mu
        z = mu / y[1:]
    else:
        x = np.eye(n) * X0_SCALE / bar.n0
        mu = bar.inner(s_parts, x) / n
        z = mu / y[1:]
    x_low = cholesky_or_none(x)
    status, it = "iteration limit", 0
    for it in range(1, max_iter + 1):
        s_inv = s_fac.inverse()
        gs, gx = bar.grams(s_inv), bar.grams(x)
        hess = bar.newton_matrix(gx, gs)
        hess[1:, 1:] += np.diag(z / y[1:])
        fac = scaled_cholesky(hess)
        g = bar.constraint_values_of(gs)
        g[1:] += 1.0 / y[1:]
        gap = bar.inner(s_parts, x) + float(z @ y[1:])
        mu = gap / (n + m)
        infeasible = float(np.max(np.abs(c - bar.constraint_values_of(gx) - np.concatenate([[0.0], z]))))
        if TRACE:
            print(it, f"rho {y[0]:.8g} gap/rho {gap / y[0]:.2e} infeas {infeasible:.1e} t {time.perf_counter() - deadline + time_budget:.1f}")
        if gap <= rtol * abs(y[0]) and infeasible <= rtol:
            status = "converged"
            break
        if time.perf_counter() > deadline:
            status = "time limit"
            break
        # predictor (sigma = 0), then Mehrotra's sigma and the corrector with its second-order term
        dy = scaled_solve(fac, -c)
        ds = bar.parts(dy, affine=False)
        xds = s_fac.solve(bar.matmul(ds, x))  # S^{-1} dS X = (X dS S^{-1})^T
        dx = -x - 0.5 * (xds + xds.T)
        dz = -z - z * dy[1:] / y[1:]
        ap, ad = _primal_step(x_low, dx, z, dz, 1.0), _dual_step(bar, y, dy, 1.0)
        mu_aff = _affine_mu(bar, s_parts, ds, x, dx, z, dz, y, dy, ap, ad, n + m)
        sigma = min(1.0, (mu_aff / mu) ** 3)
        second = s_fac.solve(bar.matmul(ds, dx))  # (dX_a dS_a S^{-1})^T
        second = 0.5 * (second + second.T)
        lp_second = dz * dy[1:] / y[1:]
        rhs = sigma * mu * g - c - bar.constraint_values(second)
        rhs[1:] -= lp_second
        dy = scaled_solve(fac, rhs)
        ds = bar.parts(dy, affine=False)
        xds = s_fac.solve(bar.matmul(ds, x))
        dx = sigma * mu * s_inv - x - 0.5 * (xds + xds.T) - second
        dz = sigma * mu / y[1:] - z - z * dy[1:] / y[1:] - lp_second
        fraction = 0.9 + 0.09 * min(ap, ad)  # the predictor's steps: longer as the iterates near the optimum
        ap, ad = fraction * _primal_step(x_low, dx, z, dz, 1 / fraction), _dual_step(bar, y, dy, fraction)
        while (low := cholesky_or_none(x + ap * dx)) is None:  # the Lanczos estimate was too long
            ap *= 0.8
        if TRACE:
            print(f"   sigma {sigma:.2g} ap {ap:.3f} ad {ad:.3f} min z*t/mu {np.min(z * y[1:]) / mu:.2g}")
        x, x_low, z, y = x + ap * dx, low, z + ap * dz, y + ad * dy
        s_parts, s_fac = bar.parts(y), bar.factor(y)
        if s_fac is None:
            raise NotApplicable("the interior-point LipSDP solver lost positive definiteness (rounding)")
    dual = _dual_rho(bar, x)
    return (bar.expand(y[1:]), float(y[0]), {"solver_status": status, "iterations": it, "dual_rho": dual})


def _primal_step(x_low: np.ndarray, dx: np.ndarray, z: np.ndarray, dz: np.ndarray, cap: float) -> float:
    """The largest step up to ``cap`` that keeps ``X + a dX > 0`` (Lanczos estimate) and ``z + a dz > 0``."""
    return min(1.0, psd_step(x_low, dx, ratio_step(z, dz, cap)))


def _dual_step(bar: RankTwoBarrier, y: np.ndarray, dy: np.ndarray, fraction: float) -> float:
    """``fraction`` of the largest step keeping ``N(y + a dy) > 0``, ``t > 0`` (checked by factorisations), at most 1."""
    cap = 1.0 / fraction
    return min(1.0, fraction * largest_step(lambda a: bar.inside(y + a * dy), ratio_step(y[1:], dy[1:], cap)))


def _affine_mu(bar, s_parts, ds, x, dx, z, dz, y, dy, ap, ad, nu) -> float:
    """``(<X + ap dX, S + ad dS> + (z + ap dz).(t + ad dt)) / nu``."""
    xp = x + ap * dx
    return (bar.inner(s_parts, xp) + ad * bar.inner(ds, xp) + float((z + ap * dz) @ (y[1:] + ad * dy[1:]))) / nu


def _start(lmi: LipschitzLMI, bar: RankTwoBarrier, t0: np.ndarray) -> np.ndarray:
    """``(rho, u)`` strictly inside the cone: the multipliers ``t0`` (their node means for the
    layer variant) and 1.1 times their least ``rho``."""
    u = np.array([float(t0[sl].mean()) for sl in bar.slices]) if bar.variant == "layer" else t0.copy()
    u = np.maximum(u, 1e-12 * max(float(u.max()), 1e-300))
    rho = lmi.schur(bar.expand(u)).rho
    if not math.isfinite(rho):
        raise NotApplicable("the interior-point LipSDP solver needs multipliers whose neuron block is positive definite")
    y = np.concatenate([[rho + max(0.1 * abs(rho), 1e-6)], u])
    if not bar.inside(y):
        raise NotApplicable("the interior-point LipSDP solver could not factorise its starting point")
    return y


def _dual_rho(bar: RankTwoBarrier, x: np.ndarray) -> float:
    """:func:`~lipbound.methods.lipsdp_dual.repaired_dual` of the Cholesky factor of ``X``."""
    try:
        low = sla.cholesky(x, lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return 0.0
    return repaired_dual(bar.lmi, low)
