"""The convolution's Gram blocks formed directly in single precision
(lipbound.linalg.conv_gram.GramSymbol.single) and the certified bounds built on them.

Oracles, sharing no code with the Gram kernel: the blocks ``A(f)^* A(f)`` from the kernel's DFT
(``torch.fft.fftn`` in complex128), and the SVD of the layer's materialised matrix (torch's own
layer applied to basis vectors)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lipbound.errors import InvalidInput
from lipbound.linalg.conv import Conv
from lipbound.linalg.conv_gram import GramSymbol, conv_cholesky_bound
from lipbound.linalg.shifted_cholesky import _frobenius_up
from test_spectral import operator_of_module, svd_norm

F64 = torch.float64


def _dft_blocks(wd: torch.Tensor, symbol: GramSymbol) -> torch.Tensor:
    """``A(f)^* A(f)`` at the symbol's frequencies, group-major, from ``fftn`` in complex128."""
    if wd.shape[1] < wd.shape[2]:
        wd = wd.transpose(1, 2)
    nd = wd.dim() - 3
    sym = torch.fft.fftn(wd.to(F64), s=symbol.grid, dim=tuple(range(3, 3 + nd)))
    a = sym[(slice(None), slice(None), slice(None), *symbol.freqs.T)]  # (g, m, n, F)
    a = a.permute(0, 3, 1, 2)
    return (a.mH @ a).reshape(-1, wd.shape[2], wd.shape[2])


