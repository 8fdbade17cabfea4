"""Spectral norms of linear operators (DESIGN §3).

* :func:`power_method` — the paper's Algorithm 2 run through autograd, as a *block* power
  method with Rayleigh–Ritz: ``V <- orth(A^T A V)`` on ``k`` vectors at once, stopped when the
  top Ritz values change by less than ``tol`` (relative). For an orthonormal ``V`` the Ritz
  values, the singular values of ``A V``, are lower bounds of the top ``k`` singular values of
  ``A`` (Courant–Fischer), so the returned ``sigma`` never exceeds ``||A||_2`` (up to rounding).
  ``k = 1`` is the plain power method; larger blocks converge at rate ``(s_{k+1}/s_1)^2`` per
  step instead of ``(s_2/s_1)^2`` and give the top-``k`` singular triplets (for SeqLip top-k).
* :func:`certified_norm` — a number ``>= ||A||_2`` by proof: the SVD of the materialised matrix
  (float64) when it is small enough (from a smaller side of
  :data:`~lipbound.linalg.dense_gram.CHOLESKY_MIN_SIDE` on, the shifted-Cholesky certificate on
  its Gram matrix instead, :mod:`lipbound.linalg.dense_gram`: not exact, within ``1e-4``), otherwise the operator's structural bound (DFT bound for
  convolutions, exact per-axis norms for pooling/resizing/padding, products for compositions),
  computed from the operator's own tensors. The value is multiplied by
  ``1 + CERTIFIED_RTOL`` to cover float64 rounding, which is far below that margin for every
  computation used here.
* :func:`operator_norms` — both ends for one operator (:func:`lipbound.spectral_norm` takes modules too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .lanczos import PowerResult, lanczos_norm
from .dense_gram import matrix_norm_bound
from .operators import Dense, LinearOperator, StructuralBound

CERTIFIED_RTOL = 1e-9
DENSE_LIMIT = 1 << 22  # materialise (SVD or Gram + Cholesky) when out_numel * in_numel <= this


def _check_args(k: int, max_iter: int, tol: float) -> None:
    if k < 1:
        raise ValueError(f"block size k must be >= 1, got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def _orthonormal_rows(m: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(m.T)
    return q.T


def power_method(op: LinearOperator, *, k: int = 1, max_iter: int = 1000, tol: float = 1e-5,
                 v0: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 n_converged: int = 1) -> PowerResult:
    """Top singular values of ``op`` by block power iteration with Rayleigh–Ritz.

    Args:
        op: the operator (only ``gram`` is used: one forward and one backward pass per step).
        k: block size, the number of vectors iterated together (``k = 1`` is Algorithm 2).
        max_iter: at most this many steps.
        tol: target relative accuracy of the top ``n_converged`` values. The iteration stops when
            the last relative change ``d_t`` and the remaining error it predicts for a geometric
            convergence, ``d_t r / (1 - r)`` with the observed rate ``r = d_t / d_{t-1}``, are both
            below ``tol`` (a slowly converging layer is not stopped early just because one step
            changed little). ``tol = 0`` runs all ``max_iter`` steps.
        v0: start vectors ``(k', *in_shape)`` (warm start; completed with random ones to ``k``).
        generator: random generator for the start vectors (repeatable runs).
        n_converged: how many of the top values must have settled before stopping.
    """
    _check_args(k, max_iter, tol)
    n = op.in_numel
    k = min(k, n, op.out_numel)
    start = torch.randn((k, n), generator=generator, dtype=torch.float64).to(op.dtype).to(op.device)
    if v0 is not None:
        v0 = v0.reshape(-1, n)[:k].to(start)
        start[: v0.shape[0]] = v0
    v = _orthonormal_rows(start)
    prev = None
    prev_change = math.inf
    converged = False
    it = 0
    m = min(n_converged, k)
    for it in range(1, max_iter + 1):
        y, z = op.gram(v.reshape(k, *op.in_shape))
        y = y.reshape(k, -1)
        p, s, qh = torch.linalg.svd(y, full_matrices=False)  # y = p diag(s) qh: rows of y are A v_i
        v_ritz = p.T @ v  # A v_ritz_i = s_i qh_i
        if prev is not None:
            change = ((s[:m] - prev[:m]).abs() / s[:m].clamp_min(1e-300)).max().item()
            rate = min(change / prev_change, 0.999) if prev_change > 0 else 0.0
            if tol > 0 and change <= tol and change * rate / (1 - rate) <= tol:
                converged = True
                break
            prev_change = change
        prev = s
        v = _orthonormal_rows(p.T @ z.reshape(k, -1)) if k > 1 else z.reshape(1, -1) / z.norm().clamp_min(1e-300)
    return PowerResult(s.detach(), qh.reshape(-1, *op.out_shape), v_ritz.reshape(-1, *op.in_shape), it, converged,
                       "converged" if converged else "iterations")


@dataclass
class CertifiedNorm:
    value: float
    how: str
    exact: bool


def certified_norm(op: LinearOperator, dense_limit: int = DENSE_LIMIT) -> CertifiedNorm:
    """A certified upper bound of ``||op||_2`` (see the module docstring), computed on the
    operator in float64 (for a fold of lower-precision layers: the unrounded fold)."""
    if op.dtype != torch.float64:
        op = op.to(dtype=torch.float64)
    sb: StructuralBound | None = op.structural_bound()
    if sb is not None and (sb.exact or isinstance(op, Dense)):  # a dense map's matrix is its weight: no tighter
        return CertifiedNorm(sb.value * (1 + CERTIFIED_RTOL), sb.how, sb.exact)
    if op.in_numel * op.out_numel <= dense_limit:
        b = matrix_norm_bound(op.to(dtype=torch.float64).to_dense(), Dense.method, "materialised matrix")
        return CertifiedNorm(b.value * (1 + CERTIFIED_RTOL), b.how, b.exact)
    if sb is None:
        return CertifiedNorm(math.inf, f"no certified bound for {op.label} of this size", False)
    return CertifiedNorm(sb.value * (1 + CERTIFIED_RTOL), sb.how, False)


@dataclass
class SpectralNorm:
    """Both ends of one operator norm: ``lower`` (power method, ``<= ||A||``) and ``upper``
    (certified, ``>= ||A||``); ``ratio = upper / lower``. An end that was not asked for (see
    :func:`operator_norms`) is None."""

    lower: float | None
    upper: float | None
    how: str
    exact: bool
    iterations: int
    v: torch.Tensor | None = field(default=None, repr=False)
    u: torch.Tensor | None = field(default=None, repr=False)

    @property
    def ratio(self) -> float:
        if self.lower is None or self.upper is None:
            return math.nan
        return self.upper / self.lower if self.lower > 0 else math.inf


def _cached_certified(op: LinearOperator, dense_limit: int) -> CertifiedNorm:
    cache = op.norm_cache()
    key = ("certified", dense_limit)
    if key not in cache:
        cache[key] = certified_norm(op, dense_limit)
    return cache[key]


def _known_exact(op: LinearOperator) -> CertifiedNorm | None:
    """An exact certified norm already computed for ``op``, if any."""
    return next((c for key, c in op.norm_cache().items() if key[0] == "certified" and c.exact), None)


def _cached_power(op: LinearOperator, generator, k: int, max_iter: int, tol: float) -> PowerResult:
    """The lower end: Lanczos (:func:`~lipbound.linalg.lanczos.lanczos_norm`) for ``k = 1``, the
    block power method on ``k`` vectors otherwise."""
    cache = op.norm_cache()
    key = ("power", k, max_iter, tol)
    if key not in cache:
        if k == 1:
            cache[key] = lanczos_norm(op, max_iter=max_iter, tol=tol, generator=generator)
        else:
            cache[key] = power_method(op, k=k, max_iter=max_iter, tol=tol, generator=generator)
    return cache[key]


def operator_norms(op: LinearOperator, *, which: str = "both", generator: torch.Generator | None = None,
                   k: int = 1, max_iter: int = 1000, tol: float = 1e-5,
                   dense_limit: int = DENSE_LIMIT) -> SpectralNorm:
    """Power-method (``lower``) and/or certified (``upper``) norm of one operator, cached on it
    (:meth:`~lipbound.linalg.operators.LinearOperator.norm_cache`: the memo does not outlive the
    operator's tensors).

    ``which`` is ``"both"``, ``"certified"`` (no power iteration: certified AutoLip needs none) or
    ``"power"`` (no certified computation). The lower end is Lanczos on ``A^T A`` (``k = 1``, the
    default: a Ritz value, ``<= ||A||``) or the block power method on ``k > 1`` vectors. An exact certified value (SVD of the matrix, diagonal,
    isometry) is also the lower value (without the rounding margin): no power iteration then.
    """
    if which not in ("both", "certified", "power"):
        raise ValueError(f"which must be 'both', 'certified' or 'power', got {which!r}")
    cert = _cached_certified(op, dense_limit) if which != "power" else _known_exact(op)
    if cert is not None and cert.exact:
        return SpectralNorm(cert.value / (1 + CERTIFIED_RTOL), cert.value, cert.how, True, 0)
    if which == "certified":
        return SpectralNorm(None, cert.value, cert.how, False, 0)
    pm = _cached_power(op, generator, k, max_iter, tol)
    upper = None if cert is None else cert.value
    return SpectralNorm(pm.sigma, upper, "" if cert is None else cert.how, False, pm.iterations, pm.v[0], pm.u[0])
