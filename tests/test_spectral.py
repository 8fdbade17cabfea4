"""Layer norms: power method (lower) and certified values (upper) against exact SVDs."""

import itertools

import pytest
import torch
from torch import nn

import lipbound
from lipbound import spectral_norm
from lipbound.graph.from_torch import operator_of_module
from lipbound.linalg import Dense, power_method
from lipbound.linalg.operators import conv_dft_bound
from lipbound.linalg.spectral import certified_norm



@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in float64 (restored afterwards: other test files build float32 models)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def exact_norm(op) -> float:
    return torch.linalg.matrix_norm(op.to(dtype=torch.float64).to_dense(), ord=2).item()


@pytest.mark.parametrize("shape", [(7, 5), (30, 64), (64, 30), (1, 40)])
def test_power_method_matches_svd_on_dense(shape):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=g)
    exact = torch.linalg.matrix_norm(w, ord=2).item()
    for k in (1, 4):
        pm = power_method(Dense(w, (shape[1],)), k=k, tol=1e-14, max_iter=5000, generator=g)
        assert pm.sigma <= exact * (1 + 1e-12)
        assert pm.sigma == pytest.approx(exact, rel=1e-6)
    sn = spectral_norm(w)
    assert sn.lower <= exact * (1 + 1e-12) <= sn.upper
    assert sn.upper == pytest.approx(exact, rel=1e-8)


def test_power_method_returns_singular_vectors():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(12, 9, generator=g)
    pm = power_method(Dense(w, (9,)), k=3, tol=1e-14, max_iter=5000, generator=g, n_converged=3)
    s = torch.linalg.svdvals(w)
    assert torch.allclose(pm.sigmas, s[:3], rtol=1e-6)
    # A v_i = s_i u_i with unit vectors
    assert torch.allclose(pm.v @ w.T, pm.sigmas[:, None] * pm.u, atol=1e-6)
    assert torch.allclose(pm.v.norm(dim=1), torch.ones(3))


def test_power_method_checks_arguments():
    op = Dense(torch.eye(3), (3,))
    with pytest.raises(ValueError, match="block size"):
        power_method(op, k=0)
    with pytest.raises(ValueError, match="max_iter"):
        power_method(op, max_iter=0)


def _conv_cases():
    for k, s, p, d, g in itertools.product([1, 2, 3, 5], [1, 2, 3], [0, 1, 2], [1, 2], [1, 2]):
        yield nn.Conv2d(4, 6, k, stride=s, padding=p, dilation=d, groups=g), (4, 9, 8)
    for k, s, p in itertools.product([2, 3], [1, 2], [0, 1]):
        yield nn.ConvTranspose2d(4, 6, k, stride=s, padding=p), (4, 5, 6)
        yield nn.ConvTranspose2d(4, 6, k, stride=s, padding=p, output_padding=s - 1), (4, 5, 6)
        yield nn.Conv1d(3, 5, k, stride=s, padding=p), (3, 11)
        yield nn.ConvTranspose1d(3, 5, k, stride=s, padding=p), (3, 7)
        yield nn.Conv3d(2, 3, k, stride=s, padding=p), (2, 5, 4, 6)
    yield nn.Conv2d(3, 4, 3, padding="same"), (3, 7, 7)
    yield nn.Conv2d(3, 4, 4, padding="same", dilation=2), (3, 9, 9)
    yield nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), (3, 6, 6)
    yield nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (3, 6, 6)


def test_conv_certified_bound_and_power_method_bracket_the_exact_norm():
    torch.manual_seed(0)
    checked = 0
    for m, shape in _conv_cases():
        try:
            op = operator_of_module(m, shape)
        except RuntimeError:  # output size would be empty
            continue
        exact = exact_norm(op)
        bound = op.structural_bound().value
        pm = power_method(op, k=4, tol=1e-9, max_iter=3000).sigma
        assert bound >= exact * (1 - 1e-10), (m, shape, bound, exact)
        assert pm <= exact * (1 + 1e-10), (m, shape, pm, exact)
        assert pm >= exact * (1 - 1e-5), (m, shape, pm, exact)
        checked += 1
    assert checked > 150


def test_dft_bound_is_exact_for_circular_convolution():
    """On a circular stride-1 convolution the bound is the norm itself, not only above it."""
    torch.manual_seed(3)
    m = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular", bias=False)
    x_shape = (3, 6, 6)
    op = operator_of_module(m, x_shape)
    exact = exact_norm(op)
    bound = conv_dft_bound(m.weight, (6, 6), (1, 1), (1, 1), 1)
    assert bound == pytest.approx(exact, rel=1e-9)


def test_strided_bound_is_tighter_than_the_stride_one_bound():
    torch.manual_seed(4)
    w = torch.randn(8, 3, 4, 4)
    strided = conv_dft_bound(w, (34, 34), (2, 2), (1, 1), 1)
    unstrided = conv_dft_bound(w, (34, 34), (1, 1), (1, 1), 1)
    assert strided < unstrided


def test_certified_norm_of_large_conv_uses_the_dft_and_bounds_the_power_method():
    torch.manual_seed(5)
    m = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    sn = spectral_norm(m, (16, 64, 64))
    assert "DFT" in sn.how
    assert sn.lower <= sn.upper
    assert sn.ratio < 1.5


@pytest.mark.parametrize("module,shape", [
    (nn.AvgPool2d(2), (3, 8, 8)),
    (nn.AvgPool2d(3, stride=1, padding=1), (2, 6, 6)),
    (nn.AdaptiveAvgPool2d((3, 2)), (2, 7, 5)),
    (nn.ReflectionPad2d(2), (2, 5, 5)),
    (nn.ReplicationPad1d((1, 3)), (2, 6)),
    (nn.Upsample(scale_factor=2, mode="bilinear"), (2, 4, 4)),
    (nn.ZeroPad2d((1, 0, 2, 1)), (2, 4, 4)),
])
def test_schur_bound_of_nonnegative_operators(module, shape):
    op = operator_of_module(module, shape)
    exact = exact_norm(op)
    bound = op.structural_bound().value
    assert bound >= exact * (1 - 1e-12)
    assert bound <= exact * 2.5  # the Schur test is close for these


def test_batchnorm_norm_is_max_scale():
    bn = nn.BatchNorm2d(3).eval()
    bn.running_var.copy_(torch.tensor([0.5, 2.0, 4.0]))
    bn.weight.data.copy_(torch.tensor([1.0, -3.0, 0.5]))
    sn = spectral_norm(bn, (3, 4, 4))
    expected = (3.0 / (2.0 + bn.eps) ** 0.5)
    assert sn.upper == pytest.approx(expected, rel=1e-8)
    assert sn.lower == pytest.approx(expected, rel=1e-6)


def test_certified_norm_of_operator_without_bound_is_infinite_when_large():
    from lipbound.linalg import Function
    op = Function(lambda x: x.flip(-1) - 0.5 * x, (1000,), "custom")
    assert certified_norm(op, dense_limit=100).value == float("inf")
    assert certified_norm(op).value == pytest.approx(1.5, rel=1e-8)


def test_affine_containers_and_unitary_factors_keep_exact_norms():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 20))
    sn = spectral_norm(model, (3, 32, 32))
    exact = torch.linalg.matrix_norm(model[1].weight, ord=2).item()
    assert sn.exact and sn.upper == pytest.approx(exact, rel=1e-8)
    with pytest.raises(lipbound.InvalidInput, match="affine module"):
        spectral_norm(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (3,))
