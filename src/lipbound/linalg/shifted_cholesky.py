"""Certified bound of the largest eigenvalue of many Hermitian PSD matrices by a shifted Cholesky
factorisation (after Rump, "Verification of positive definiteness", BIT 2006).

**Certificate.** ``lambda_max(M) <= tau`` iff ``tau I - M`` is positive semidefinite. Let ``X`` be
the float64 (or complex128) matrix ``fl(tau I - M_hat)`` and suppose the floating-point Cholesky
factorisation of ``X`` runs to completion with factor ``R``. By Higham (2002), Theorem 10.3,
``R^* R = X + dX`` with ``|dX| <= g |R^*| |R|`` for any order of evaluation, ``g = gamma_{n+1}``
in real arithmetic; for complex arithmetic every elementary operation errs by at most
``sqrt(2) gamma_2`` (Higham, Lemma 3.5) and we take ``g = gamma_{4(n+1)}``. Then
``||dX||_2 <= g ||R||_F^2`` and ``||R||_F^2 = tr(X + dX) <= tr(X) + g ||R||_F^2``, so
``lambda_min(X) >= -||dX||_2 >= -g tr(X) / (1 - g) =: -eps`` since ``R^* R`` is PSD. The diagonal of
``X`` is rounded once, ``X = tau I - M_hat + D`` with ``|D_ii| <= u X_ii``; hence
``lambda_max(M_hat) <= tau + u max_i X_ii + eps``, and for the exact matrix ``M`` with
``||M_hat - M||_2 <= err`` (given by the caller, who formed ``M_hat``),
``lambda_max(M) <= tau + u max X_ii + eps + err``. LAPACK reads one triangle of ``X`` (and the
real part of its diagonal): it factorises the Hermitian matrix built from that triangle, which
differs from the exact ``M`` by at most ``sqrt(2)`` times the Frobenius error of ``M_hat``; ``err``
is therefore doubled there. Every term is rounded up.

**Search** (decides only which ``tau`` to try; never enters a bound). A block's Frobenius norm
plus ``err`` is a certified bound already; blocks below the current target need nothing more.
For the others, power iterations (batched, from a fixed start) give Rayleigh quotients ``theta``
(lower estimates); ``tau = max theta (1 + 2 rtol)`` is tried on every block at once; a block
whose factorisation fails gets its own ``tau`` from its largest eigenvalue (``eigvalsh``, an
estimate) and one more try; a block failing again keeps its Frobenius bound.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["max_eigenvalue_bound", "EigBound"]

_U64 = 2.0 ** -53
_UP = 1 + 2.0 ** -50
POWER_STEPS = 20  # power iterations per block for the estimates that choose tau


def _gamma(j: int) -> float:
    return j * _U64 / (1 - j * _U64)


class EigBound(NamedTuple):
    """``value >= max_b lambda_max(M_b)`` (certified), ``estimate`` (the largest Rayleigh quotient
    found, ``<=`` the largest eigenvalue of the computed matrices), and how many blocks were
    factorised and how many fell back to their Frobenius bound."""

    value: float
    estimate: float
    factorised: int
    fallback: int


def _certify(mats: torch.Tensor, tau: torch.Tensor, err: float) -> torch.Tensor:
    """Per block: the certified bound for ``tau`` (module docstring) when the Cholesky
    factorisation of ``fl(tau I - M_hat)`` succeeds, else ``inf``."""
    n = mats.shape[-1]
    x = -mats
    diag = x.diagonal(dim1=-2, dim2=-1)
    diag += tau[:, None].to(diag.dtype)
    _, info = torch.linalg.cholesky_ex(x)
    g = _gamma(4 * (n + 1) if mats.is_complex() else n + 1)
    d = diag.real if diag.is_complex() else diag
    trace = d.clamp_min(0).sum(-1) * _UP * _UP
    eps = g / (1 - g) * trace * _UP
    bound = (tau + _U64 * d.amax(-1) * _UP + eps + 2 * err) * _UP * _UP
    return torch.where(info == 0, bound, torch.full_like(bound, math.inf))


def _frobenius_up(mats: torch.Tensor) -> torch.Tensor:
    terms = 2 * mats.shape[-1] * mats.shape[-2]
    real = torch.view_as_real(mats) if mats.is_complex() else mats
    return torch.linalg.vector_norm(real.reshape(mats.shape[0], -1), dim=-1) * (1 + _gamma(terms + 4)) * _UP


def _rayleigh(mats: torch.Tensor, steps: int = POWER_STEPS) -> torch.Tensor:
    """Rayleigh quotients after ``steps`` power iterations from a fixed start (estimates)."""
    n = mats.shape[-1]
    x = torch.ones(mats.shape[0], n, 1, dtype=mats.dtype, device=mats.device)
    x += torch.arange(n, dtype=torch.float64, device=mats.device).reshape(1, n, 1).mul(0.618).remainder(1)
    for _ in range(steps):
        x = mats @ x
        x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    q = (x.mH @ mats @ x).real.reshape(-1)
    return torch.nan_to_num(q, nan=0.0)


def max_eigenvalue_bound(mats: torch.Tensor, err: float, rtol: float = 1e-4, floor: float = 0.0) -> EigBound:
    """A certified upper bound of ``max_b lambda_max(M_b)`` for Hermitian PSD matrices ``M_b``
    known through computed ``mats`` ``(B, n, n)`` (float64 or complex128) with
    ``||mats_b - M_b||_2 <= err`` for every block (module docstring).

    ``rtol``: the target, relative on the square root (the bound is aimed at
    ``(1 + 2 rtol)`` times the largest eigenvalue). ``floor``: a value already certified elsewhere
    (earlier chunks of the same operator): blocks whose Frobenius bound is below it need nothing.
    """
    fro = _frobenius_up(mats) + err
    bounds = fro.clone()
    open_ = fro > floor
    if not bool(open_.any()):
        return EigBound(float(bounds.max()), 0.0, 0, 0)
    idx = open_.nonzero().reshape(-1)
    theta = _rayleigh(mats if bool(open_.all()) else mats[idx])
    estimate = float(theta.max())
    target = max(estimate * (1 + 2 * rtol), floor)
    need = fro[idx] > target
    idx, theta = idx[need], theta[need]
    factorised = int(idx.numel())
    if factorised:
        tau = torch.full((factorised,), target, dtype=torch.float64, device=mats.device)
        got = _certify(mats if factorised == mats.shape[0] else mats[idx], tau, err)
        failed = ~torch.isfinite(got)
        if bool(failed.any()):
            redo = idx[failed]
            lam = torch.linalg.eigvalsh(mats[redo])[:, -1].to(torch.float64)
            estimate = max(estimate, float(lam.max()))
            tau2 = torch.maximum(lam * (1 + 2 * rtol) + 1e-12 * lam.abs().max(), tau[failed])
            got[failed] = _certify(mats[redo], tau2, err)
        bounds[idx] = torch.minimum(got, fro[idx])
        fallback = int((~torch.isfinite(got)).sum())
    else:
        fallback = 0
    return EigBound(float(bounds.max()), estimate, factorised, fallback)
