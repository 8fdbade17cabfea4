"""Gram iteration: certified upper bounds of spectral norms (Delattre, Barthélemy, Araujo &
Allassonnière, ICML 2023), batched over many matrices, with rigorous rounding.

**Exact arithmetic.** ``G_0 = A``, ``G_{t+1} = G_t^* G_t``. The singular values of ``G_t`` are
those of ``A`` raised to the power ``2^t``, so
``||A||_2 = ||G_t||_2^{1/2^t} <= ||G_t||_F^{1/2^t}``, and the ratio of the two sides is at most
``rank(A)^{1/2^{t+1}}``: the bound converges to the norm superlinearly once the top singular
value stands out, and never falls below it.

**Floating point** (any real or complex dtype; float64 is used by the certified conv path, float32
is supported too). Let ``u`` be the unit roundoff and ``eta = 4 tiny`` (smallest normal number)
cover underflow. Each step computes ``P = fl(G_t^* G_t)`` with an inner dimension of ``k`` terms;
for any summation order (real, or complex with Higham's Lemma 3.5)
``|P - G_t^* G_t| <= g_k |G_t|^* |G_t| + k eta`` element-wise with ``g_k = 2 gamma_{k+2}``,
``gamma_j = j u / (1 - j u)``, hence ``||P - G_t^* G_t||_F <= g_k ||G_t||_F^2 + n k eta``. It then
rescales by a power of two, ``G_{t+1} = fl(P 2^{-e_{t+1}})`` (exact but for underflow, ``< eta``
per entry), chosen so that ``||G_{t+1}||_F ~ 1``: nothing overflows however many steps are run.
Therefore, for the matrices actually computed,

    ||G_t||_2^2 = ||G_t^* G_t||_2 <= 2^{e_{t+1}} (||G_{t+1}||_2 + n eta) + g_k F_t^2 + n k eta,

with ``F_t >= ||G_t||_F`` the float64 Frobenius norm rounded up by ``1 + gamma_{2N+4}`` (``N``
entries). Starting from ``U_T = F_T >= ||G_T||_2`` and going back, ``U_t = sqrt(a_t U_{t+1} + b_t)``
bounds ``||G_t||_2``; every operation of this recursion is rounded up by a factor ``1 + 2^-50``.
The input is scaled the same way, ``G_0 = fl(A 2^{-e_0})``, so ``||A||_2 <= 2^{e_0} (U_0 + sqrt(mn) eta)``.
The result is certified for the matrices given; no step assumes convergence, and the error
terms are tiny beside ``||G_t||_2^2`` (``||G_t||_F^2 <= rank ||G_t||_2^2``).

**Batches.** :func:`gram_bounds` runs on a batch ``(B, m, n)`` (the frequency blocks of a
convolution) and returns a certified bound for every block. A block stops iterating (keeps its
last certified bound) once that bound is below the largest lower estimate of any block, the
largest column norm ``||G_t e_j||`` carried back to ``||A||`` (used only to choose which blocks
to refine, never in a bound); the whole batch stops when the largest bound is within ``rtol`` of
that estimate, or after ``max_iter`` steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..errors import InvalidInput
from .float_units import U64, UP, gamma

__all__ = ["gram_bounds", "gram_norm", "max_block_norm", "BlockNorm", "GRAM_MAX_ITER", "GRAM_RTOL"]

GRAM_MAX_ITER = 16  # 2^17-th root: the bound exceeds the norm by at most a factor rank^(1/2^17)
_EXP_CLAMP = {torch.float32: 100, torch.float64: 1000}


def _fro_up(g: torch.Tensor) -> torch.Tensor:
    """Rigorous upper bounds (float64) of the Frobenius norms of the last two axes."""
    n_terms = 2 * g.shape[-1] * g.shape[-2]
    fro = torch.linalg.vector_norm(g.to(torch.complex128 if g.is_complex() else torch.float64), dim=(-2, -1))
    return fro * (1 + gamma(n_terms + 4, U64)) * UP + 4 * torch.finfo(torch.float64).tiny


def _exponent(g: torch.Tensor) -> torch.Tensor:
    """Per matrix, ``e`` with ``2^e`` near its largest entry (0 for a zero matrix), clamped so that
    ``2^{+-e}`` is finite in the dtype: ``g 2^{-e}`` has entries at most 1, and its products cannot
    overflow."""
    real = g.real.dtype if g.is_complex() else g.dtype
    e = torch.frexp(g.abs().amax(dim=(-2, -1)).to(torch.float64))[1].to(torch.float64)
    lim = _EXP_CLAMP[real]
    return e.clamp(-lim, lim)


def gram_bounds(blocks: torch.Tensor, *, rtol: float = 1e-4, max_iter: int = GRAM_MAX_ITER) -> tuple[torch.Tensor, int]:
    """Certified upper bounds of ``||A_b||_2`` for every matrix of ``blocks`` ``(..., m, n)``
    (real or complex, float32 or float64), by Gram iteration (module docstring).

    Returns the bounds (float64, shape ``blocks.shape[:-2]``) and the number of steps run.
    ``max(bounds)`` is within ``rtol`` of the largest norm when the run converged before
    ``max_iter``; each bound is certified in any case.
    """
    if blocks.dim() < 2 or blocks.shape[-1] == 0 or blocks.shape[-2] == 0:
        raise InvalidInput(f"Gram iteration needs non-empty matrices, got shape {tuple(blocks.shape)}")
    if max_iter < 0 or rtol < 0:
        raise InvalidInput(f"max_iter and rtol must be >= 0, got {max_iter}, {rtol}")
    real = blocks.real if blocks.is_complex() else blocks
    if real.dtype not in _EXP_CLAMP:
        raise InvalidInput(f"Gram iteration runs in float32 or float64, got {blocks.dtype}")
    if not bool(torch.isfinite(blocks).all()):
        raise InvalidInput("Gram iteration on a matrix with NaN or infinite entries")
    batch = blocks.shape[:-2]
    a = blocks.detach().reshape(-1, *blocks.shape[-2:])
    if a.shape[-2] < a.shape[-1]:
        a = a.mH  # same norm; the Gram matrices are then n x n with n the smaller side
    u, eta = torch.finfo(real.dtype).eps / 2, 4 * torch.finfo(real.dtype).tiny
    nb, m, n = a.shape
    e0 = _exponent(a)
    g = a * torch.exp2(-e0).to(real.dtype)[:, None, None]  # a power of two: exact but for underflow
    log_scale = e0.clone()  # ||A||^(2^t) ~ 2^log_scale ||G_t||
    scales, adds = [], []  # a_t = 2^{e_{t+1}}, b_t (module docstring), per step
    active = torch.arange(nb, device=a.device)
    bounds = torch.empty(nb, dtype=torch.float64, device=a.device)
    lower = torch.zeros(nb, dtype=torch.float64, device=a.device)

    def certified(g_act: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ub = _fro_up(g_act)
        for a_t, b_t in zip(reversed(scales), reversed(adds)):
            ub = torch.sqrt((a_t[idx] * ub * UP + b_t[idx]) * UP) * UP
        return (ub + eta * math.sqrt(m * n)) * UP * torch.exp2(e0[idx])

    def estimate(g_act: torch.Tensor, idx: torch.Tensor, t: int) -> torch.Tensor:
        """``||G x|| / ||x||`` for ``x`` the heaviest column of ``G_t`` (``t >= 1``: square), or
        that column's norm (``t = 0``), carried back to ``||A||``; 0 for a zero matrix."""
        cols = torch.linalg.vector_norm(g_act, dim=-2)
        ratio = cols.amax(-1)
        if t > 0:
            j = cols.argmax(-1)[:, None, None].expand(-1, g_act.shape[-2], 1)
            x = g_act.gather(-1, j)
            ratio = torch.linalg.vector_norm(g_act @ x, dim=(-2, -1)) / ratio
        ratio = torch.nan_to_num(ratio.to(torch.float64), nan=0.0)
        return torch.exp2((log_scale[idx] + torch.log2(ratio)) / 2 ** t)

    t = 0
    full_scales = torch.zeros(nb, dtype=torch.float64, device=a.device)
    full_adds = torch.zeros(nb, dtype=torch.float64, device=a.device)
    while True:
        bounds[active] = certified(g, active)
        lower[active] = estimate(g, active, t)
        best = float(lower.max())
        if t >= max_iter or float(bounds.max()) <= best * (1 + rtol):
            break
        keep = (bounds[active] >= best) & (g.abs().amax(dim=(-2, -1)) > 0)  # a zero G_t: its bound is final
        active, g = active[keep], g[keep]
        if active.numel() == 0:
            break
        k = g.shape[-2]
        f_t = _fro_up(g)
        p = g.mH @ g
        e = _exponent(p)
        g = p * torch.exp2(-e).to(real.dtype)[:, None, None]
        a_t, b_t = full_scales.clone(), full_adds.clone()
        a_t[active] = e.exp2()
        b_t[active] = (e.exp2() * n * eta + 2 * gamma(k + 2, u) * f_t * f_t * UP + n * k * eta) * UP
        scales.append(a_t)
        adds.append(b_t)
        log_scale[active] = 2 * log_scale[active] + e
        t += 1
    return bounds.reshape(batch), t


