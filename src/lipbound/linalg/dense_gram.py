"""Certified spectral norm of a dense matrix without an SVD: a shifted-Cholesky certificate on its
Gram matrix (:mod:`lipbound.linalg.shifted_cholesky`), and the choice between that and the SVD.

**Maths.** For ``W`` (``m x n``) let ``p = min(m, n)``, ``k = max(m, n)`` and ``G = W W^T`` when
``m <= n``, else ``W^T W``: a ``p x p`` PSD matrix with ``lambda_max(G) = ||W||_2^2``. ``W`` is
first scaled by a power of two, ``W_s = W 2^-e`` with its largest entry in ``[1/2, 1)``, so that
nothing overflows (exact in float64, but for entries below ``2^-1074`` that underflow: the scaled
matrix then moves by at most ``sqrt(m n) 2^-1074`` in spectral norm, added at the end).

**Rounding.** ``G_hat = fl(W_s W_s^T)`` in float64, any summation order: each entry is an inner
product of ``k`` terms, so ``|G_hat - G_s| <= gamma_k |W_s| |W_s|^T + k eta`` element-wise (Higham
2002, Lemma 3.5, with ``eta = 2^-1074`` per product for underflow), and
``||G_hat - G_s||_F <= gamma_k ||W_s||_F^2 + p k eta`` (``|| |W_s| |W_s|^T ||_F <= ||W_s||_F^2``).
``||W_s||_F^2`` is computed in float64 and rounded up by ``1 + gamma_{mn + 4}``. With that ``err``,
:func:`~lipbound.linalg.shifted_cholesky.max_eigenvalue_bound` certifies
``lambda_max(G_s) <= b`` (its ``tau`` comes from Lanczos on ``G_hat``, a few dozen steps), and
``||W||_2 <= 2^e (sqrt(b) + sqrt(m n) 2^-1074)``, every operation rounded up. Not exact: aimed
within ``1e-4`` (relative) of the norm. When the certificate fails (its eigenvalue fallback kept a
Frobenius bound), the SVD is taken instead.

**Cost** (one core, float64): the lower block triangle of one GEMM, about ``k p^2 / 2``
multiply-adds, a Cholesky of ``p^3 / 3`` and
about :data:`DENSE_REFINE_STEPS` single-precision products ``G x``, against ``~4 k p^2`` flops
for the SVD's bidiagonalisation, half of them in BLAS-2 (memory-bound): measured 10-30x faster at
``p >= 1024`` (benchmarks/cnn.py), no faster below :data:`CHOLESKY_MIN_SIDE`.

**Measured and not kept** (issue 13, one core of an AVX-512 EPYC): the GEMM is the floor here
(4096 x 9216: ~5 s in float64 for the half product; the Cholesky of 4096: 1.6 s). A float32 GEMM
cannot be certified tightly: its rounding bound ``gamma_k |W| |W|^T`` has a spectral norm of
``~ min(m, n) / 4`` times ``||W||_2^2`` for a dense random-like matrix, so even 16-column chunks
exceed ``1e-3``. Exact int8 products of 7-bit digits (Ozaki splitting, int32 sums) are exact and
12x faster per product than float64, but a ``1e-4`` bound needs three digits and all but one of
their products (8 half-products of inner dimension ``k``): no faster than float64 here.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidInput
from .float_units import ETA64, UP, gamma
from .linear_operator import StructuralBound
from .shifted_cholesky import max_eigenvalue_bound

__all__ = ["gram_cholesky_norm", "matrix_norm_bound", "CHOLESKY_MIN_SIDE"]

CHOLESKY_MIN_SIDE = 512  # "auto": SVD when the smaller side is below this, Gram + Cholesky from it
DENSE_RTOL = 1e-4  # the bound is aimed within this (relative) of the norm
DENSE_REFINE_STEPS = 64  # Lanczos steps on the one Gram matrix (a clustered top needs many)


def _symmetric_gram(ws: torch.Tensor, rows: int = 512) -> torch.Tensor:
    """``ws ws^T`` from the products of its blocks of ``rows`` rows on and below the diagonal,
    mirrored above it (about half the multiply-adds of one GEMM for many blocks; every entry is
    the same inner product of ``k`` terms, so the rounding bound is that of the GEMM)."""
    p = ws.shape[0]
    if p <= rows:
        return ws @ ws.T
    gram = torch.empty((p, p), dtype=ws.dtype, device=ws.device)
    for i in range(0, p, rows):
        gram[i:i + rows, : i + rows] = ws[i:i + rows] @ ws[: i + rows].T
        gram[: i, i:i + rows] = gram[i:i + rows, : i].T
    return gram


def gram_cholesky_norm(weight: torch.Tensor, rtol: float = DENSE_RTOL) -> float | None:
    """A certified upper bound of ``||weight||_2`` (real matrix) by the shifted-Cholesky
    certificate on its smaller Gram matrix (module docstring), or None when the certificate
    failed (the caller takes the SVD)."""
    w = weight.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise InvalidInput("the norm of a matrix with NaN or infinite entries")
    m, n = w.shape
    top = float(w.abs().max()) if w.numel() else 0.0
    if top == 0.0:
        return 0.0
    e = math.frexp(top)[1]
    ws = w * 2.0 ** -e
    if m > n:
        ws = ws.T
    p, k = ws.shape
    gram = _symmetric_gram(ws)
    fro2 = float(torch.linalg.vector_norm(ws)) ** 2 * (1 + gamma(m * n + 4)) * UP * UP
    err = (gamma(k) * fro2 * UP + p * k * ETA64) * UP
    bound = max_eigenvalue_bound(gram[None], err, rtol=rtol, refine_steps=min(p, DENSE_REFINE_STEPS))
    if bound.fallback:
        return None
    return (math.sqrt(bound.value) * UP + math.sqrt(m * n) * ETA64) * UP * 2.0 ** e


def matrix_norm_bound(weight: torch.Tensor, method: str = "auto", what: str = "matrix") -> StructuralBound:
    """A certified bound of ``||weight||_2``: the SVD in float64 (``exact``), or with
    ``method="cholesky"`` (or ``"auto"`` when the smaller side is at least
    :data:`CHOLESKY_MIN_SIDE`) :func:`gram_cholesky_norm`, falling back to the SVD when it fails.
    ``what`` names the matrix in the bound's ``how``."""
    if method not in ("auto", "svd", "cholesky"):
        raise ValueError(f"method must be 'auto', 'svd' or 'cholesky', got {method!r}")
    if weight.dim() == 2 and not weight.is_complex() and (
            method == "cholesky" or (method == "auto" and min(weight.shape) >= CHOLESKY_MIN_SIDE)):
        value = gram_cholesky_norm(weight)
        if value is not None:
            return StructuralBound(value, False, f"shifted Cholesky of the {what}'s Gram matrix")
    return StructuralBound(torch.linalg.matrix_norm(weight.detach().double(), ord=2).item(), True,
                           f"SVD of the {what}")
