"""Lanczos on ``A^T A`` (:func:`lipbound.linalg.lanczos.lanczos_norm`) on spectra whose top is
clustered, the case of AlexNet's first convolution (top two singular values ``5e-4`` apart above
a continuum). Oracle: the SVD of the materialised matrix (float64), and the witness ``v``
re-applied through the matrix, not through the operator that Lanczos used."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbound.linalg.lanczos import lanczos_norm
from lipbound.linalg.operators import Dense
from lipbound.frontends.torch_modules import operator_of_module


def clustered(n: int, gap: float, seed: int, tail: float, dtype=torch.float64) -> torch.Tensor:
    """A ``(n + 50) x n`` matrix with singular values ``1`` and a continuum in
    ``[1 - gap - tail, 1 - gap]`` below it, in random singular bases."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n + 50, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = 1 - gap - tail * torch.rand(n, generator=gen, dtype=torch.float64).sort(descending=True).values ** 2
    s[0] = 1.0
    return ((u * s) @ v.T).to(dtype)


def _check(w: torch.Tensor, res, exact: float, slack: float) -> None:
    """The value is a Rayleigh quotient of the returned real vector (re-evaluated in float64
    through the matrix) and does not exceed the norm."""
    v = res.v.reshape(-1).double()
    witnessed = float((w.double() @ v).norm() / v.norm())
    assert witnessed == pytest.approx(res.sigma, rel=10 * slack)
    assert res.sigma <= exact * (1 + slack) and witnessed <= exact * (1 + 1e-12)


@pytest.mark.parametrize("dtype, slack", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_lanczos_is_below_and_within_1e4_of_the_norm_on_clustered_spectra(dtype, slack):
    """``tol=1e-6``: at ``1e-5`` one of these (top ``2e-4`` above the continuum) stopped on the
    continuum's plateau at ``2.1e-4`` (see :mod:`lipbound.linalg.lanczos`, stopping)."""
    for seed in range(4):
        for gap in (1e-3, 5e-4, 2e-4):
            for tail in (0.02, 0.1):
                w = clustered(200, gap, seed, tail, dtype)
                exact = float(torch.linalg.matrix_norm(w.double(), ord=2))
                res = lanczos_norm(Dense(w, (200,)), tol=1e-6, generator=torch.Generator().manual_seed(seed))
                _check(w, res, exact, slack)
                assert res.sigma >= exact * (1 - 1e-4), (seed, gap, tail, res.sigma, exact, res.iterations)


def test_tol_1e4_is_met_on_a_top_pair_5e4_apart():
    """The stopping rule at ``tol=1e-4`` on AlexNet conv1's situation: windows of 5 steps stopped
    these (and conv1) at ``2-6e-4``; a spectrum whose top stands ``2e-4`` above a dense continuum
    can still stop early at this ``tol`` (module docstring of :mod:`lipbound.linalg.lanczos`)."""
    for seed in (0, 5, 9):
        w = clustered(300, 5e-4, seed, 0.1)
        exact = float(torch.linalg.matrix_norm(w, ord=2))
        res = lanczos_norm(Dense(w, (300,)), tol=1e-4, generator=torch.Generator().manual_seed(0))
        _check(w, res, exact, 1e-12)
        assert res.sigma >= exact * (1 - 1e-4), (seed, res.sigma, exact, res.iterations)
        assert res.stopped_by == "converged"


def test_lanczos_on_a_strided_convolution_is_below_its_svd_norm():
    """AlexNet conv1 in miniature (11x11, stride 4, 3 -> 8 channels): Lanczos through the
    operator against the SVD of torch's own matrix."""
    conv = nn.Conv2d(3, 8, 11, stride=4, padding=2)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(3))
    op = operator_of_module(conv, (3, 28, 28)).to(dtype=torch.float64)
    eye = torch.eye(op.in_numel, dtype=torch.float64).reshape(-1, *op.in_shape)
    w = torch.nn.functional.conv2d(eye, conv.weight.double(), stride=4, padding=2).reshape(op.in_numel, -1).T
    exact = float(torch.linalg.matrix_norm(w, ord=2))
    res = lanczos_norm(op, generator=torch.Generator().manual_seed(0))
    _check(w, res, exact, 1e-12)
    assert res.sigma >= exact * (1 - 1e-5)
