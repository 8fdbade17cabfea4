"""Convolutions as linear operators, and the certified bound of their norm from the kernel's DFT
(:class:`Conv`; the proof is in its docstring)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidInput
from .conv_gram import conv_cholesky_bound, half_spectrum_mask
from .gram import BlockNorm, max_block_norm
from .linear_operator import StructuralBound, _TensorOperator

__all__ = ["Conv", "conv_dft_bound", "circular_conv_norm"]


class Conv(_TensorOperator):
    """Convolution (``nn.ConvNd`` or ``nn.ConvTransposeNd`` without bias), zero padding, any
    stride, dilation and groups, for N = 1, 2, 3 spatial axes.

    **Certified bound** (:meth:`structural_bound`, after Sedghi, Gupta & Long, ICLR 2019, extended
    to strides by a polyphase split). Take one spatial axis of input size ``H``, padding ``p`` per
    side, kernel ``k``, dilation ``d``, stride ``s``; write ``t = a d`` for the offset of tap ``a``.
    The layer is ``y[i] = sum_a w[a] x_pad[s i + t]`` where ``x_pad`` is ``x`` surrounded by
    ``p`` zeros.

    * *Zero padding.* Embed ``x`` at positions ``p .. p+H-1`` of a circular grid of size
      ``N = s M >= H + 2p``. Every index ``s i + t`` read by the layer is at most ``H + 2p - 1``
      (the last window ends inside the padded input), hence below ``N``, and never wraps, so the layer equals the circular convolution on that grid restricted
      to inputs supported on the embedded positions and to the layer's outputs: it is a sub-block
      of the circular operator (an isometric embedding followed by a coordinate restriction), and a
      sub-block never has a larger norm.
    * *Stride.* Split the circular input into its ``s`` phases ``x_r[m] = x[s m + r]`` (a
      permutation, hence unitary) and write ``t = s q + r``: then
      ``y[i] = sum_r sum_q w_r[q] x_r[i + q]`` with ``w_r[q] = w[a]`` for ``a d = s q + r``, a sum
      of stride-1 circular convolutions on the grid of size ``M``. The 1-D DFT diagonalises each,
      so the whole map is unitarily equivalent to the block-diagonal matrix whose block at
      frequency ``f`` is the ``c_out x (c_in s)`` matrix ``[W_r(f)]_r`` of the phase kernels' DFTs.
      Its norm is the largest singular value over the ``M`` frequencies: the exact norm of the
      circular strided convolution, and a certified bound of the zero-padded one. Without the
      split (stride 1 bound followed by a subsampling of norm 1) the bound would hold too, but
      loosely; with ``s = 1`` both coincide. In several axes the phases and frequencies are
      products; groups make the operator block diagonal (the maximum over groups).
    * *Transposed convolution* is the adjoint of the convolution with the same weight, stride,
      padding and dilation acting on the transposed layer's output grid; adjoints have the same
      norm, so the same bound applies with ``H`` the output size.
    * *Circular padding* (``circular``: ``(before, after)`` per axis, each ``<= H``, applied before
      a convolution without zero padding): ``x_pad[i] = x[(i - b) mod H]``, so
      ``y[o] = sum_a w[a] x[(s o + a d - b) mod H] = (C x)[(s o - b) mod H]`` with ``C`` the
      stride-1 circular convolution on the torus of size ``H`` itself (taps at ``a d mod H``):
      ``y = R C x`` with ``R`` a selection of rows, ``||R|| = sqrt(m)``, ``m`` the most outputs
      that pick one row. The DFT on that torus gives ``||C||`` exactly, so
      ``||A|| <= sqrt(m) ||C||``. When ``s`` divides ``H`` (and the dilated kernel spans at most
      ``H`` on each axis), every row picked lies in one phase class ``-b mod s``, and a circular
      shift (unitary) takes that class to the rows ``s j``: ``C`` may then be replaced by the
      circular *strided* convolution, whose exact norm is the polyphase DFT above on the grid
      ``H``. Either way the bound is the norm itself when ``R`` is a bijection onto the rows
      (``m = 1`` and ``H / s`` outputs, e.g. stride 1 with ``(k - 1) d = b + after``). The other
      route, the padding's norm times the bound of the convolution without padding, is valid
      too: the smaller one is used.

    The computation is in float64 and costs one FFT of the kernel (half the spectrum: a real
    kernel's is conjugate-symmetric), then per frequency either an SVD (the exact maximum) or Gram
    iteration (a certified bound within ``GRAM_RTOL``, :mod:`lipbound.linalg.gram`), chosen by
    cost per layer (``method``); the bound's ``how`` says which.
    """

    _tensors = ("weight",)
    method = "auto"  # per-frequency norms: "svd", "gram", "cholesky" or "auto" (by cost; see _use_cholesky, max_block_norm)

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int] | str, dilation: Sequence[int], groups: int = 1,
                 transposed: bool = False, output_padding: Sequence[int] | None = None,
                 circular: Sequence[tuple[int, int]] | None = None) -> None:
        self.weight = weight.detach()
        nd = weight.dim() - 2
        if nd not in (1, 2, 3):
            raise ValueError(f"convolution with {nd} spatial axes")
        self.circular = None if circular is None else tuple((int(b), int(a)) for b, a in circular)
        if self.circular is not None and (
                transposed or isinstance(padding, str) or any(padding) or len(self.circular) != nd
                or any(not 0 <= p <= h for pair, h in zip(self.circular, in_shape[1:]) for p in pair)):
            raise ValueError(f"circular padding {circular} needs a convolution without zero padding "
                             f"and pads <= {in_shape[1:]}")
        self.nd = nd
        self.stride = tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = int(groups)
        self.transposed = transposed
        self.output_padding = tuple(output_padding or (0,) * nd)
        self.label = f"ConvTranspose{nd}d" if transposed else f"Conv{nd}d"
        out = self._matvec(torch.zeros((1, *in_shape), dtype=weight.dtype, device=weight.device))
        super().__init__(in_shape, out.shape[1:])

    def _matvec(self, x):
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.nd - 1]
            return fn(x, self.weight, None, self.stride, self.padding, self.output_padding,
                      self.groups, self.dilation)
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        if self.circular is not None:
            x = F.pad(x, [p for pair in reversed(self.circular) for p in pair], mode="circular")
        return fn(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

    def _total_padding(self) -> tuple[int, ...]:
        k = self.weight.shape[2:]
        if isinstance(self.padding, str):  # 'valid' -> 0, 'same' -> d (k - 1) in total
            return tuple(0 if self.padding == "valid" else d * (kk - 1) for d, kk in zip(self.dilation, k))
        return tuple(2 * p for p in self.padding)

    def structural_bound(self):
        if not bool(torch.isfinite(self.weight).all()):
            raise InvalidInput(f"{self.label} weight {tuple(self.weight.shape)} has NaN or infinite entries")
        if self.circular is not None:
            return self._circular_bound()
        grid = self.out_shape[1:] if self.transposed else self.in_shape[1:]
        extra = self.output_padding if self.transposed else (0,) * self.nd
        sizes = tuple(h + pt + op for h, pt, op in zip(grid, self._total_padding(), extra))
        norm = conv_dft_bound(self.weight, sizes, self.stride, self.dilation, self.groups, self.method)
        return StructuralBound(norm.value, False, f"DFT of the kernel (polyphase for strides), {norm.how}")

    def _circular_bound(self) -> StructuralBound:
        """``min(sqrt(m) ||C||, ||pad|| * bound of the unpadded convolution)`` (class docstring)."""
        sizes, outs = self.in_shape[1:], self.out_shape[1:]
        rows = [(s * torch.arange(n) - b) % h for (b, _), s, n, h in zip(self.circular, self.stride, outs, sizes)]
        reads = [(torch.arange(-b, h + a) % h) for (b, a), h in zip(self.circular, sizes)]
        m_rows = math.prod(int(torch.bincount(r).max()) for r in rows)
        m_pad = math.prod(int(torch.bincount(r).max()) for r in reads)
        k = self.weight.shape[2:]
        if all(h % s == 0 and (kk - 1) * d < h for h, s, kk, d in zip(sizes, self.stride, k, self.dilation)):
            torus = conv_dft_bound(self.weight, sizes, self.stride, self.dilation, self.groups, self.method)
            covered = tuple(h // s for h, s in zip(sizes, self.stride))
        else:
            torus = circular_conv_norm(self.weight, sizes, self.dilation, self.groups, self.method)
            covered = tuple(sizes)
        padded = tuple(h + b + a for (b, a), h in zip(self.circular, sizes))
        inner = conv_dft_bound(self.weight, padded, self.stride, self.dilation, self.groups, self.method)
        on_torus, product = math.sqrt(m_rows) * torus.value, math.sqrt(m_pad) * inner.value
        bijective = m_rows == 1 and tuple(outs) == covered and torus.exact
        if on_torus <= product:
            return StructuralBound(on_torus, bijective, f"DFT of the kernel on the input's torus (circular padding), {torus.how}")
        return StructuralBound(product, False, f"circular padding's norm times the DFT bound, {inner.how}")


def conv_dft_bound(weight: torch.Tensor, padded_sizes: Sequence[int], stride: Sequence[int],
                   dilation: Sequence[int], groups: int, method: str = "auto") -> BlockNorm:
    """Norm of the circular strided convolution that contains the zero-padded layer: exact with
    ``method="svd"``, a certified bound within ``GRAM_RTOL`` of it with ``"gram"``
    (:func:`max_block_norm`).

    ``weight`` has shape ``(c_out, c_in / groups, *k)``; ``padded_sizes`` are ``H + total padding``
    per axis. See :class:`Conv` for the proof that the result bounds the layer's norm.
    """
    nd = weight.dim() - 2
    c_out, cig, *k = weight.shape
    g = groups
    cog = c_out // g
    w = weight.detach().to(torch.float64).reshape(g, cog, cig, *k)
    # dilate the kernel and pad each axis to a multiple of its stride: extent s * qmax
    qmax = [((kk - 1) * d) // s + 1 for kk, d, s in zip(k, dilation, stride)]
    wd = torch.zeros((g, cog, cig, *(q * s for q, s in zip(qmax, stride))), dtype=torch.float64, device=w.device)
    wd[(Ellipsis, *(slice(None, (kk - 1) * d + 1, d) for kk, d in zip(k, dilation)))] = w
    # split every axis t = s q + r into (q, r), move the phases r next to the input channels
    wd = wd.reshape(g, cog, cig, *[n for q, s in zip(qmax, stride) for n in (q, s)])
    q_axes = [3 + 2 * i for i in range(nd)]
    r_axes = [4 + 2 * i for i in range(nd)]
    wd = wd.permute(0, 1, 2, *r_axes, *q_axes).reshape(g, cog, cig * math.prod(stride), *qmax)
    grid = [max(-(-h // s), q) for h, s, q in zip(padded_sizes, stride, qmax)]
    # a real kernel's DFT is conjugate-symmetric, W(-f) = conj(W(f)), with the same singular
    # values: the half spectrum of rfftn holds every block norm, once each with half_spectrum_mask
    if _use_cholesky(method, wd):
        b = conv_cholesky_bound(wd, grid)
        return BlockNorm(b.value, "cholesky")
    sym = torch.fft.rfftn(wd, s=grid, dim=tuple(range(3, 3 + nd)))
    sym = sym.reshape(g, cog, cig * math.prod(stride), -1)[..., half_spectrum_mask(grid).to(sym.device)]
    sym = sym.permute(0, 3, 1, 2)
    return max_block_norm(sym, method)


CHOLESKY_MIN_DIM = 16  # "auto" on a CPU: shifted Cholesky from this smaller block side on
CHOLESKY_MAX_TAPS = 49  # ... for kernels (after the polyphase split) of at most this many taps


def _use_cholesky(method: str, wd: torch.Tensor) -> bool:
    """``method="cholesky"``, or ``"auto"`` on a CPU with blocks whose smaller side is at least
    :data:`CHOLESKY_MIN_DIM` and at most :data:`CHOLESKY_MAX_TAPS` taps: forming the Gram blocks
    from the spatial kernel costs ``T^2 m n^2`` once, and one batched Cholesky ``n^3 / 3`` per
    block, against an SVD of ``~4 m n^2`` per block (measured on the AlexNet-shaped and the
    256-channel convolutions, benchmarks/cnn.py)."""
    if method == "cholesky":
        return True
    taps = math.prod(wd.shape[3:])
    return (method == "auto" and not wd.is_cuda and min(wd.shape[1:3]) >= CHOLESKY_MIN_DIM
            and taps <= CHOLESKY_MAX_TAPS)


def circular_conv_norm(weight: torch.Tensor, sizes: Sequence[int], dilation: Sequence[int], groups: int,
                       method: str = "auto") -> BlockNorm:
    """Norm of the stride-1 circular convolution ``(C x)[m] = sum_a w[a] x[(m + a d) mod H]``
    on the torus ``sizes``: the largest singular value over frequencies ``f`` of the
    ``c_out x c_in`` matrices ``sum_a w[a] exp(-2 pi i f a d / H)`` (per group), in float64
    (exact with ``method="svd"``, certified within ``GRAM_RTOL`` with ``"gram"``). The last axis
    keeps the frequencies ``0 .. H // 2``: the others are their conjugates."""
    g = groups
    c_out, cig, *k = weight.shape
    w = weight.detach().to(torch.complex128).reshape(g, c_out // g, cig, *k)
    for axis, (kk, d, h) in enumerate(zip(k, dilation, sizes)):
        freqs = h // 2 + 1 if axis == len(k) - 1 else h
        phase = torch.outer(torch.arange(freqs, dtype=torch.float64), torch.arange(kk, dtype=torch.float64) * d) / h
        dft = torch.exp(-2j * math.pi * phase).to(w.device)  # (H, k) on this axis
        w = torch.tensordot(w, dft, dims=([3 + axis], [1])).movedim(-1, 3 + axis)
    sym = w.reshape(g, c_out // g, cig, -1).permute(0, 3, 1, 2)
    return max_block_norm(sym, method)