def gram_norm(matrix: torch.Tensor, *, rtol: float = 1e-6, max_iter: int = GRAM_MAX_ITER) -> float:
    """A certified upper bound of the spectral norm of one matrix (2-D, real or complex)."""
    if matrix.dim() != 2:
        raise InvalidInput(f"gram_norm takes a matrix, got shape {tuple(matrix.shape)}")
    return float(gram_bounds(matrix, rtol=rtol, max_iter=max_iter)[0].max())


GRAM_RTOL = 1e-4  # the Gram bound of a convolution is within this of the largest block norm
GRAM_MIN_DIM = 32  # "auto": SVD below this smaller side of the blocks, Gram iteration from it


class BlockNorm(NamedTuple):
    """``value >= max_b ||A_b||_2`` for a batch of blocks, and how it was computed:
    ``"svd"`` (the exact maximum, up to rounding), ``"gram"`` (a certified bound within
    ``GRAM_RTOL`` of it, by Gram iteration) or ``"cholesky"`` (a certified bound aimed within
    ``1e-4`` of it, :mod:`lipbound.linalg.conv_gram`)."""

    value: float
    method: str

    @property
    def exact(self) -> bool:
        return self.method == "svd"

    @property
    def how(self) -> str:
        return {"svd": "SVD per frequency", "gram": "Gram iteration per frequency",
                "cholesky": "shifted Cholesky per frequency"}[self.method]


