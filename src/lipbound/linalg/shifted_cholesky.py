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

**Single precision.** A block below the target is certified in single precision. The blocks
arrive as :class:`SingleBlocks`: ``2^-e`` times computed blocks in complex64/float32, with a bound
``err_b`` of their Frobenius distance to ``2^-e`` times the exact ones, either formed directly in
single precision by the caller (the convolution's Gram blocks,
:class:`~lipbound.linalg.conv_gram.GramSymbol`, whose rounding bound is in that module) or
rounded from float64 by :func:`to_single`: ``M_hat`` (scaled by ``2^-e`` when its entries would
leave the float32 range, exact in float64) rounded to complex64/float32 moves by at most
``u_32 ||M_hat||_F`` plus ``2 n 2^-149`` (subnormals) in Frobenius norm, added to ``err``. The
certificate above then runs with ``u = 2^-24`` and the result is multiplied back by ``2^e``. The
blocks that single precision does not certify are computed in float64 by the caller
(:data:`DoubleBlocks`). The bound is affine in the
shift, ``tau (1 + u + c n) - u min_i M_ii - c tr(M) + 2 err`` with ``c = g / (1 - g)`` (times the
rounding-up factors), so each block gets the shift at which its bound would be the target
(:func:`_single_shifts`): for a random 256-channel 3x3 convolution that is ``0.988`` times the
target, above the largest eigenvalue of 99% of its 580 frequency blocks (measured with
``eigvalsh``), so nearly every block is factorised in single precision, about half the cost of
complex128. Which shift is tried only decides whether the factorisation succeeds; the bound is
the one computed from the factorisation that ran (above), and a block whose single-precision
bound misses the target (or whose factorisation fails) goes to float64. The Frobenius and
Hoelder norm bounds below are summed in the blocks' format, with its unit roundoff in their
``gamma`` factors (the Frobenius norm row by row, ``gamma_{2n+2}``, then over rows in float64).

**Search** (decides only which ``tau`` to try; never enters a bound). A block's norm bound plus
``err`` is a certified bound already (``min`` of the Frobenius norm and Hoelder's
``sqrt(||M||_1 ||M||_inf)``, the Gershgorin row-sum bound for a Hermitian matrix: either bounds
``||M_hat||_2``, hence ``lambda_max(M) <= ||M_hat||_2 + err``); blocks below the current target (a
frequency of a smooth kernel far from its peak) need no factorisation. The row sums are
summed only for blocks estimated below :data:`HOELDER_BELOW` times the target (they cost a
third of a single-precision factorisation and never help a block near the top).
For the others, Lanczos (batched, from a fixed start, in single precision:
:func:`~lipbound.linalg.lanczos.lanczos_max_eig`; a few steps on every block, more on the
few ranked highest) gives Ritz values ``theta`` (lower estimates, up to the single-precision
rounding); ``tau = max theta (1 + 2 rtol)``
is tried on every block at once (blocks with ``theta`` below their single-precision shift in
single precision first; a failure there sends the block to float64); a block
whose factorisation fails gets its own ``tau`` from its top Ritz value after ``refine_steps``
Lanczos steps and one more try, then from its largest eigenvalue (``eigvalsh``, 3-6x the cost:
an estimate too) and a last try; a block failing again keeps its Frobenius bound.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .float_units import U32, UP, gamma
from .lanczos import lanczos_max_eig

__all__ = ["max_eigenvalue_bound", "certify_max_eigenvalue", "to_single", "SingleBlocks", "DoubleBlocks", "EigBound"]

LANCZOS_STEPS = 4  # Lanczos steps on every block: estimates that rank the blocks (6 cost 8% more on the 256-channel conv)
REFINE_BLOCKS = 8  # the blocks ranked highest ...
REFINE_STEPS = 32  # ... get this many steps: their largest Ritz value chooses tau
HOELDER_BELOW = 0.5  # blocks estimated below this fraction of the target: try the row-sum bound first
SINGLE_SLACK = 1e-6  # single-precision shifts aim this fraction below the target (the bound's own roundings)


class EigBound(NamedTuple):
    """``value >= max_b lambda_max(M_b)`` (certified), ``estimate`` (the largest Ritz value
    found, ``<=`` the largest eigenvalue of the computed matrices up to single-precision rounding),
    and how many blocks were factorised and how many fell back to their Frobenius bound."""

    value: float
    estimate: float
    factorised: int
    fallback: int


