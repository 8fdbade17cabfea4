"""Certified bound of the largest eigenvalue of many Hermitian PSD matrices by a shifted Cholesky
factorisation (after Rump, "Verification of positive definiteness", BIT 2006).

**Certificate.** ``lambda_max(M) <= tau`` iff ``tau I - M`` is positive semidefinite. Let ``X`` be
the matrix ``fl(tau I - M_hat)`` in a floating-point format of unit roundoff ``u`` (float64 or
complex128: ``u = 2^-53``; float32 or complex64: ``u = 2^-24``), ``tau`` a number of that format,
and suppose the floating-point Cholesky
factorisation of ``X`` runs to completion with factor ``R``. By Higham (2002), Theorem 10.3,
``R^* R = X + dX`` with ``|dX| <= g |R^*| |R|`` for any order of evaluation, ``g = gamma_{n+1}``
in real arithmetic; for complex arithmetic every elementary operation errs by at most
``sqrt(2) gamma_2`` (Higham, Lemma 3.5) and we take ``g = gamma_{4(n+1)}`` (``gamma_j = j u / (1 - j u)``). Then
``||dX||_2 <= g ||R||_F^2`` and ``||R||_F^2 = tr(X + dX) <= tr(X) + g ||R||_F^2``, so
``lambda_min(X) >= -||dX||_2 >= -g tr(X) / (1 - g) =: -eps`` since ``R^* R`` is PSD. The diagonal of
``X`` is rounded once, ``X = tau I - M_hat + D`` with ``|D_ii| <= u X_ii``; hence
``lambda_max(M_hat) <= tau + u max_i X_ii + eps``, and for the exact matrix ``M`` with
``||M_hat - M||_F <= err`` (given by the caller, who formed ``M_hat``),
``lambda_max(M) <= tau + u max X_ii + eps + err``. LAPACK reads one triangle of ``X`` (and the
real part of its diagonal): it factorises the Hermitian matrix built from that triangle, which
differs from the exact ``M`` by at most ``sqrt(2)`` times the Frobenius error of ``M_hat``; ``err``
is therefore doubled there. Every term is rounded up (``tr(X)`` is summed in float64 and
multiplied by ``1 + gamma_n``).

**Single precision.** A block well below the target is certified in single precision: ``M_hat``
(scaled by a power of two ``2^-e`` when its entries would leave the float32 range, exact in
float64) is rounded to complex64/float32, which moves it by at most ``u_32 ||M_hat||_F`` plus
``2 n 2^-149`` (subnormals) in Frobenius norm: that is added to ``err``, and the certificate above
runs with ``u = 2^-24`` at a shift of :data:`SINGLE_SHIFT` times the target; the result is
multiplied back by ``2^e``. Its rounding terms (``g tr(X)``, about ``4 n^2 u_32 tau``: ``1.6%``
of ``tau`` at ``n = 256``) fit in the room left below the target. It about halves the cost of
the factorisation of such a block. Which blocks qualify depends on the kernel: none of a random
kernel's (its frequency blocks all lie within ~7% of the top, measured on a 256-channel 3x3
convolution), those away from the peak of a kernel whose spectrum is peaked.

**Search** (decides only which ``tau`` to try; never enters a bound). A block's Frobenius norm
plus ``err`` is a certified bound already; blocks below the current target need nothing more.
For the others, Lanczos (batched, from a fixed start, in single precision:
:func:`~lipbound.linalg.lanczos.lanczos_max_eig`; a few steps on every block, more on the
few ranked highest) gives Ritz values ``theta`` (lower estimates, up to the single-precision
rounding); ``tau = max theta (1 + 2 rtol)``
is tried on every block at once (blocks with ``theta`` below :data:`SINGLE_BELOW` times it in single
precision first, at a lower shift; a failure there sends the block to float64); a block
whose factorisation fails gets its own ``tau`` from its largest eigenvalue (``eigvalsh``, an
estimate) and one more try; a block failing again keeps its Frobenius bound.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .float_units import U32, UP, gamma
from .lanczos import lanczos_max_eig

__all__ = ["max_eigenvalue_bound", "EigBound"]

LANCZOS_STEPS = 6  # Lanczos steps on every block: estimates that rank the blocks
REFINE_BLOCKS = 8  # the blocks ranked highest ...
REFINE_STEPS = 32  # ... get this many steps: their largest Ritz value chooses tau
SINGLE_BELOW = 0.8  # blocks estimated below this fraction of the target: single-precision certificate
SINGLE_SHIFT = 0.9  # ... with tau at this fraction of the target (room for its rounding terms)


class EigBound(NamedTuple):
    """``value >= max_b lambda_max(M_b)`` (certified), ``estimate`` (the largest Ritz value
    found, ``<=`` the largest eigenvalue of the computed matrices up to single-precision rounding),
    and how many blocks were factorised and how many fell back to their Frobenius bound."""

    value: float
    estimate: float
    factorised: int
    fallback: int


def _certify(mats: torch.Tensor, tau: torch.Tensor, err: torch.Tensor | float) -> torch.Tensor:
    """Per block: the certified bound (float64) for the shift ``tau`` rounded to the blocks' format
    (module docstring) when the Cholesky factorisation of ``fl(tau I - M_hat)`` succeeds, else
    ``inf``. ``err``: per block or one for all, ``>= ||M_hat - M||_F``."""
    n = mats.shape[-1]
    real = mats.real.dtype if mats.is_complex() else mats.dtype
    u = torch.finfo(real).eps / 2
    tau = tau.to(real)
    x = -mats
    diag = x.diagonal(dim1=-2, dim2=-1)
    diag += tau[:, None]
    _, info = torch.linalg.cholesky_ex(x)
    g = gamma(4 * (n + 1) if mats.is_complex() else n + 1, u)
    d = (diag.real if diag.is_complex() else diag).to(torch.float64)
    trace = d.clamp_min(0).sum(-1) * (1 + gamma(n)) * UP
    eps = g / (1 - g) * trace * UP
    bound = (tau.to(torch.float64) + u * d.amax(-1) * UP + eps + 2 * err) * UP * UP
    return torch.where(info == 0, bound, torch.full_like(bound, math.inf))


def _frobenius_up(mats: torch.Tensor) -> torch.Tensor:
    terms = 2 * mats.shape[-1] * mats.shape[-2]
    real = torch.view_as_real(mats) if mats.is_complex() else mats
    return torch.linalg.vector_norm(real.reshape(mats.shape[0], -1), dim=-1) * (1 + gamma(terms + 4)) * UP


def _single(mats: torch.Tensor, fro: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The blocks in single precision, scaled by ``2^-e`` (``e = 0`` unless an entry would leave
    the float32 range), and ``e``. ``fro >= ||mats_b||_F`` bounds every entry."""
    e = math.frexp(float(fro.max()))[1]
    e = e if abs(e) > 60 else 0
    low = torch.complex64 if mats.is_complex() else torch.float32
    return (mats * 2.0 ** -e if e else mats).to(low), e