def _kernels():
    """Random kernels (1-D and 2-D taps, groups, wide and tall, offsets that are their own
    negatives on the grid, a single tap), an ill-conditioned one
    (singular values of every tap from 1 to 1e-8), and tiny and huge scales (the power-of-two
    scaling of the single-precision blocks)."""
    gen = torch.Generator().manual_seed(21)
    yield "random2d", torch.randn(1, 12, 9, 3, 3, generator=gen, dtype=F64), [7, 6]
    yield "groups1d", torch.randn(3, 5, 8, 4, generator=gen, dtype=F64), [9]
    yield "tall", torch.randn(2, 16, 6, 2, 3, generator=gen, dtype=F64), [5, 8]
    u, _ = torch.linalg.qr(torch.randn(9, 10, 10, generator=gen, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(9, 10, 10, generator=gen, dtype=F64))
    ill = (u * torch.logspace(0, -8, 10, dtype=F64)) @ v.mT
    yield "illcond", ill.permute(1, 2, 0).reshape(1, 10, 10, 3, 3), [6, 6]
    yield "selfpaired", torch.randn(1, 6, 5, 3, 3, generator=gen, dtype=F64), [4, 3]  # offsets 2 = -2 mod 4
    yield "1x1", torch.randn(2, 6, 6, 1, 1, generator=gen, dtype=F64), [5, 5]  # one offset, its own partner
    base = torch.randn(1, 7, 7, 3, 3, generator=gen, dtype=F64)
    for scale in (1e-30, 1e30, 1e-150):
        yield f"scale{scale:g}", base * scale, [5, 5]


@pytest.mark.parametrize("name,wd,grid", list(_kernels()), ids=[k[0] for k in _kernels()])
def test_single_precision_blocks_are_within_their_rounding_bound(name, wd, grid):
    """Every complex64 block (times ``2^e``) is within its stated Frobenius error of the exact
    block (DFT oracle, accurate to ~1e-14 of its norm)."""
    symbol = GramSymbol(wd, grid)
    single = symbol.single(0, len(symbol))
    assert single.low.dtype == torch.complex64
    exact = _dft_blocks(wd, symbol)
    got = single.low.to(torch.complex128) * 2.0 ** single.e
    unit = 2.0 ** math.frexp(float(torch.view_as_real(exact).abs().max()))[1]  # norms of tiny blocks would underflow
    dist = torch.linalg.matrix_norm((got - exact) / unit) * unit
    slack = 1e-12 * torch.linalg.matrix_norm(exact / unit) * unit
    assert bool((dist <= single.err * 2.0 ** single.e + slack).all()), (name, (dist / (single.err * 2.0 ** single.e)).max())
    assert bool((dist > 0).any())  # the blocks are rounded: the comparison is not vacuous
    assert float(single.err.max()) * 2.0 ** single.e <= 1e-4 * float(torch.linalg.matrix_norm(exact / unit).max()) * unit


def test_frobenius_bound_covers_underflow_and_every_format():
    """``_frobenius_up`` is >= the Frobenius norm (float64 oracle on power-of-two scaled copies)
    for float32, complex64, float64 and complex128 blocks, including entries whose squares
    underflow."""
    gen = torch.Generator().manual_seed(22)
    for dtype in (torch.float32, torch.complex64, F64, torch.complex128):
        for scale in (1.0, 1e-22, 1e-160):
            if scale < 1e-40 and dtype in (torch.float32, torch.complex64):
                continue
            m = (torch.randn(4, 9, 9, generator=gen, dtype=torch.complex128) * scale).to(dtype)
            exact = torch.linalg.matrix_norm((m.to(torch.complex128) / scale)) * scale
            assert bool((_frobenius_up(m) >= exact).all()), (dtype, scale)


def _matrix(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's matrix in float64: a float64 copy applied to the basis vectors."""
    n = math.prod(shape)
    with torch.no_grad():
        return copy.deepcopy(layer).double()(torch.eye(n, dtype=F64).reshape(n, *shape)).reshape(n, -1).T


def _layers():
    gen = torch.Generator().manual_seed(23)
    torch.manual_seed(23)
    yield nn.Conv2d(6, 8, 3, padding=1, bias=False), (6, 7, 7)
    yield nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False), (8, 9, 8)
    yield nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, bias=False), (6, 6, 7)
    yield nn.Conv1d(5, 9, 4, stride=3, padding=2, bias=False), (5, 17)
    yield nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, bias=False), (6, 5, 4)
    ill = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        u, _ = torch.linalg.qr(torch.randn(9, 8, 8, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(9, 8, 8, generator=gen))
        ill.weight.copy_(((u * torch.logspace(0, -7, 8)) @ v.mT).permute(1, 2, 0).reshape(8, 8, 3, 3))
    yield ill, (8, 6, 6)
    tiny = nn.Conv2d(5, 5, 3, padding=1, bias=False)
    with torch.no_grad():
        tiny.weight.mul_(1e-25)  # float32 weights: Gram entries ~1e-52 would vanish in float32 unscaled
    yield tiny, (5, 6, 6)


@pytest.mark.parametrize("precision", ["highest", "medium"])
def test_certified_bound_is_above_the_norm_with_single_precision_blocks(monkeypatch, precision):
    """Float32 layers (strides, dilation, groups, 1-D, transposed, ill-conditioned, tiny): the
    shifted-Cholesky bound with the single-precision blocks (forced on small layers) is >= the
    SVD norm of torch's own matrix and within 3e-4 of it on the circular grid's DFT/SVD bound.
    Under ``set_float32_matmul_precision("medium")`` (bf16 products allowed) the blocks come from
    complex128 instead, with the same guarantee."""
    monkeypatch.setattr("lipbound.linalg.conv.CHOLESKY_MIN_DIM", 1)
    formed = []
    original = GramSymbol._prepare_single
    monkeypatch.setattr(GramSymbol, "_prepare_single", lambda self: formed.append(1) or original(self))
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        for layer, shape in _layers():
            op = operator_of_module(layer, shape)
            monkeypatch.setattr(Conv, "method", "cholesky")
            bound = op.structural_bound()
            monkeypatch.setattr(Conv, "method", "svd")
            reference = op.structural_bound()
            exact = svd_norm(_matrix(layer, shape))
            assert exact <= bound.value <= reference.value * (1 + 3e-4), (layer, bound, exact, reference)
    finally:
        torch.set_float32_matmul_precision(old)
    assert (len(formed) > 0) == (precision == "highest")


def test_cholesky_bound_of_a_kernel_with_nonfinite_entries_is_refused():
    w = torch.randn(6, 6, 3, 3, dtype=F64)
    w[1, 2, 0, 1] = float("nan")
    with pytest.raises(InvalidInput):
        Conv(w, (6, 5, 5), (1, 1), (1, 1), (1, 1)).structural_bound()
    assert conv_cholesky_bound(w[None].nan_to_num(), [7, 7]).value > 0