def _certify(mats: torch.Tensor, tau: torch.Tensor, err: torch.Tensor | float,
             overwrite: bool = False) -> torch.Tensor:
    """Per block: the certified bound (float64) for the shift ``tau`` rounded to the blocks' format
    (module docstring) when the Cholesky factorisation of ``fl(tau I - M_hat)`` succeeds, else
    ``inf``. ``err``: per block or one for all, ``>= ||M_hat - M||_F``. ``overwrite``: ``mats``
    may be overwritten (by ``tau I - M_hat``)."""
    n = mats.shape[-1]
    real = mats.real.dtype if mats.is_complex() else mats.dtype
    u = torch.finfo(real).eps / 2
    tau = tau.to(real)
    x = mats.neg_() if overwrite else -mats
    diag = x.diagonal(dim1=-2, dim2=-1)
    diag += tau[:, None]
    _, info = torch.linalg.cholesky_ex(x)
    g = gamma(4 * (n + 1) if mats.is_complex() else n + 1, u)
    d = (diag.real if diag.is_complex() else diag).to(torch.float64)
    trace = d.clamp_min(0).sum(-1) * (1 + gamma(n)) * UP
    eps = g / (1 - g) * trace * UP
    bound = (tau.to(torch.float64) + u * d.amax(-1) * UP + eps + 2 * err) * UP * UP
    return torch.where(info == 0, bound, torch.full_like(bound, math.inf))


def _unit(mats: torch.Tensor) -> float:
    """The unit roundoff of the blocks' (real) format."""
    return torch.finfo(mats.real.dtype if mats.is_complex() else mats.dtype).eps / 2


def _frobenius_up(mats: torch.Tensor) -> torch.Tensor:
    """Per block, ``>= ||M||_F`` (float64): the norms of the rows in the blocks' format (``2 n``
    real terms each, relative error ``gamma_{2n+2}`` in its unit roundoff), then the norm of
    those in float64 (``gamma_{n+4}``), rounded up; plus ``2 n sqrt(tiny)`` for squares that
    underflow (each errs by at most the format's smallest normal ``tiny``, even flushed to zero)."""
    n = mats.shape[-1]
    real = torch.view_as_real(mats).flatten(-2) if mats.is_complex() else mats
    rows = torch.linalg.vector_norm(real, dim=-1).to(torch.float64)
    under = 2 * n * math.sqrt(torch.finfo(real.dtype).tiny)
    return (torch.linalg.vector_norm(rows, dim=-1) * (1 + gamma(2 * n + 2, _unit(mats)))
            * (1 + gamma(n + 4)) * UP + under) * UP


def _hoelder_up(mats: torch.Tensor) -> torch.Tensor:
    """Per block, ``sqrt(||M||_1 ||M||_inf)`` rounded up (float64), ``>= ||M||_2`` (Hoelder, for
    any matrix: the computed blocks are Hermitian only up to rounding).
    A complex entry counts as ``|Re z| + |Im z| >= |z|`` (exact, and far cheaper than ``hypot``);
    each sum of at most ``2 n`` terms errs by ``gamma_{2n}`` in the blocks' unit roundoff."""
    n = mats.shape[-1]
    if mats.is_complex():
        a = torch.view_as_real(mats).abs()
        rows, cols = a.sum((-1, -2)), a.sum(-3).sum(-1)
    else:
        a = mats.abs()
        rows, cols = a.sum(-1), a.sum(-2)
    top = rows.amax(-1).to(torch.float64) * cols.amax(-1).to(torch.float64)
    return top.sqrt() * (1 + gamma(2 * n + 8, _unit(mats))) * UP


class SingleBlocks(NamedTuple):
    """Hermitian PSD matrices ``M_b`` known in single precision: ``low`` ``(B, n, n)``
    (complex64 or float32) is ``2^-e`` times computed blocks, and ``err`` ``(B,)`` (float64)
    bounds ``||low_b - 2^-e M_b||_F`` for the *exact* ``M_b``."""

    low: torch.Tensor
    e: int
    err: torch.Tensor


DoubleBlocks = Callable[[torch.Tensor], tuple[torch.Tensor, float]]
"""Indices of blocks -> ``(mats, err)``: those blocks computed in float64 or complex128, each
within ``err`` of the exact one in Frobenius norm (the route for blocks single precision cannot
certify)."""


def to_single(mats: torch.Tensor, err: float) -> SingleBlocks:
    """Blocks computed in float64/complex128 (within ``err`` of the exact ones) rounded to single
    precision, scaled by ``2^-e`` (``e = 0`` unless the largest entry is outside ``2^+-60``; the
    scaling is exact in float64 but for entries that become subnormal, off by ``2^-1075`` each):
    the rounding moves each block by at most ``u_32 ||2^-e M_hat||_F`` plus ``2 n 2^-149``
    (subnormals, and the scaling's own) in Frobenius norm (module docstring)."""
    real = torch.view_as_real(mats) if mats.is_complex() else mats
    e = math.frexp(float(real.abs().max()) if mats.numel() else 0.0)[1]
    e = e if abs(e) > 60 else 0
    scaled = mats * 2.0 ** -e if e else mats
    fro = _frobenius_up(scaled)
    bound = ((err * 2.0 ** -e + U32 * fro) * UP + 2 * mats.shape[-1] * 2.0 ** -149) * UP
    low = torch.complex64 if mats.is_complex() else torch.float32
    return SingleBlocks(scaled.to(low) if e else mats.to(low, copy=True), e, bound)  # a copy: it may be overwritten