def _certify_single(low: torch.Tensor, e: int, fro: torch.Tensor, err: float, tau: float) -> torch.Tensor:
    """:func:`_certify` on the single-precision blocks ``low`` (``2^-e`` times the computed ones),
    at ``tau``, with the rounding to single precision added to ``err`` (module docstring); the
    bounds are those of the unscaled exact blocks."""
    s = 2.0 ** -e
    n = low.shape[-1]
    err_s = ((err * s + U32 * fro * s) * UP + 2 * n * 2.0 ** -149) * UP
    shift = torch.full((low.shape[0],), tau * s, dtype=torch.float64, device=low.device)
    return _certify(low, shift, err_s) * 2.0 ** e


def _estimates(low: torch.Tensor, steps: int, refine_steps: int, floor: float) -> torch.Tensor:
    """Ritz values of the blocks: ``steps`` Lanczos steps on all, ``refine_steps`` on the
    :data:`REFINE_BLOCKS` ranked highest among those whose estimate is above ``floor`` (the
    largest of the two values for those)."""
    if low.shape[0] <= REFINE_BLOCKS:
        return lanczos_max_eig(low, max(steps, refine_steps))
    theta = lanczos_max_eig(low, steps)
    above = int((theta > floor).sum())
    if refine_steps > steps and above:
        top = theta.topk(min(REFINE_BLOCKS, above)).indices
        theta[top] = torch.maximum(theta[top], lanczos_max_eig(low[top], refine_steps))
    return theta


def max_eigenvalue_bound(mats: torch.Tensor, err: float, rtol: float = 1e-4, floor: float = 0.0,
                         steps: int = LANCZOS_STEPS, refine_steps: int = REFINE_STEPS) -> EigBound:
    """A certified upper bound of ``max_b lambda_max(M_b)`` for Hermitian PSD matrices ``M_b``
    known through computed ``mats`` ``(B, n, n)`` (float64 or complex128) with
    ``||mats_b - M_b||_F <= err`` for every block (module docstring).

    ``rtol``: the target, relative on the square root (the bound is aimed at
    ``(1 + 2 rtol)`` times the largest eigenvalue). ``floor``: a value already certified elsewhere
    (earlier chunks of the same operator): blocks whose Frobenius bound is below it need nothing.
    ``steps``, ``refine_steps``: Lanczos steps of the estimates (:func:`_estimates`; more for one
    large matrix with a clustered top).
    """
    fro = _frobenius_up(mats) + err
    bounds = fro.clone()
    open_ = fro > floor
    if not bool(open_.any()):
        return EigBound(float(bounds.max()), 0.0, 0, 0)
    idx = open_.nonzero().reshape(-1)
    low, e = _single(mats if bool(open_.all()) else mats[idx], fro[idx])
    theta = _estimates(low, steps, refine_steps, floor * 2.0 ** -e) * 2.0 ** e
    estimate = float(theta.max())
    target = max(estimate * (1 + 2 * rtol), floor)
    need = fro[idx] > target
    idx, theta, low = idx[need], theta[need], low[need]
    factorised = int(idx.numel())
    cheap = theta <= SINGLE_BELOW * target
    if bool(cheap.any()):
        got = _certify_single(low[cheap], e, fro[idx[cheap]], err, SINGLE_SHIFT * target)
        done = got <= target
        bounds[idx[cheap][done]] = got[done]
        idx = torch.cat([idx[~cheap], idx[cheap][~done]]).sort().values
    del low
    fallback = 0
    if idx.numel():
        tau = torch.full((idx.numel(),), target, dtype=torch.float64, device=mats.device)
        got = _certify(mats if idx.numel() == mats.shape[0] else mats[idx], tau, err)
        failed = ~torch.isfinite(got)
        if bool(failed.any()):
            redo = idx[failed]
            lam = torch.linalg.eigvalsh(mats[redo])[:, -1].to(torch.float64)
            estimate = max(estimate, float(lam.max()))
            tau2 = torch.maximum(lam * (1 + 2 * rtol) + 1e-12 * lam.abs().max(), tau[failed])
            got[failed] = _certify(mats[redo], tau2, err)
        bounds[idx] = torch.minimum(got, fro[idx])
        fallback = int((~torch.isfinite(got)).sum())
    return EigBound(float(bounds.max()), estimate, factorised, fallback)
