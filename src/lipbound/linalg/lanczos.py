"""Lanczos on ``A^T A``: the top singular value of an operator, from below (DESIGN §3).

**What it computes.** Lanczos builds a basis ``Q_j`` of the Krylov space
``span(q, M q, ..., M^{j-1} q)`` of ``M = A^T A`` (one forward and one backward pass of ``A``
per step, :meth:`~lipbound.linalg.linear_operator.LinearOperator.gram`) by the three-term
recurrence, each new vector orthogonalised once more against the current one (*local*
reorthogonalisation, Paige's variant). The Ritz value ``theta``, the largest eigenvalue of the
tridiagonal ``T_j``, is in exact arithmetic the largest Rayleigh quotient of ``M`` over the
Krylov space, so ``theta <= lambda_max(M) = ||A||_2^2`` (Courant–Fischer): a **lower bound**,
never a certificate. It approaches ``||A||^2`` far faster than the power method: after ``j``
steps its error falls like ``T_{j}(1 + 2 gap)^{-2}`` (Chebyshev polynomial; Kaniel–Paige–Saad)
instead of ``(sigma_2 / sigma_1)^{2 j}``.

**No full reorthogonalisation.** In floating point the basis loses orthogonality only in the
directions of Ritz vectors that have converged, and the Ritz values of the computed ``T_j`` stay
within ``O(u ||M||)`` of the spectrum's range (Paige 1976, 1980; Greenbaum 1989): the top Ritz
value converges as in exact arithmetic, later "ghost" copies of it do not move it. Orthogonalising
every new vector against the whole basis (the previous version) gave the same values on AlexNet's
convolutions (to ``1e-6``) but read the basis two to four times per step, a memory-bound cost that
was as large as the operator's own on small convolutions.

The value returned does not rest on the orthogonality of the basis either: it is ``||A x||`` for
the unit vector ``x = Q_j s / ||Q_j s||`` (``s`` the top eigenvector of ``T_j``) re-applied to the
operator, a Rayleigh quotient of a real vector that anyone can re-check with one forward pass
(``||A x|| <= ||A|| ||x||``).

**Stopping** (deterministic: a seeded start, step counts and tolerances; a wall-clock deadline
only caps them). Step ``j`` gives the residual ``r = ||M x - theta x|| = beta_j |s_j|``: some
eigenvalue of ``M`` lies within ``r`` of ``theta`` (the sharper ``r^2 / gap`` with the Ritz gap is
not used: on a rank-deficient matrix it stopped two steps in, on the second singular value).
The iteration stops (``stopped_by="converged"``) when ``r`` is below
``2 tol theta`` (``tol`` relative on ``sigma``, hence ``2 tol`` on ``sigma^2``), or when the gain
of ``sqrt(theta)`` over the last :data:`SETTLE_WINDOW` steps and the gain a geometric convergence
at the observed rate still predicts are both below ``tol`` (the power method's rule, on windows:
on a clustered top of the spectrum ``r`` falls slowly; windows of 8 steps, not 5, because the
rate measured on 5 steps misjudged AlexNet's first convolution, whose top two singular values are
``5e-4`` apart, and stopped it at an error of ``1.2e-4``), after ``max_iter``
steps (``"iterations"``), when the Krylov space is invariant (``beta = 0``: ``theta`` is then an
eigenvalue, ``"converged"``) or at the deadline (``"time"``). The estimate only decides when to
stop; the value is a lower bound in every case. No rule that sees only the Krylov space can
tell a plateau from convergence: when the top value stands alone a little above a dense
continuum (``2e-4`` above, on random ``250 x 200`` matrices), the Ritz value first settles on the
continuum and the rule can stop there, ``1-3`` times that gap short at ``tol=1e-4`` or ``1e-5``
(``tests/test_lanczos.py``); the certified upper bound is what brackets the norm. A basis larger than ``max_basis`` vectors restarts
from the current Ritz vector (explicit restart; the Ritz value never decreases).

:func:`lanczos_max_eig` runs the same recurrence on a batch of explicit Hermitian matrices (the
Gram blocks of a convolution, the Gram matrix of a dense weight) for a fixed number of steps, in
the matrices' dtype, with full reorthogonalisation (cheap there: the blocks are small)
(complex64/float32 is enough: its values only choose the shift of the
shifted-Cholesky certificate, :mod:`lipbound.linalg.shifted_cholesky`, and never enter a bound).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .linear_operator import LinearOperator


@dataclass
class PowerResult:
    """Outcome of :func:`~lipbound.linalg.spectral.power_method` and :func:`lanczos_norm`: ``sigmas`` (top Ritz values, descending, each a lower
    bound of the matching singular value), ``u``/``v`` the matching left/right vectors
    (``(k, *out_shape)`` / ``(k, *in_shape)``, unit norm), ``iterations`` and ``converged``."""

    sigmas: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    iterations: int
    converged: bool
    stopped_by: str = ""  # "converged", "iterations" or "time" (see :func:`lanczos_norm`)

    @property
    def sigma(self) -> float:
        return float(self.sigmas[0])

__all__ = ["lanczos_norm", "lanczos_max_eig", "LANCZOS_MAX_BASIS_NUMEL"]

LANCZOS_MAX_BASIS_NUMEL = 1 << 26  # basis entries kept for the Ritz vector (then restart)
SETTLE_WINDOW = 8  # steps per window of the geometric stopping rule (:func:`_settled`)


def _ritz(alpha: list[float], beta: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of the tridiagonal matrix, in float64."""
    j = len(alpha)
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if j > 1:
        off = torch.tensor(beta[: j - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    vals, vecs = torch.linalg.eigh(t)
    return vals.flip(0), vecs.flip(1)


def _settled(sigmas: list[float], tol: float, window: int = SETTLE_WINDOW) -> bool:
    """The top Ritz value's gain over the last ``window`` steps, ``d``, and the gain it predicts
    for the rest of a geometric convergence, ``d r / (1 - r)`` with ``r`` the ratio of the last
    two windows' gains, are both at most ``tol`` (relative)."""
    if len(sigmas) < 2 * window + 1 or len(sigmas) % window:
        return False
    s, mid, old = sigmas[-1], sigmas[-1 - window], sigmas[-1 - 2 * window]
    d, d_prev = (s - mid) / s, (mid - old) / s
    rate = min(d / d_prev, 0.999) if d_prev > 0 else 0.0
    return d <= tol and d * rate / (1 - rate) <= tol


def lanczos_norm(op: LinearOperator, *, max_iter: int = 300, tol: float = 1e-5,
                 v0: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 deadline: float = math.inf, max_basis: int | None = None):
    """The top singular value of ``op`` from below, with its singular vectors (module docstring).

    Args:
        op: the operator (only ``gram`` and one final ``gram`` on the Ritz vector are used).
        max_iter: at most this many Lanczos steps (``gram`` calls), restarts included.
        tol: target relative accuracy of ``sigma`` (``0``: run ``max_iter`` steps).
        v0: start vector (shape ``in_shape`` or ``(1, *in_shape)``); else a seeded random one.
        generator: random generator of the start vector.
        deadline: a ``time.perf_counter()`` value; no step starts after it.
        max_basis: basis vectors kept before an explicit restart (default: what fits in
            :data:`LANCZOS_MAX_BASIS_NUMEL` entries, at least 8).

    Returns a :class:`PowerResult` with one value (``sigmas[0] = ||A x||``
    for the unit Ritz vector ``x``), ``u = A x / ||A x||``, ``v = x``, the number of ``gram`` calls
    and ``stopped_by``.
    """

    if max_iter < 1 or tol < 0:
        raise ValueError(f"max_iter must be >= 1 and tol >= 0, got {max_iter}, {tol}")
    n = op.in_numel
    if max_basis is None:
        max_basis = max(8, LANCZOS_MAX_BASIS_NUMEL // max(n, 1))
    max_basis = max(2, min(max_basis, n))
    if v0 is not None:
        q = v0.reshape(-1)[:n].to(dtype=op.dtype, device=op.device).clone()
    else:
        q = torch.randn(n, generator=generator, dtype=torch.float64).to(dtype=op.dtype, device=op.device)
    x = q / q.norm().clamp_min(1e-300)
    steps, stopped_by = 0, "iterations"
    while steps < max_iter and stopped_by == "iterations":
        x, used, stopped_by = _lanczos_run(op, x, min(max_basis, max_iter - steps), tol, deadline)
        steps += used
        if stopped_by == "restart":
            stopped_by = "iterations"
    y, _ = op.gram(x.reshape(1, *op.in_shape))
    sigma = y.norm()
    u = y / sigma.clamp_min(1e-300)
    return PowerResult(sigma.detach().reshape(1).to(torch.float64), u.reshape(1, *op.out_shape),
                       x.reshape(1, *op.in_shape), steps + 1, stopped_by == "converged", stopped_by)


def _lanczos_run(op: LinearOperator, q: torch.Tensor, steps: int, tol: float,
                 deadline: float) -> tuple[torch.Tensor, int, str]:
    """One Lanczos run of at most ``steps`` steps from the unit vector ``q``; returns the unit
    Ritz vector, the steps taken and why it stopped (``"restart"`` when ``steps`` ran out)."""
    basis = torch.empty((steps, q.numel()), dtype=q.dtype, device=q.device)
    alpha: list[float] = []
    beta: list[float] = []
    sigmas: list[float] = []
    reason = "restart"
    j = 0
    for j in range(1, steps + 1):
        if time.perf_counter() >= deadline:
            reason, j = "time", j - 1
            break
        basis[j - 1] = q
        _, w = op.gram(q.reshape(1, *op.in_shape))
        w = w.reshape(-1).clone()
        if j > 1:
            w.sub_(basis[j - 2], alpha=beta[-1])
        a = float(q @ w)
        w.sub_(q, alpha=a)  # the three-term recurrence
        c = float(q @ w)
        w.sub_(q, alpha=c)  # local reorthogonalisation (module docstring)
        alpha.append(a + c)
        b = float(w.norm())
        beta.append(b)
        vals, vecs = _ritz(alpha, beta)
        theta = float(vals[0])
        resid = b * abs(float(vecs[-1, 0]))
        sigmas.append(math.sqrt(max(theta, 0.0)))
        if b <= 1e-12 * max(abs(theta), 1e-300) or (tol > 0 and j > 1 and (
                resid <= 2 * tol * abs(theta) or _settled(sigmas, tol))):
            reason = "converged"
            break
        q = w / b
    if j == 0:
        return q, 0, reason
    _, vecs = _ritz(alpha, beta)
    x = vecs[:, 0].to(basis.dtype) @ basis[:j]
    return x / x.norm().clamp_min(1e-300), j, reason


def lanczos_max_eig(mats: torch.Tensor, steps: int) -> torch.Tensor:
    """The largest Ritz value of each Hermitian matrix of ``mats`` ``(B, n, n)`` after
    ``min(steps, n)`` Lanczos steps from a fixed start (the same for every block: repeatable),
    with full reorthogonalisation; float64, shape ``(B,)``. In exact arithmetic each value is a
    Rayleigh quotient, hence ``<= lambda_max`` of its block: an estimate from below, used only to
    choose shifts. An invariant Krylov space (``beta = 0``) stops a block's recurrence: its
    later vectors are zero and add zero rows and columns to ``T``, which leave its top eigenvalue."""
    b, n, _ = mats.shape
    steps = max(1, min(steps, n))
    real = mats.real.dtype if mats.is_complex() else mats.dtype
    q = 1 + torch.arange(n, dtype=torch.float64, device=mats.device).mul(0.618).remainder(1)
    q = (q / q.norm()).to(mats.dtype).expand(b, n).clone()
    basis = torch.zeros((b, steps, n), dtype=mats.dtype, device=mats.device)
    alpha = torch.zeros((b, steps), dtype=real, device=mats.device)
    beta = torch.zeros((b, steps), dtype=real, device=mats.device)
    scale = torch.zeros(b, dtype=real, device=mats.device)  # the largest |alpha|, beta so far: the breakdown scale
    for j in range(steps):
        basis[:, j] = q
        w = (q[:, None, :] @ mats.mT)[:, 0]  # M q as a row times M^T: 4x faster than a batched matrix-vector product here
        alpha[:, j] = (q.conj() * w).sum(-1).real
        for _ in range(2):  # "twice is enough" (full reorthogonalisation against the whole basis)
            w = w - ((w[:, None, :] @ basis[:, : j + 1].mH) @ basis[:, : j + 1])[:, 0]
        beta[:, j] = torch.linalg.vector_norm(torch.view_as_real(w).flatten(-2) if w.is_complex() else w, dim=-1)  # complex norms are 15x slower
        scale = torch.maximum(scale, torch.maximum(alpha[:, j].abs(), beta[:, j]))
        alive = beta[:, j] > 1e-6 * scale
        beta[:, j] = torch.where(alive, beta[:, j], torch.zeros_like(beta[:, j]))
        q = torch.where(alive[:, None], w / beta[:, j, None].clamp_min(torch.finfo(real).tiny), torch.zeros_like(w))
    t = torch.diag_embed(alpha.to(torch.float64))
    if steps > 1:
        off = beta[:, : steps - 1].to(torch.float64)
        t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.nan_to_num(torch.linalg.eigvalsh(t)[:, -1], nan=0.0)