def _single_shifts(low: torch.Tensor, err_s: torch.Tensor, target: float) -> torch.Tensor:
    """Per block of ``low`` (single precision, scaled), the shift at which :func:`_certify`'s bound
    would be ``target (1 - SINGLE_SLACK)`` (same units), solving its affine form (module
    docstring) with every rounding-up factor included."""
    n = low.shape[-1]
    g = gamma(4 * (n + 1) if low.is_complex() else n + 1, U32)
    c = g / (1 - g) * (1 + gamma(n)) * UP ** 2
    d = low.diagonal(dim1=-2, dim2=-1)
    d = (d.real if d.is_complex() else d).to(torch.float64)
    aim = target * (1 - SINGLE_SLACK) / UP ** 2 - 2 * err_s
    return (aim + U32 * UP * d.amin(-1) + c * d.sum(-1)) / (1 + U32 * UP + c * n)


def _certify_single(low: torch.Tensor, e: int, err_s: torch.Tensor, target: float,
                    overwrite: bool = False) -> torch.Tensor:
    """:func:`_certify` on the single-precision blocks ``low`` (``2^-e`` times the computed ones,
    within ``err_s`` of ``2^-e`` times the exact ones), each at its shift for ``target``
    (:func:`_single_shifts`); the bounds are those of the unscaled exact blocks."""
    return _certify(low, _single_shifts(low, err_s, target * 2.0 ** -e), err_s, overwrite) * 2.0 ** e


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
    ``||mats_b - M_b||_F <= err`` for every block: :func:`certify_max_eigenvalue` on their
    rounding to single precision (:func:`to_single`), with ``mats`` for the float64 route."""
    def double(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        return (mats if idx.numel() == mats.shape[0] else mats[idx]), err

    return certify_max_eigenvalue(to_single(mats, err), double, rtol, floor, steps, refine_steps)


def certify_max_eigenvalue(single: SingleBlocks, double: DoubleBlocks, rtol: float = 1e-4,
                           floor: float = 0.0, steps: int = LANCZOS_STEPS,
                           refine_steps: int = REFINE_STEPS) -> EigBound:
    """A certified upper bound of ``max_b lambda_max(M_b)`` (module docstring) for Hermitian PSD
    matrices given in single precision (``single``), with ``double`` to compute any of them in
    float64 when single precision cannot certify them.

    ``rtol``: the target, relative on the square root (the bound is aimed at
    ``(1 + 2 rtol)`` times the largest eigenvalue). ``floor``: a value already certified elsewhere
    (earlier chunks of the same operator): blocks whose Frobenius bound is below it need nothing.
    ``steps``, ``refine_steps``: Lanczos steps of the estimates (:func:`_estimates`; more for one
    large matrix with a clustered top). ``single.low`` is overwritten (factorised in place).
    """
    low, e, err_s = single
    scale = 2.0 ** e
    bounds = (_frobenius_up(low) + err_s) * UP * scale  # certified already: blocks below the target need nothing more
    open_ = bounds > floor
    if not bool(open_.any()):
        return EigBound(float(bounds.max()), 0.0, 0, 0)
    idx = open_.nonzero().reshape(-1)
    if not bool(open_.all()):
        low, err_s = low[idx], err_s[idx]
    theta = _estimates(low, steps, refine_steps, floor / scale) * scale
    estimate = float(theta.max())
    target = max(estimate * (1 + 2 * rtol), floor)
    far = (bounds[idx] > target) & (theta < HOELDER_BELOW * target)
    bounds[idx[far]] = torch.minimum(bounds[idx[far]], (_hoelder_up(low[far]) + err_s[far]) * UP * scale)
    need = bounds[idx] > target
    idx, theta, low, err_s = idx[need], theta[need], low[need], err_s[need]
    factorised = int(idx.numel())
    cheap = theta < _single_shifts(low, err_s, target / scale) * scale  # a Ritz value above the shift: that factorisation would fail
    if bool(cheap.any()):
        got = _certify_single(low if bool(cheap.all()) else low[cheap], e, err_s[cheap], target, overwrite=True)
        done = got <= target
        bounds[idx[cheap][done]] = got[done]
        idx = torch.cat([idx[~cheap], idx[cheap][~done]]).sort().values
    del low
    fallback = 0
    if idx.numel():
        mats, err = double(idx)
        tau = torch.full((idx.numel(),), target, dtype=torch.float64, device=mats.device)
        got = _certify(mats, tau, err)
        for retry in (lambda m: lanczos_max_eig(m.to(single.low.dtype), refine_steps),
                      lambda m: torch.linalg.eigvalsh(m)[:, -1]):  # its top Ritz value, else its eigenvalue
            failed = ~torch.isfinite(got)
            if not bool(failed.any()):
                break
            lam = retry(mats[failed]).to(torch.float64)
            estimate = max(estimate, float(lam.max()))
            tau2 = torch.maximum(lam * (1 + 2 * rtol) + 1e-12 * lam.abs().max(), tau[failed])
            got[failed] = _certify(mats[failed], tau2, err)
        bounds[idx] = torch.minimum(got, bounds[idx])
        fallback = int((~torch.isfinite(got)).sum())
    return EigBound(float(bounds.max()), estimate, factorised, fallback)
