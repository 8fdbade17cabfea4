"""Gram iteration (lipbound.linalg.gram): a certified upper bound of spectral norms.

Oracle: the SVD of the materialised matrix (float64), computed by LAPACK, never by Gram iteration;
for convolutions, torch's own layer applied to basis vectors. The DFT/SVD bound is the reference
for tightness."""

from __future__ import annotations


import pytest
import torch

from lipbound.errors import InvalidInput
from lipbound.linalg.conv import Conv
from lipbound.linalg.gram import GRAM_RTOL, gram_bounds, gram_norm, max_block_norm
from lipbound.linalg.shifted_cholesky import max_eigenvalue_bound
from test_spectral import float64, random_conv_cases, svd_norm  # noqa: F401 (float64: an autouse fixture)

F64 = torch.float64


def _with_singular_values(s: torch.Tensor, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=gen, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=gen, dtype=F64))
    return (u * s) @ v.T


def _dense_cases():
    """Random, ill-conditioned (1e-15 and exactly singular), nearly tied top values, huge and tiny
    scales, complex, each in float64 and float32."""
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        m, n = int(torch.randint(1, 40, (1,), generator=gen)), int(torch.randint(1, 40, (1,), generator=gen))
        yield f"randn{i}", torch.randn(m, n, generator=gen, dtype=F64)
    r = 30
    yield "cond1e15", _with_singular_values(torch.logspace(0, -15, r, dtype=F64), 40, r, gen)
    singular = torch.logspace(0, -3, r, dtype=F64)
    singular[r // 2:] = 0
    yield "singular", _with_singular_values(singular, 35, r, gen)
    tied = torch.linspace(1, 0.1, r, dtype=F64)
    tied[1] = 1 - 1e-7
    yield "tied", _with_singular_values(tied, 32, r, gen)
    yield "dominant", _with_singular_values(torch.cat([torch.tensor([10.0], dtype=F64), torch.rand(r - 1, generator=gen, dtype=F64)]), 50, r, gen)
    yield "huge", torch.randn(20, 10, generator=gen, dtype=F64) * 1e200
    yield "tiny", torch.randn(20, 10, generator=gen, dtype=F64) * 1e-200
    yield "complex", torch.randn(20, 15, dtype=torch.complex128, generator=gen)


DENSE = [(name, a.to(dt)) for name, a in _dense_cases() for dt in (torch.float64, torch.float32)
         if not (dt == torch.float32 and name in ("huge", "tiny"))]


@pytest.mark.parametrize("name,a", DENSE, ids=[f"{n}-{a.dtype}" for n, a in DENSE])
def test_dense_bound_is_above_the_svd_norm_and_close_to_it(name, a):
    exact = svd_norm(a.to(torch.complex128 if a.is_complex() else torch.float64))  # of the matrix as given
    bound = gram_norm(a)
    assert bound >= exact, (name, bound, exact)
    slack = 1e-4 if a.dtype in (torch.float32, torch.complex64) else 1e-6
    if name == "tied":  # two top values within 1e-7: capped at 16 steps, 2^(1/2^17) = 1 + 5.3e-6 above
        slack = max(slack, 1e-5)
    assert bound <= exact * (1 + slack) + 1e-300, (name, bound / exact - 1)


def test_float32_with_a_dominant_value_needs_the_rounding_terms():
    """A dominant top singular value makes the float32 iteration converge to it within a few
    units of float32 rounding: without the error terms, the bound lands below the norm on some of
    these matrices (the mutation that drops them fails here)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        s = torch.cat([torch.tensor([1.0]), 0.3 * torch.rand(63, generator=gen)])
        a = _with_singular_values(s, 64, 64, gen).to(torch.float32)
        assert gram_norm(a) >= svd_norm(a.double())


def test_batched_bounds_hold_per_block_and_max_is_tight():
    gen = torch.Generator().manual_seed(2)
    blocks = torch.randn(30, 24, 16, dtype=torch.complex128, generator=gen)
    blocks[7] *= 3  # one block dominates: the others stop early and keep a looser certified bound
    bounds, steps = gram_bounds(blocks)
    exact = torch.linalg.matrix_norm(blocks, ord=2)
    assert bool((bounds >= exact).all())
    assert float(bounds.max()) <= float(exact.max()) * (1 + 2e-4)
    assert steps < 16


def test_too_few_steps_give_a_loose_bound_not_the_norm():
    """One step certifies ``||A^T A||_F^{1/2}``: above the norm, and far from it on a random matrix;
    reporting it as tight would fail the closeness checks above."""
    a = torch.randn(60, 60, generator=torch.Generator().manual_seed(3))
    exact = svd_norm(a)
    one = float(gram_bounds(a, max_iter=1, rtol=0)[0])
    assert exact < one and one > 1.5 * exact


def test_bad_input_is_refused():
    with pytest.raises(InvalidInput):
        gram_norm(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(InvalidInput):
        gram_norm(torch.zeros(0, 3))
    with pytest.raises(InvalidInput):
        max_block_norm(torch.ones(2, 2, 2), method="lanczos")
    assert gram_norm(torch.zeros(3, 4)) < 1e-200


def test_conv_gram_bounds_hold_on_random_layers(monkeypatch):
    """>= 200 random convolutions (1-D/2-D/3-D, strides, groups, dilations, paddings, transposed,
    circular): the Gram bound is >= the SVD norm of torch's own matrix, and within GRAM_RTOL of
    the DFT/SVD bound of the same layer (the reference path)."""
    for layer, shape, matrix, op in random_conv_cases(13, 220):
        convs = [o for o in getattr(op, "ops", [op]) if isinstance(o, Conv)]
        monkeypatch.setattr(Conv, "method", "svd")
        reference = op.structural_bound()
        monkeypatch.setattr(Conv, "method", "gram")
        gram = op.structural_bound()
        exact = svd_norm(matrix)
        assert gram.value >= exact, (layer, shape, gram, exact)
        assert gram.value <= reference.value * (1 + 2 * GRAM_RTOL), (layer, shape, gram, reference)
        assert not gram.exact and convs
        assert all("Gram iteration per frequency" in c.structural_bound().how for c in convs)


def test_conv_cholesky_bounds_hold_on_random_layers(monkeypatch):
    """>= 200 random convolutions: the shifted-Cholesky bound is >= the SVD norm of torch's own
    matrix, and within 3e-4 of the DFT/SVD bound of the same layer (the reference path)."""
    monkeypatch.setattr("lipbound.linalg.conv.CHOLESKY_MIN_DIM", 1)
    for layer, shape, matrix, op in random_conv_cases(17, 210):
        monkeypatch.setattr(Conv, "method", "svd")
        reference = op.structural_bound()
        monkeypatch.setattr(Conv, "method", "cholesky")
        bound = op.structural_bound()
        exact = svd_norm(matrix)
        convs = [o for o in getattr(op, "ops", [op]) if isinstance(o, Conv)]
        if any("SVD per frequency" in c.structural_bound().how for c in convs):  # circular padding on a torus
            assert bound.value == reference.value  # still the SVD path (exact)
            continue
        assert convs and all("shifted Cholesky per frequency" in c.structural_bound().how for c in convs)
        assert bound.value >= exact, (layer, shape, bound, exact)
        assert bound.value <= reference.value * (1 + 3e-4), (layer, shape, bound, reference)


GRAMS = [(name, a) for name, a in DENSE if name not in ("huge", "tiny")]


@pytest.mark.parametrize("name,a", GRAMS, ids=[f"{n}-{a.dtype}" for n, a in GRAMS])
def test_shifted_cholesky_bounds_the_largest_eigenvalue(name, a):
    """``max_eigenvalue_bound`` on ``A^* A`` (formed in float64 with its rounding bound) is >= the
    squared SVD norm of ``A`` and within 1e-3 of it; on a batch, >= every block's."""
    a = a.to(torch.complex128 if a.is_complex() else F64)
    exact = svd_norm(a) ** 2
    m = a.mH @ a
    err = 2 * (a.shape[0] + 2) * 2.0 ** -53 * float(torch.linalg.matrix_norm(a, ord="fro")) ** 2 * 1.01
    bound = max_eigenvalue_bound(m[None], err)
    assert bound.value >= exact, (name, bound, exact)
    assert bound.value <= exact * (1 + 1e-3) + 1e-12 * float(torch.linalg.matrix_norm(a, ord="fro")) ** 2
    assert bound.estimate <= exact * (1 + 1e-6)  # a single-precision Ritz value of the computed matrix


def test_shifted_cholesky_batch_and_failing_estimates():
    """A batch whose largest block hides from the power-iteration estimate (a tiny component in
    the start direction is not the cause; an isolated top block is): the bound still covers it."""
    gen = torch.Generator().manual_seed(3)
    blocks = torch.stack([_with_singular_values(torch.linspace(s, s / 10, 12, dtype=F64), 12, 12, gen)
                          for s in (1.0, 3.0, 2.0, 2.999)])
    grams = blocks.mT @ blocks
    norms = torch.linalg.matrix_norm(blocks, ord=2) ** 2
    got = max_eigenvalue_bound(grams, 1e-12, rtol=1e-6)
    assert got.value >= float(norms.max())
    assert got.value <= float(norms.max()) * (1 + 1e-5)