def max_block_norm(blocks: torch.Tensor, method: str = "auto") -> BlockNorm:
    """A certified bound of the largest spectral norm of the blocks ``(..., m, n)`` (float64 or
    complex128): their exact SVD, or Gram iteration (:func:`gram_bounds`, in the blocks' dtype).

    ``"auto"`` chooses by cost: Gram iteration needs about six batched ``n x n`` products on the
    blocks, each far cheaper than a batched SVD on a GPU. On a CPU, measured on the AlexNet-shaped
    convolutions (benchmarks/cnn.py), six complex128 products cost more than LAPACK's SVD, so
    ``"auto"`` takes the SVD there, and Gram iteration on CUDA blocks whose smaller side is at
    least ``GRAM_MIN_DIM``. ``"cholesky"`` needs the kernel, not the blocks
    (:mod:`lipbound.linalg.conv_gram`): for blocks already formed it chooses as ``"auto"``.
    """
    if method not in ("auto", "svd", "gram", "cholesky"):
        raise InvalidInput(f"method must be 'auto', 'svd', 'gram' or 'cholesky', got {method!r}")
    if method in ("auto", "cholesky"):
        method = "gram" if blocks.is_cuda and min(blocks.shape[-2:]) >= GRAM_MIN_DIM else "svd"
    if method == "svd":
        return BlockNorm(torch.linalg.matrix_norm(blocks, ord=2).max().item(), "svd")
    return BlockNorm(float(gram_bounds(blocks, rtol=GRAM_RTOL)[0].max()), "gram")
