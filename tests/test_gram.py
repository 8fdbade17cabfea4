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


def _gram_cases():
    """>= 100 real matrices for the dense Gram + Cholesky certificate: random shapes (wide, tall,
    vectors), ill-conditioned (1e-15), rank-deficient (rank 1 and half rank), tied and nearly
    tied top values (1e-7, 1e-12 apart), a clustered top wider than the Lanczos steps, huge and
    tiny scales, zero; each in float64 and float32 (huge and tiny: float64 only)."""
    gen = torch.Generator().manual_seed(5)
    for i in range(44):
        m, n = (int(torch.randint(1, 90, (1,), generator=gen)) for _ in range(2))
        yield f"randn{i}", torch.randn(m, n, generator=gen, dtype=F64)
    r = 40
    yield "cond1e15", _with_singular_values(torch.logspace(0, -15, r, dtype=F64), 60, r, gen)
    yield "rank1", torch.randn(50, 1, generator=gen, dtype=F64) @ torch.randn(1, 70, generator=gen, dtype=F64)
    half = torch.logspace(0, -2, r, dtype=F64)
    half[r // 2:] = 0
    yield "halfrank", _with_singular_values(half, 45, r, gen)
    for name, second in [("tied", 1.0), ("tied1e-7", 1 - 1e-7), ("tied1e-12", 1 - 1e-12)]:
        s = torch.linspace(1, 0.1, r, dtype=F64)
        s[1] = second
        yield name, _with_singular_values(s, 50, r, gen)
    yield "cluster", _with_singular_values(1 - 1e-3 * torch.rand(150, generator=gen, dtype=F64), 160, 150, gen)
    yield "huge", torch.randn(30, 20, generator=gen, dtype=F64) * 1e200
    yield "tiny", torch.randn(30, 20, generator=gen, dtype=F64) * 1e-200
    yield "zero", torch.zeros(7, 5, dtype=F64)


GRAM_DENSE = [(name, a.to(dt)) for name, a in _gram_cases() for dt in (F64, torch.float32)
              if not (dt == torch.float32 and name in ("huge", "tiny"))]


def test_dense_gram_cholesky_bound_is_above_the_svd_norm_and_within_2e4():
    """The certificate (forced on small matrices) against the float64 SVD of the matrix as given:
    >= it always, and within 2e-4 (aimed at 1e-4) or else the SVD fallback (None)."""
    from lipbound.linalg.dense_gram import gram_cholesky_norm, matrix_norm_bound
    assert len(GRAM_DENSE) >= 100
    fell_back = []
    for name, a in GRAM_DENSE:
        exact = svd_norm(a.to(F64))
        bound = gram_cholesky_norm(a)
        if bound is None:
            fell_back.append(name)
            assert matrix_norm_bound(a, "cholesky").exact
            continue
        assert exact <= bound <= exact * (1 + 2e-4) + 1e-300, (name, a.dtype, bound, exact)
    assert len(fell_back) <= 2, fell_back


def test_dense_gram_cholesky_survives_a_bad_shift(monkeypatch):
    """With few Lanczos steps (LANCZOS_STEPS, 6, on a 120 x 120 Gram matrix) the shift misses the
    top eigenvalue: the factorisation fails and the eigenvalue fallback must catch it (treating a
    failed factorisation as a certificate gives a bound below the norm here)."""
    from lipbound.linalg.dense_gram import gram_cholesky_norm
    monkeypatch.setattr("lipbound.linalg.dense_gram.DENSE_REFINE_STEPS", 1)
    gen = torch.Generator().manual_seed(6)
    a = _with_singular_values(torch.linspace(1, 0.2, 120, dtype=F64), 150, 120, gen)
    bound = gram_cholesky_norm(a)
    assert bound is None or svd_norm(a) <= bound <= svd_norm(a) * (1 + 2e-4)


def test_symmetric_gram_rounding_bound_covers_the_exact_product():
    """``_symmetric_gram`` (blocked) against the exact Gram matrix in rational arithmetic: equal
    to one GEMM's entries up to rounding, and within the Frobenius bound gamma_k ||W||_F^2."""
    from fractions import Fraction

    from lipbound.linalg.dense_gram import _symmetric_gram
    from lipbound.linalg.float_units import gamma
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(9, 300, generator=gen, dtype=F64) * torch.logspace(0, 6, 300, dtype=F64)
    g = _symmetric_gram(w, rows=4)
    rows = [[Fraction(float(x)) for x in r] for r in w]
    err2 = sum(float(Fraction(float(g[i, j])) - sum(x * y for x, y in zip(rows[i], rows[j]))) ** 2
               for i in range(9) for j in range(9))
    assert err2 ** 0.5 <= gamma(300) * float(w.norm()) ** 2
    assert torch.equal(g, g.T)
    assert torch.allclose(g, w @ w.T, rtol=1e-12, atol=0)


def test_dense_norm_choice_and_bad_input():
    """``auto`` keeps the exact SVD for small weights and takes the certificate from
    CHOLESKY_MIN_SIDE on (>= the SVD norm, within 2e-4); NaN weights and unknown methods are refused."""
    from lipbound.linalg.dense_gram import CHOLESKY_MIN_SIDE, matrix_norm_bound
    from lipbound.linalg.operators import Dense
    gen = torch.Generator().manual_seed(9)
    small = torch.randn(40, 30, generator=gen, dtype=F64)
    assert Dense(small, (30,)).structural_bound().exact
    big = torch.randn(CHOLESKY_MIN_SIDE, CHOLESKY_MIN_SIDE + 7, generator=gen, dtype=F64)
    b = Dense(big, (CHOLESKY_MIN_SIDE + 7,)).structural_bound()
    assert not b.exact and "Cholesky" in b.how
    assert svd_norm(big) <= b.value <= svd_norm(big) * (1 + 2e-4)
    with pytest.raises(InvalidInput):
        matrix_norm_bound(torch.tensor([[1.0, float("nan")]]), "cholesky")
    with pytest.raises(ValueError):
        matrix_norm_bound(small, "qr")


def test_single_precision_certificate_on_blocks_far_below_the_top(monkeypatch):
    """Blocks whose largest eigenvalues spread over [0.5, 1] (each Frobenius norm above the top,
    so nearly every block is factorised), at scale 1 and 1e80 (the power-of-two scaling path): the bound
    covers every block (eigvalsh oracle) within 1e-3, and equals the all-float64 bound's coverage
    (every block in float64)."""
    import lipbound.linalg.shifted_cholesky as sc
    gen = torch.Generator().manual_seed(10)
    scales = torch.logspace(0, -0.15, 40, dtype=F64)
    blocks = torch.stack([_with_singular_values(torch.linspace(s, s / 5, 24, dtype=F64), 24, 24, gen)
                          for s in scales.tolist()])
    for scale in (1.0, 1e80):
        grams = (blocks.mT @ blocks) * scale
        lam = torch.linalg.eigvalsh(grams)[:, -1]
        got = max_eigenvalue_bound(grams, 1e-13 * scale)
        assert float(lam.max()) <= got.value <= float(lam.max()) * (1 + 1e-3), scale
        assert got.factorised >= 30  # the few lowest are certified by their row sums (Hoelder) alone
        cheap = sc._certify_single(*sc.to_single(grams[20:], 1e-13 * scale), 0.9 * float(lam.max()))
        assert bool((cheap >= lam[20:]).all()) and bool((cheap <= float(lam.max())).all()), scale

