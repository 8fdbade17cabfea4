"""The conjugate-pair halving of the frequency grid (lipbound.linalg.conv_gram.half_spectrum_mask)
and the certified conv norms that use it.

Oracles: the orbits ``{f, -f mod N}`` of the full grid enumerated in Python; the norm of the
circular convolution from ``torch.fft.fftn`` over *every* frequency and ``svdvals`` per block
(no half spectrum, no halving)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lipbound.linalg.conv import conv_dft_bound
from lipbound.linalg.conv_gram import _half_grid, half_spectrum_mask

GRIDS = [(1,), (2,), (7,), (8,), (3, 4), (4, 4), (5, 5), (6, 3), (2, 3, 4), (3, 3, 3), (4, 1, 2)]


@pytest.mark.parametrize("grid", GRIDS)
def test_kept_frequencies_meet_every_conjugate_orbit_once(grid):
    kept = [tuple(f) for f in _half_grid(grid)[half_spectrum_mask(grid)].tolist()]
    orbits = {frozenset({f, tuple((-a) % n for a, n in zip(f, grid))})
              for f in itertools.product(*[range(n) for n in grid])}
    met = [next(o for o in orbits if f in o) for f in kept]
    assert len(met) == len(set(met)) == len(orbits), (grid, kept)


def _circular_norm_all_frequencies(w: torch.Tensor, grid, groups: int) -> float:
    """Stride-1 circular convolution norm: max singular value over all ``prod(grid)`` blocks."""
    g = groups
    c_out, cig, *k = w.shape
    sym = torch.fft.fftn(w.double().reshape(g, c_out // g, cig, *k), s=grid, dim=tuple(range(3, 3 + len(k))))
    blocks = sym.reshape(g, c_out // g, cig, -1).permute(0, 3, 1, 2)
    return float(torch.linalg.svdvals(blocks).max())


def _cases():
    gen = torch.Generator().manual_seed(3)
    for i in range(60):
        nd = 1 + i % 3
        groups = 1 + i % 2
        cin = groups * int(torch.randint(1, 5, (1,), generator=gen))
        cout = groups * int(torch.randint(1, 5, (1,), generator=gen))
        k = [int(torch.randint(1, 4, (1,), generator=gen)) for _ in range(nd)]
        grid = [max(kk, int(torch.randint(1, 8 if nd < 3 else 5, (1,), generator=gen))) for kk in k]
        scale = 10.0 ** float(torch.randint(-30, 30, (1,), generator=gen)) if i % 7 == 0 else 1.0
        w = torch.randn(cout, cin // groups, *k, generator=gen, dtype=torch.float64) * scale
        if i % 5 == 0:  # a kernel whose top block sits at one chosen frequency, self-paired or not
            f = [int(torch.randint(0, n, (1,), generator=gen)) for n in grid]
            phase = sum(torch.arange(kk).reshape([-1 if j == a else 1 for j in range(nd)]) * ff / n
                        for a, (kk, ff, n) in enumerate(zip(k, f, grid)))
            w = w * 0.05 + torch.cos(2 * math.pi * phase)
        yield w, grid, groups


CASES = list(_cases())


@pytest.mark.parametrize("method", ["svd", "cholesky"])
def test_halved_spectrum_norms_equal_the_full_spectrum_norm(method):
    """The DFT/SVD bound (exact) and the shifted-Cholesky bound (certified, aimed 1e-4) on the
    halved spectrum against the full-spectrum oracle: equal / above and within 3e-4."""
    for w, grid, groups in CASES:
        nd = w.dim() - 2
        oracle = _circular_norm_all_frequencies(w, grid, groups)
        got = conv_dft_bound(w, grid, (1,) * nd, (1,) * nd, groups, method).value
        if method == "svd":
            assert got == pytest.approx(oracle, rel=1e-12), (w.shape, grid, groups)
        else:
            assert oracle * (1 - 1e-12) <= got <= oracle * (1 + 3e-4), (w.shape, grid, groups, got, oracle)
