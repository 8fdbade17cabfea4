"""The Gram matrices ``A(f)^* A(f)`` of a convolution's frequency blocks, formed from the kernel
in the spatial domain, with a rigorous bound on their rounding error; and the certified norm of
the circular convolution from them (:func:`conv_cholesky_bound`).

**Maths.** Let ``w[a]`` (``a`` a multi-index of taps) be the ``m x n`` matrices of a real kernel
and ``A(f) = sum_a w[a] e^{-i <theta_f, a>}`` its block at frequency ``f`` (``theta_f = 2 pi f / N``
per axis, the grid ``N``): the blocks whose largest norm is the norm of the circular convolution
(:func:`~lipbound.linalg.conv.conv_dft_bound`). Then
``A(f)^* A(f) = sum_delta K[delta] e^{-i <theta_f, delta>}`` with the real *Gram kernel*
``K[delta] = sum_a w[a]^T w[a + delta]``: one product ``W^T W`` of the kernel flattened to
``m x (T n)`` (``T`` taps) gives every ``w[a]^T w[b]``; ``K`` folds the offsets ``delta`` modulo
``N`` (``e^{-i theta (delta + N)} = e^{-i theta delta}`` on the grid). When ``m < n`` the kernel is
transposed first: ``A^T`` has the same singular values. A real kernel's blocks at ``f`` and
``-f`` (modulo ``N``) are complex conjugates, ``A(-f) = conj(A(f))``, hence so are their Gram
blocks, with the same eigenvalues: the half grid of ``rfftn`` (last axis ``0 .. N_last // 2``)
holds every block norm, and on its self-paired planes (last coordinate ``0`` or ``N_last / 2``,
where ``-f`` is in the half grid too) one of each pair suffices (:func:`half_spectrum_mask`).

**Rounding** (float64, unit roundoff ``u``; ``S = sum_a ||w[a]||_F``): the product errs by at most
``gamma_m S^2`` in Frobenius norm over all pairs (each ``w[a]^T w[b]`` with ``b >= a`` is computed
once, ``w[b]^T w[a]`` is its exact transpose), the folding by ``gamma_{T^2}`` times the same,
and the DFT, with computed ``cos``/``sin`` off by at most ``128 u`` (an angle below ``6 pi`` with
a relative error below ``6 u``, and a libm error below one ulp), by
``sqrt(2) (gamma_P + 128 u)`` times it (``P`` folded offsets). So every computed block is within
``err = gamma_{2(m + T^2 + P) + 512} S^2`` of the exact one in Frobenius norm, which bounds the
spectral norm of the difference (:meth:`GramSymbol.double`).

**Single precision** (:meth:`GramSymbol.single`; ``u_32 = 2^-24``). The blocks that the
certificate handles in complex64 anyway are formed in float32 from the float64 kernel
``K_p`` (computed as above), scaled by ``s = 2^-e`` (exact; ``e = 0`` unless entries leave
``2^+-60``). ``K_{-p} = K_p^T`` and the angles of ``p`` and ``-p`` are opposite, so the real
part of a block is ``sum cos<theta, p> (K_p + K_{-p})`` over one offset ``p`` of each pair
(``K_p`` alone when ``p = -p`` modulo the grid) and its imaginary part
``sum -sin<theta, p> (K_p - K_{-p})`` (``sin`` vanishes when ``p = -p``): two float32 products
with ``R, I <= P`` terms, half the multiply-adds of the complex128 route. With
``r_q = fl_32(fl(s (K_p +- K_{-p})))`` (``|r_q - s(K_p +- K_{-p})| <= 2 u_32 (|s K_p| + |s K_{-p}|)``),
``c_q = fl_32(cos)`` or ``fl_32(-sin)`` of the float64 values (``|c_q| <= 1``,
``|c_q - cos| <= u_32 + 128 u <= 2 u_32``) and the product's ``gamma_R(u_32) sum |c_q| |r_q|``
(Higham Lemma 3.5, any order, FMA or not), every real entry is within
``(4 u_32 + gamma_R(u_32)(1 + 2 u_32)) sum_p |s K_p| <= gamma_{P+6}(u_32) sum_p |s K_p|`` of
``s`` times the real (resp. imaginary) part formed exactly from the ``K_p``, plus underflow: at
most ``6 P`` operations that each err by at most ``2^-126`` (flushed to zero or not). Over the
real and imaginary parts in Frobenius norm the block is within
``sqrt(2) (gamma_{P+6}(u_32) s sum_p ||K_p||_F + 6 P n 2^-126) + s err`` of ``s`` times the
exact block (``sum_p ||K_p||_F`` computed in float64 and rounded up, ``2 n sqrt(tiny)`` added
per ``K_p`` for squares that underflow). This needs IEEE float32 products: when torch may run
them in bf16 or tf32 (``torch.set_float32_matmul_precision``) the blocks are formed in
complex128 and rounded instead (:func:`~lipbound.linalg.shifted_cholesky.to_single`). For a
random 256-channel 3x3 kernel the bound is ``5e-5`` of the largest eigenvalue, far inside the
single-precision certificate's own ``1.2%`` (:mod:`lipbound.linalg.shifted_cholesky`); the
blocks it cannot certify are formed again in complex128 (:meth:`GramSymbol.double`).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from .float_units import U32, UP, gamma
from .shifted_cholesky import EigBound, SingleBlocks, certify_max_eigenvalue, to_single

__all__ = ["GramSymbol", "conv_cholesky_bound", "half_spectrum_mask", "CHUNK_NUMEL"]

CHUNK_NUMEL = 1 << 20  # complex entries of Gram blocks formed at once (16 MiB: the factorisations' buffers are reused, not page-faulted anew)


def _gram_kernel(wd: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, ...]], float]:
    """``(K, positions, err)``: the folded Gram kernel ``(g, P, n, n)`` at the grid positions
    ``positions``, and the Frobenius error bound of every block formed from it (module doc)."""
    g, m, n, *q = wd.shape
    taps = torch.cartesian_prod(*[torch.arange(k) for k in q]).reshape(-1, len(q))
    t = taps.shape[0]
    flat = wd.reshape(g, m, n, t).permute(0, 1, 3, 2).reshape(g, m, t * n)
    sizes = torch.tensor(list(grid), dtype=torch.long)
    strides = torch.tensor([math.prod(grid[i + 1:]) for i in range(len(grid))], dtype=torch.long)
    offsets = (taps[None, :, :] - taps[:, None, :]) % sizes  # [a, b]: b - a on the grid
    codes, index = torch.unique((offsets * strides).sum(-1), return_inverse=True)
    index = index.to(wd.device)
    kernel = torch.zeros((g, codes.numel(), n, n), dtype=wd.dtype, device=wd.device)
    for i in range(t):  # w[a]^T w[b] for b >= a, one strip of the block upper triangle per tap; w[b]^T w[a] is its transpose
        strip = (flat[..., i * n:(i + 1) * n].mT @ flat[..., i * n:]).reshape(g, n, t - i, n).transpose(1, 2)
        kernel.index_add_(1, index[i, i:], strip)
        kernel.index_add_(1, index[i + 1:, i], strip[:, 1:].mT)
    positions = [tuple(c) for c in ((codes[:, None] // strides) % sizes).tolist()]
    s = float(torch.linalg.vector_norm(wd.reshape(g, m * n, t), dim=1).sum(-1).max()) * (1 + gamma(2 * m * n + t + 4))
    err = gamma(2 * (m + t * t + len(positions)) + 512) * s * s * (1 + 2.0 ** -40)
    return kernel, positions, err


def _half_grid(grid: Sequence[int]) -> torch.Tensor:
    """The frequencies ``(F, d)`` of ``rfftn``'s half grid in its order (C order, last axis
    ``0 .. N_last // 2``)."""
    axes = [torch.arange(nn if i < len(grid) - 1 else nn // 2 + 1) for i, nn in enumerate(grid)]
    return torch.cartesian_prod(*axes).reshape(-1, len(grid))


def half_spectrum_mask(grid: Sequence[int]) -> torch.Tensor:
    """Which frequencies of ``rfftn``'s half grid on ``grid`` to keep so that every block norm of
    a real kernel is present once: all but one of each conjugate pair ``f, -f mod N`` lying in it
    (module docstring); ``f`` is kept when its C-order index on the full grid is at most that of
    ``-f``."""
    freqs = _half_grid(grid)
    strides = torch.tensor([math.prod(grid[i + 1:]) for i in range(len(grid))], dtype=torch.long)
    neg = (-freqs) % torch.tensor(grid, dtype=torch.long)
    last = freqs[:, -1]
    paired = (last == 0) | (2 * last == grid[-1])
    return ~paired | ((freqs * strides).sum(-1) <= (neg * strides).sum(-1))


def _ieee_float32_matmul() -> bool:
    """Whether float32 matrix products run in IEEE single precision (not bf16 or tf32, which
    ``torch.set_float32_matmul_precision`` can allow): the rounding bound of :class:`GramSymbol`'s
    single-precision blocks assumes it."""
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return (torch.get_float32_matmul_precision() == "highest"
            and getattr(mkldnn, "fp32_precision", "none") in ("none", "ieee"))


class GramSymbol:
    """The Gram blocks ``A(f)^* A(f)`` of a real kernel over :func:`half_spectrum_mask` (groups
    times frequencies, C order), in chunks of frequencies: in complex128 (:meth:`double`, module
    docstring) or formed directly in complex64 (:meth:`single`).

    ``wd``: the real kernel ``(g, m, n, *taps)`` in float64 (the polyphase kernel of
    :func:`~lipbound.linalg.conv.conv_dft_bound`); ``grid``: the circular grid.
    """

    def __init__(self, wd: torch.Tensor, grid: Sequence[int]) -> None:
        if wd.shape[1] < wd.shape[2]:
            wd = wd.transpose(1, 2)
        self.groups, self.n = wd.shape[0], wd.shape[2]
        kernel, positions, self.err = _gram_kernel(wd, grid)
        self.grid = list(grid)
        self.flat = kernel.reshape(self.groups, len(positions), self.n ** 2)
        self.freqs = _half_grid(grid)[half_spectrum_mask(grid)]
        self.pos = torch.tensor(positions, dtype=torch.long).reshape(-1, len(grid))
        index = {q: i for i, q in enumerate(positions)}
        self._partner = torch.tensor([index[tuple((-x) % nn for x, nn in zip(q, grid))] for q in positions],
                                     dtype=torch.long)  # the offset -p of each p (modulo the grid)

    def __len__(self) -> int:
        """The number of frequencies."""
        return self.freqs.shape[0]

    def _angles(self, f: torch.Tensor) -> torch.Tensor:
        """The angles ``<theta_f, p>`` ``(F, P)`` in float64 (module doc)."""
        sizes = torch.tensor(self.grid, dtype=torch.long)
        turns = ((f[:, None, :] * self.pos[None, :, :]) % sizes).to(torch.float64) / sizes.to(torch.float64)
        return ((2 * math.pi) * turns.sum(-1)).to(self.flat.device)

    def _trig(self, f: torch.Tensor) -> torch.Tensor:
        """``[cos; -sin]`` ``(2F, P)`` in float64 of the angles."""
        angle = self._angles(f)
        return torch.cat([torch.cos(angle), -torch.sin(angle)])

    def _blocks(self, trig: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """The blocks ``(g F, n, n)`` from ``[cos; -sin]`` and the folded kernels ``(g, P, n n)``:
        one product for both parts, then the (exact) complex interleave."""
        parts = trig @ flat
        half = trig.shape[0] // 2
        return torch.complex(parts[..., :half, :], parts[..., half:, :]).reshape(-1, self.n, self.n)

    def double(self, start: int, stop: int, which: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """``(blocks, err)``: complex128 blocks at frequencies ``start .. stop - 1`` (all groups,
        group-major), or only the blocks ``which`` of those (indices in that order), each within
        ``err`` of the exact one in Frobenius norm (module doc)."""
        f = self.freqs[start:stop]
        if which is None:
            return self._blocks(self._trig(f), self.flat), self.err
        which = which.to("cpu")
        group, freq = which // f.shape[0], which % f.shape[0]
        out = torch.empty((which.numel(), self.n, self.n), dtype=torch.complex128, device=self.flat.device)
        for gi in group.unique().tolist():
            rows = (group == gi).nonzero().reshape(-1)
            out[rows.to(out.device)] = self._blocks(self._trig(f[freq[rows]]), self.flat[gi])
        return out, self.err

    def single(self, start: int, stop: int) -> SingleBlocks:
        """The blocks at frequencies ``start .. stop - 1`` (all groups) in complex64 (module
        doc, *Single precision*)."""
        if not _ieee_float32_matmul():
            return to_single(*self.double(start, stop))
        if not hasattr(self, "_even32"):
            self._prepare_single()
        f = self.freqs[start:stop]
        angle = self._angles(f)
        real = torch.cos(angle[:, self._even]).to(torch.float32) @ self._even32
        imag = (-torch.sin(angle[:, self._odd])).to(torch.float32) @ self._odd32
        low = torch.complex(real, imag).reshape(-1, self.n, self.n)
        return SingleBlocks(low, self._e, self._err32.repeat_interleave(f.shape[0]))

    def _prepare_single(self) -> None:
        """The sums ``K_p + K_{-p}`` and differences ``K_p - K_{-p}`` over one offset of each
        pair (``K_p`` alone when ``p = -p``), scaled by ``2^-e`` (``e = 0`` unless the largest
        entry is outside ``2^+-60``) and rounded to float32, and the error bound per group
        (module doc)."""
        p = self.flat.shape[1]
        e = math.frexp(float(self.flat.abs().max()))[1]
        self._e = e if abs(e) > 60 else 0
        scaled = self.flat * 2.0 ** -self._e
        first = torch.arange(p)
        self._even, self._odd = first[first <= self._partner], first[first < self._partner]
        alone = (self._partner[self._even] == self._even)[None, :, None]
        self._even32 = (scaled[:, self._even] + torch.where(alone, 0.0, scaled[:, self._partner[self._even]])).to(torch.float32)
        self._odd32 = (scaled[:, self._odd] - scaled[:, self._partner[self._odd]]).to(torch.float32)
        under = 2 * self.n * math.sqrt(torch.finfo(torch.float64).tiny)  # squares that underflow
        sums = (torch.linalg.vector_norm(scaled, dim=-1) * (1 + gamma(self.n ** 2 + 4)) * UP + under).sum(-1)
        self._err32 = ((self.err * 2.0 ** -self._e + math.sqrt(2) * gamma(p + 6, U32) * sums * (1 + gamma(p)) * UP) * UP
                       + 6 * math.sqrt(2) * p * self.n * 2.0 ** -126) * UP


def conv_cholesky_bound(wd: torch.Tensor, grid: Sequence[int], rtol: float = 1e-4,
                        chunk_numel: int = CHUNK_NUMEL) -> EigBound:
    """Certified ``sqrt`` of ``max_f lambda_max(A(f)^* A(f))``, the norm of the circular
    convolution (shifted Cholesky, :func:`~lipbound.linalg.shifted_cholesky.certify_max_eigenvalue`,
    on the blocks formed in single precision, the few it cannot certify in complex128), aimed
    within ``rtol`` of it. Returns an :class:`EigBound` of the *norm* (square roots)."""
    symbol = GramSymbol(wd.to(torch.float64), grid)
    step = max(1, chunk_numel // (symbol.n ** 2 * symbol.groups))
    value, estimate, factorised, fallback = 0.0, 0.0, 0, 0
    for start in range(0, len(symbol), step):
        stop = min(start + step, len(symbol))
        b = certify_max_eigenvalue(symbol.single(start, stop),
                                   lambda which: symbol.double(start, stop, which), rtol, floor=value)
        value, estimate = max(value, b.value), max(estimate, b.estimate)
        factorised, fallback = factorised + b.factorised, fallback + b.fallback
    return EigBound(math.sqrt(value) * (1 + 2.0 ** -50), math.sqrt(max(estimate, 0.0)), factorised, fallback)
