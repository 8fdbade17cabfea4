"""LipSDP by a primal-dual interior point on the rank-two Newton matrix (``solver="ipm"``).

**The problem.** In the notation of :mod:`lipbound.methods.lmi`, LipSDP-Neuron is

    min rho   s.t.   S = N(y) = C_0 + rho E + sum_i t_i F_i  >=  0,   t >= 0,     y = (rho, t),

and its dual (:mod:`lipbound.methods.lipsdp_dual`) is ``max <A_out^T A_out, X>`` over ``X >= 0``,
``z >= 0`` with ``<E, X> = 1`` and ``<F_i, X> + z_i = 0``. The solver is a primal-dual path
following method (Helmberg-Rendl-Vanderbei-Wolkowicz / Kojima-Shindoh-Hara / Monteiro direction,
"HKM", with Mehrotra's predictor-corrector, as in SDPT3): ``y`` stays strictly feasible, so every
iterate's multipliers are a candidate certificate; ``X`` starts infeasible (``X = I / n_x``) and
becomes feasible as its steps reach 1.

**One iteration.** With ``mu = (<X, S> + z.t) / (n + n_t)`` and the HKM Schur complement
``H_kl = trace(A_k X A_l S^{-1}) + delta_kl z_k / t_k`` (``A_0 = E``, ``A_i = F_i``;
:meth:`~lipbound.methods.lipsdp_newton.RankTwoLMI.newton_matrix`, from rank-two terms), the
direction for the target ``sigma mu`` solves ``H dy = sigma mu g - c - r2`` (``g_k = <A_k, S^{-1}>
(+ 1 / t_k)``, ``c = (1, 0, ...)``, ``r2`` Mehrotra's second-order term; the primal residual cancels
out of this right-hand side), then ``dX = sigma mu S^{-1} - X - sym(X dS S^{-1}) - sym(dX_a dS_a
S^{-1})`` and ``dz = sigma mu / t - z - z dt / t - dz_a dt_a / t``. ``sigma = (mu_a / mu)^3`` from
the predictor (``sigma = 0``), capped at ``SIGMA_MAX`` (below). Steps: a fraction ``0.9 + 0.09
min(predictor steps)`` of the way to the boundaries, each estimated by Lanczos (the primal one on
``L^{-1} dX L^{-T}``, ``X = L L^T``; the dual one on ``L^{-1} dS L^{-T}`` through the factor of
``N``) and checked by one factorisation at the step taken, shortened until it passes (the dual
check's factor is the next iteration's). On a chain every product with ``S^{-1}`` is a block-bidiagonal solve (:mod:`lipbound.methods.lipsdp_factor`), so the
costs per iteration are the dense ``X`` (its Cholesky factor, ``O(n^3)``), the Newton matrix
(``O(n_t^2)`` entries, one Cholesky factorisation) and ``O(n^2 w)`` block products.

**Sharing the work of a direction.** ``dS = drho E + sum_i dt_i F_i`` has rank-two terms, so
``dS X`` comes from ``W^T X``, which the grams of ``X`` already hold, by one product with ``W``
(:meth:`~lipbound.methods.lipsdp_newton.RankTwoLMI.times`), not one per block of ``dS``. The
corrector's right-hand side needs only the constraint values of the second-order term ``sym(S^{-1}
dS_a dX_a)``, which follow from ``S^{-1}``, its grams and ``dS_a dX_a`` without a solve
(:meth:`~lipbound.methods.lipsdp_newton.RankTwoLMI.solved_constraint_values`); the term itself
enters ``dX`` through the corrector's solve, ``sym(S^{-1} (dS X + dS_a dX_a))``: two block solves
per iteration instead of three, the same iterates up to rounding.

**The first iterations.** From ``X = I / n_x`` the primal steps are short at first (0.04 on
mnistfc_256x6: ``X`` must gain the correlations between each neuron and its pre-activation that
``<F_i, X> = -z_i < 0`` asks for), so the predictor barely lowers ``mu`` and Mehrotra's
``(mu_a / mu)^3`` is close to 1: pure centring, which moved ``rho`` *up* (0.44 to 1.22, scaled)
and spent ~7 iterations before ``rho`` fell. Capping ``sigma`` at 0.1 keeps a target well below the
current ``mu``: measured (one core), within 10% of the optimum's value after 11 iterations
instead of 14 on mnistfc_256x6 (20 iterations to converge instead of 22), and converged in 26
instead of 28 on eran_mnist_relu_9x200; the same counts (+-2) on mnistfc_256x2, ACAS Xu 1_1,
mlp_L9_W32, mlp_L33_W16. Starts tried and not kept: ``X = mu S^{-1}`` (centred, infeasible: 46
iterations instead of 21 on ACAS Xu 1_1), the covariance of a linearised network with slopes
``(a + b) / 2`` and per-neuron noise (strictly feasible but far from centred: first steps of
1e-3), a feasible mix of the two (the mix keeps < 1e-5 of ``S^{-1}``), larger neuron blocks of
``X`` (``rho`` rises 20-50x before falling).

**Why the earlier pure barrier stalled** (measured on GLipSDP's mlp_L9_W32: 300 Newton steps, 82%
gap, its barrier parameter never raised once): not scaling (its LMI is already balanced; its
derivatives matched finite differences, its Hessian had condition 500), but centrality: from the
eclipse-fast multipliers the barrier's centre at fixed ``rho`` lies ~230 barrier units away,
which damped Newton crosses at ~2 units per step (measured: 80 steps just to centre once). A
primal-dual method needs no centred start. This one reaches LipSDP's optimum on that net in 14
iterations.

**Scale.** The LMI is the balanced one of :func:`~lipbound.methods.eclipse.balanced` (each block in
power-of-two units that make the eclipse-fast recursion's blocks of unit size), the diagonal
congruence under which LipSDP is equivariant; the Newton matrix is Jacobi-scaled before its
Cholesky factorisation.

**Memory.** An ``n x n`` array of ``n ~ 2000`` (32 MiB) is above glibc's largest ``mmap``
threshold, so every fresh one costs its page faults (~10-70 ms, more than the arithmetic on it:
measured 27% of an mlp_L65_W32 solve). The loop therefore works in place where it can: the
block-bidiagonal solves overwrite their right-hand sides, symmetrisation goes tile by tile
(:func:`~lipbound.methods.lipsdp_newton.symmetrize`), and two ``n x n`` work arrays besides ``X``
live through the loop (the next ``X`` is written into one, the last ``X`` becomes it).

**Stopping.** When ``<X, S> + z.t <= rtol rho`` and the primal residual is below ``rtol``
(default ``1e-4``: on mlp_L65_W32 the iterates after that move ``rho`` by ~1e-7 relative; ``1e-6``
took four more iterations; ``stopped_by="converged"``), at ``max_iter`` (``"iterations"``) or at
the deadline (``"time"``: when the last iteration's seconds would take the next one past it, so
that a cut run overruns its budget by the check only):
the same data give the same iterates, the clock only caps them. The iterate with the least
``rho`` is returned, and ``info["candidates"]`` offers it and the last ``CANDIDATES`` iterates to
the check: near the optimum the neuron block of ``N`` is nearly singular, and the check's rounding
margin (``N - tau I >= 0``) can cost a converged iterate more than a slightly earlier, more central
one loses (measured on mlp_L33_W16: 0.07% of the value).

**The check's margin.** With ``margin > 0`` the solver minimises ``rho`` over ``N(rho, t) >=
margin I`` instead (``C_0`` shifted by ``-margin I``; every iterate is then strictly feasible for
the original problem, and the optimum rises by about ``margin trace(X*)``). At LipSDP's own
optimum on a deep chain the neuron block of ``N`` has eigenvalues (~1e-12 on mlp_L65_W32) below
the margin that :func:`~lipbound.methods.sdp_verify.certify` needs to prove ``N >= 0`` in float64;
:func:`~lipbound.methods.sdp_verify.solving_margin` gives one that it can, so the check passes
on its first attempt (measured on mlp_L65_W16: gap 0.12% instead of 2.01%). The dual bound
stays one of the original problem: ``X`` does not see ``C_0``.

**Nothing here is trusted.** The returned ``(t, rho)`` go through
:func:`~lipbound.methods.sdp_verify.certify` (float64 Cholesky proof on the full LMI), and the dual
bound ``info["dual_rho"]`` is :func:`~lipbound.methods.lipsdp_dual.repaired_dual` of the
Cholesky factor of the last ``X``, made feasible there before weak duality is applied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg as sla

from ..errors import NotApplicable
from .lipsdp_dual import repaired_dual
from .lipsdp_newton import (RankTwoLMI, cholesky_or_none, factor_step, psd_step, ratio_step, scaled_cholesky,
                            scaled_solve, symmetrize)
from .lmi import LipschitzLMI


CANDIDATES = 3  # last iterates offered to the check besides the best one (module docstring, *Stopping*)
SIGMA_MAX = 0.1  # cap of Mehrotra's centring parameter (module docstring, *The first iterations*)


def solve_ipm(lmi: LipschitzLMI, *, variant: str = "neuron", t0: np.ndarray, time_budget: float = 300.0,
              max_iter: int = 100, rtol: float = 1e-4, margin: float = 0.0,
              on_iterate: Callable[[np.ndarray], None] | None = None) -> tuple[np.ndarray, float, dict]:
    """Minimise ``rho`` over ``N(rho, t) >= 0``, ``t >= 0`` by the method of the module docstring,
    from the strictly feasible multipliers ``t0`` (``N_hh(t0) > margin I``, e.g.
    :func:`~lipbound.methods.eclipse.fast_multipliers`), keeping ``N(rho, t) >= margin I`` (module
    docstring, *The check's margin*). Returns ``(t per neuron, rho, info)``;
    ``info["dual_rho"]`` is a lower bound of the optimum. ``on_iterate`` (e.g. a benchmark's
    clock) is called with each iterate ``y = (rho, u)``, the start included."""
    deadline = time.perf_counter() + time_budget
    t0 = np.asarray(t0, dtype=np.float64)
    terms = RankTwoLMI(lmi, variant, margin)
    try:
        y = _start(lmi, terms, t0)
    except NotApplicable:  # t0 leaves no room for the margin (e.g. its node means): the check will move the optimum
        terms = RankTwoLMI(lmi, variant)
        y = _start(lmi, terms, t0)
    n, m = lmi.size, y.size - 1
    c = np.zeros(y.size)
    c[0] = 1.0
    s_parts, s_fac = terms.parts(y), terms.factor(y)
    x = np.eye(n) / terms.n0  # trace X_xx = 1; z centres the multipliers' part: z t = <X, N> / n
    z = terms.inner(s_parts, x) / n / y[1:]
    x_low = cholesky_or_none(x)
    work, spare = np.empty((n, n)), np.empty((n, n))  # besides X, the loop's n x n arrays (module docstring, *Memory*)
    path = [y]
    if on_iterate is not None:
        on_iterate(y)
    status, it = "iteration limit", 0
    last = 0.0  # seconds of the last iteration
    for it in range(1, max_iter + 1):
        began = time.perf_counter()
        s_inv = s_fac.inverse()
        gs, gx = terms.grams(s_inv, "s"), terms.grams(x, "x")
        hess = terms.newton_matrix(gx, gs)
        hess.flat[m + 2::m + 2] += z / y[1:]  # the diagonal of hess[1:, 1:]
        fac = scaled_cholesky(hess)
        g = terms.constraint_values_of(gs)
        g[1:] += 1.0 / y[1:]
        gap = terms.inner(s_parts, x) + float(z @ y[1:])
        mu = gap / (n + m)
        infeasible = float(np.max(np.abs(c - terms.constraint_values_of(gx) - np.concatenate([[0.0], z]))))
        if gap <= rtol * abs(y[0]) and infeasible <= rtol:
            status = "converged"
            break
        if began + last > deadline:  # the next iteration would end past the deadline
            status = "time limit"
            break
        # predictor (sigma = 0), then Mehrotra's sigma and the corrector with its second-order term
        dy = scaled_solve(fac, -c)
        ds = terms.parts(dy, affine=False)
        dx = _sym_solve(s_fac, terms.times(dy, x, gx.wa, out=work))  # sym(S^{-1} dS X), then -X - that
        dx += x
        dx *= -1.0
        dz = -z - z * dy[1:] / y[1:]
        ap, ad = _primal_step(x_low, dx, z, dz, 1.0), _dual_step(terms, s_fac, ds, y, dy, 1.0)
        mu_aff = _affine_mu(terms, s_parts, ds, x, dx, z, dz, y, dy, ap, ad, n + m)
        sigma = min(SIGMA_MAX, (mu_aff / mu) ** 3)
        second = terms.times(dy, dx, terms.wt(dx, out=terms.buffer("wt", gx.wa.shape)), out=spare)  # dS_a dX_a
        lp_second = dz * dy[1:] / y[1:]
        rhs = sigma * mu * g - c - terms.solved_constraint_values(s_inv, gs, second)
        rhs[1:] -= lp_second
        dy = scaled_solve(fac, rhs)
        ds = terms.parts(dy, affine=False)
        dx = terms.times(dy, x, gx.wa, out=work)
        dx += second
        dx = _sym_solve(s_fac, dx)  # sigma mu S^{-1} - X - sym(S^{-1} (dS X + dS_a dX_a))
        dx += x
        np.subtract(np.multiply(s_inv, sigma * mu, out=spare), dx, out=spare)
        dx = spare
        dz = sigma * mu / y[1:] - z - z * dy[1:] / y[1:] - lp_second
        fraction = 0.9 + 0.09 * min(ap, ad)  # the predictor's steps: longer as the iterates near the optimum
        ap, ad = fraction * _primal_step(x_low, dx, z, dz, 1 / fraction), _dual_step(terms, s_fac, ds, y, dy, fraction)
        while (low := cholesky_or_none(_axpy(ap, dx, x, out=work))) is None:  # the Lanczos step was too long
            ap *= 0.8
        while (s_fac := terms.factor(y + ad * dy)) is None and ad > 1e-12:  # the Lanczos step was too long
            ad *= 0.8
        if s_fac is None:  # no step keeps N > 0: rounding; stop where we are
            status = "converged (rounding)"
            break
        x, work = work, x
        x_low, z, y = low, z + ap * dz, y + ad * dy
        s_parts = terms.parts(y)
        path.append(y)
        if on_iterate is not None:
            on_iterate(y)
        last = time.perf_counter() - began
    best = min(path, key=lambda p: p[0])
    offered = [best] + [p for p in path[-CANDIDATES - 1:] if p is not best][-CANDIDATES:]
    candidates = [(terms.expand(p[1:]), float(p[0])) for p in offered]
    return (terms.expand(best[1:]), float(best[0]), {"solver_status": status, "iterations": it,
                                                   "dual_rho": _dual_rho(terms, x), "candidates": candidates,
                                                   "margin": terms.margin})


def _primal_step(x_low: np.ndarray, dx: np.ndarray, z: np.ndarray, dz: np.ndarray, cap: float) -> float:
    """The largest step up to ``cap`` that keeps ``X + a dX > 0`` (Lanczos estimate) and ``z + a dz > 0``."""
    return min(1.0, psd_step(x_low, dx, ratio_step(z, dz, cap)))


def _dual_step(terms: RankTwoLMI, s_fac, ds: dict, y: np.ndarray, dy: np.ndarray, fraction: float) -> float:
    """``fraction`` of the largest step keeping ``N(y + a dy) > 0`` (Lanczos through the factor of
    ``N(y)``, an estimate that the caller checks by a factorisation) and ``t > 0``, at most 1."""
    cap = ratio_step(y[1:], dy[1:], 1.0 / fraction)
    return min(1.0, fraction * factor_step(s_fac, lambda w: terms.matmul(ds, w), terms.lmi.size, cap))


def _affine_mu(terms, s_parts, ds, x, dx, z, dz, y, dy, ap, ad, nu) -> float:
    """``(<X + ap dX, S + ad dS> + (z + ap dz).(t + ad dt)) / nu`` (expanded: no new ``n x n`` array)."""
    xs = terms.inner(s_parts, x) + ap * terms.inner(s_parts, dx) + ad * (terms.inner(ds, x) + ap * terms.inner(ds, dx))
    return (xs + float((z + ap * dz) @ (y[1:] + ad * dy[1:]))) / nu


def _sym_solve(fac, r: np.ndarray) -> np.ndarray:
    """``sym(N^{-1} R) = (N^{-1} R + R^T N^{-1}) / 2`` in the memory of ``r`` (module docstring, *Memory*)."""
    return symmetrize(fac.solve(r, overwrite=True))


def _axpy(a: float, dx: np.ndarray, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``x + a dx`` into ``out``."""
    np.multiply(dx, a, out=out)
    out += x
    return out


def _start(lmi: LipschitzLMI, terms: RankTwoLMI, t0: np.ndarray) -> np.ndarray:
    """``(rho, u)`` strictly inside the cone: the multipliers ``t0`` (their node means for the
    layer variant) and 1.1 times their least ``rho`` (with the solver's margin)."""
    u = np.array([float(t0[sl].mean()) for sl in terms.slices]) if terms.variant == "layer" else t0.copy()
    u = np.maximum(u, 1e-12 * max(float(u.max()), 1e-300))
    rho = lmi.schur(terms.expand(u), terms.margin).rho
    if not math.isfinite(rho):
        raise NotApplicable("the interior-point LipSDP solver needs multipliers whose neuron block is positive definite")
    y = np.concatenate([[rho + max(0.1 * abs(rho), 1e-6)], u])
    if not terms.inside(y):
        raise NotApplicable("the interior-point LipSDP solver could not factorise its starting point")
    return y


def _dual_rho(terms: RankTwoLMI, x: np.ndarray) -> float:
    """:func:`~lipbound.methods.lipsdp_dual.repaired_dual` of the Cholesky factor of ``X``."""
    try:
        low = sla.cholesky(x, lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return 0.0
    return repaired_dual(terms.lmi, low)
