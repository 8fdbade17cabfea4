"""The shifted-Cholesky certificate on a convolution's frequency blocks: the cheap norm bound that
lets a block skip its factorisation, and the per-block single-precision shifts. Oracle: the
singular values of the kernel's DFT on the full grid (``torch.fft.fftn`` + ``svdvals`` in float64),
which shares no code with the Gram blocks."""

from __future__ import annotations

import math

import pytest
import torch

import lipbound.linalg.shifted_cholesky as sc
from lipbound.linalg.conv_gram import conv_cholesky_bound

F64 = torch.float64


def _dft_top(w: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """Per frequency of the full grid, the largest singular value of the kernel's DFT block."""
    sym = torch.fft.fftn(w.to(F64), s=grid, dim=(-2, -1))  # (m, n, *grid)
    return torch.linalg.svdvals(sym.permute(2, 3, 0, 1).reshape(-1, *w.shape[:2]))[:, 0]


def _blocks(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(8, n, n, generator=gen, dtype=torch.complex128)
    if kind == "lowrank":
        a = a[:, :, :2] @ a[:, :2, :]
    m = a.mH @ a
    if kind == "diagonal":
        m = torch.diag_embed(torch.rand(8, n, generator=gen, dtype=F64) * 10).to(m) + 1e-3 * m
    if kind == "nonhermitian":  # the rounding of a computed block
        m = m + 1e-6 * torch.randn(8, n, n, generator=gen, dtype=torch.complex128)
    return m


@pytest.mark.parametrize("kind", ["random", "lowrank", "diagonal", "nonhermitian"])
def test_cheap_norm_bound_is_above_the_spectral_norm(kind):
    gen = torch.Generator().manual_seed(4)
    for n in (1, 5, 40):
        m = _blocks(kind, n, gen)
        for mats in (m, m.real.contiguous()):
            got = sc._hoelder_up(mats)
            exact = torch.linalg.matrix_norm(mats, ord=2)
            assert bool((got >= exact).all()), (kind, n, (got / exact).min())


def test_skipped_frequencies_of_a_smooth_kernel_are_below_the_bound(monkeypatch):
    """A low-pass kernel (Gaussian taps): most frequencies are certified by their norm bound alone,
    none of them factorised; the result still covers every frequency of the full grid."""
    gen = torch.Generator().manual_seed(6)
    taps = torch.exp(-((torch.arange(5, dtype=F64) - 2) ** 2) / 2)
    w = torch.randn(20, 20, 1, 1, generator=gen, dtype=F64) * (taps[:, None] * taps[None, :])
    w += 0.01 * torch.randn(20, 20, 5, 5, generator=gen, dtype=F64)
    grid = [14, 14]
    got = conv_cholesky_bound(w[None], grid)
    top = _dft_top(w, grid)
    assert got.value >= float(top.max())
    assert got.value <= float(top.max()) * (1 + 3e-4)
    half = grid[0] * (grid[1] // 2 + 1)
    assert got.factorised < half // 3, got  # the skip is exercised


def test_single_precision_shifts_certify_most_blocks_of_a_random_conv(monkeypatch):
    """A random 48-channel 3x3 kernel: its frequency blocks lie within a few percent of the top;
    each block's own shift (:func:`_single_shifts`) lets most of them be certified in complex64,
    and the bound still covers the full grid's DFT norm within 1e-4 (relative, on the norm)."""
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(48, 48, 3, 3, generator=gen, dtype=F64) / 12
    grid = [10, 10]
    dtypes: list[torch.dtype] = []
    certify = sc._certify

    def spy(mats, tau, err, overwrite=False):
        dtypes.extend([mats.dtype] * mats.shape[0])
        return certify(mats, tau, err, overwrite)

    monkeypatch.setattr(sc, "_certify", spy)
    got = conv_cholesky_bound(w[None], grid)
    top = float(_dft_top(w, grid).max())
    assert top <= got.value <= top * (1 + 3e-4)
    single = dtypes.count(torch.complex64)
    assert single >= 0.7 * len(dtypes), (single, len(dtypes))
    assert math.isfinite(got.value) and got.fallback == 0


def test_blocks_skipped_on_their_norm_bound_are_below_the_result():
    """Nearly diagonal blocks (their row-sum bound is within 1% of their top eigenvalue), the
    largest among them: blocks are skipped (not factorised) and the result still covers every
    block's top eigenvalue (``eigvalsh`` oracle)."""
    gen = torch.Generator().manual_seed(2)
    n, b = 16, 12
    diag = torch.rand(b, n, generator=gen, dtype=F64) * torch.linspace(0.5, 1, b, dtype=F64)[:, None]
    noise = torch.randn(b, n, n, generator=gen, dtype=F64) * 1e-4
    mats = torch.diag_embed(diag) + noise @ noise.mT
    lam = torch.linalg.eigvalsh(mats)[:, -1]
    got = sc.max_eigenvalue_bound(mats, 1e-15)
    assert float(lam.max()) <= got.value <= float(lam.max()) * (1 + 1e-3)
    assert got.factorised < b


def _hidden_top_batch(n: int = 24) -> tuple[torch.Tensor, float]:
    """Twelve symmetric blocks: eleven decoys whose top eigenvector (eigenvalue 1) is the fixed
    Lanczos start, and one whose top eigenvalue 1.5 has an eigenvector nearly orthogonal to it
    (overlap 1e-3) above eigenvalues <= 0.5: one-step estimates rank it last."""
    gen = torch.Generator().manual_seed(12)
    q = 1 + torch.arange(n, dtype=F64).mul(0.618).remainder(1)
    q = q / q.norm()
    mats = []
    for b in range(12):
        basis, _ = torch.linalg.qr(torch.cat([q[:, None], torch.randn(n, n - 1, generator=gen, dtype=F64)], 1))
        if b == 11:  # the top direction: mostly the second basis vector, 1e-3 of the start
            basis[:, 0], basis[:, 1] = 1e-3 * basis[:, 0] + (1 - 1e-6) ** 0.5 * basis[:, 1], basis[:, 0]
            basis, _ = torch.linalg.qr(basis)
            lam = torch.cat([torch.tensor([1.5], dtype=F64), torch.linspace(0.5, 0.1, n - 1, dtype=F64)])
        else:
            lam = torch.cat([torch.tensor([1.0], dtype=F64), torch.linspace(0.6, 0.1, n - 1, dtype=F64)])
        mats.append((basis * lam) @ basis.T)
    mats = torch.stack(mats)
    return mats, float(torch.linalg.eigvalsh(mats)[:, -1].max())


@pytest.mark.parametrize("refine_steps", [24, 1])
def test_a_block_above_the_target_is_retried_not_left_at_its_frobenius_bound(monkeypatch, refine_steps):
    """The top block is ranked last by one-step estimates, so its factorisation at the target
    fails: it is retried at its Ritz value (``refine_steps`` Lanczos steps: all 24 find it, with
    no ``eigvalsh``), else at its eigenvalue (``eigvalsh``, when one step does not), and the bound
    is within 1e-3 of the largest eigenvalue with no block left at its Frobenius bound."""
    mats, top = _hidden_top_batch()
    calls = []
    eigvalsh = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda m: calls.append(bool((m.triu(2) != 0).any())) or eigvalsh(m))
    got = sc.max_eigenvalue_bound(mats, 1e-15, steps=1, refine_steps=refine_steps)
    assert top <= got.value <= top * (1 + 1e-3) and got.fallback == 0, got
    assert (True not in calls) == (refine_steps == 24), calls  # eigvalsh of a full block (not Lanczos' tridiagonal)
