"""Layer norms: power method (lower) and certified values (upper) against exact SVDs."""

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbound
from lipbound import spectral_norm
from lipbound.frontends.from_torch import operator_of_module
from lipbound.linalg import Compose, Conv, Dense, Diagonal, Function, Permute, Reshape, compose, power_method
from lipbound.linalg.operators import conv_dft_bound
from lipbound.linalg.spectral import certified_norm, operator_norms
from lipbound.linalg.structured import selection, separable


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
    bound = conv_dft_bound(m.weight, (6, 6), (1, 1), (1, 1), 1).value
    assert bound == pytest.approx(exact, rel=1e-9)


def test_strided_bound_is_tighter_than_the_stride_one_bound():
    torch.manual_seed(4)
    w = torch.randn(8, 3, 4, 4)
    strided = conv_dft_bound(w, (34, 34), (2, 2), (1, 1), 1).value
    unstrided = conv_dft_bound(w, (34, 34), (1, 1), (1, 1), 1).value
    assert strided < unstrided


def test_certified_norm_of_large_conv_uses_the_dft_and_bounds_the_power_method():
    torch.manual_seed(5)
    m = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    sn = spectral_norm(m, (16, 32, 32))
    assert "DFT" in sn.how
    assert sn.lower <= sn.upper
    assert sn.ratio < 1.5




def test_batchnorm_norm_is_max_scale():
    bn = nn.BatchNorm2d(3).eval()
    bn.running_var.copy_(torch.tensor([0.5, 2.0, 4.0]))
    bn.weight.data.copy_(torch.tensor([1.0, -3.0, 0.5]))
    sn = spectral_norm(bn, (3, 4, 4))
    expected = (3.0 / (2.0 + bn.eps) ** 0.5)
    assert sn.upper == pytest.approx(expected, rel=1e-8)
    assert sn.lower == pytest.approx(expected, rel=1e-6)


def test_certified_norm_of_operator_without_bound_is_infinite_when_large():
    op = Function(lambda x: x.flip(-1) - 0.5 * x, (1000,), "custom")
    assert certified_norm(op, dense_limit=100).value == float("inf")
    big = certified_norm(op)  # 1000 x 1000: the Gram + shifted-Cholesky certificate, within 1e-4
    assert 1.5 <= big.value <= 1.5 * (1 + 2e-4) and not big.exact and "Cholesky" in big.how


def test_affine_containers_and_unitary_factors_keep_exact_norms():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 20))
    sn = spectral_norm(model, (3, 32, 32))
    exact = torch.linalg.matrix_norm(model[1].weight, ord=2).item()
    assert sn.exact and sn.upper == pytest.approx(exact, rel=1e-8)
    with pytest.raises(lipbound.InvalidInput, match="affine module"):
        spectral_norm(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (3,))


# ---- structured operators: pooling, resizing, padding (Kronecker), indexing (Gather) ----------------
# The oracle is the SVD of the matrix of torch's own function, materialised from basis vectors: it
# never goes through lipbound's read-off or operators.

def torch_matrix(fn, shape) -> torch.Tensor:
    n = math.prod(shape)
    with torch.no_grad():
        return fn(torch.eye(n).reshape(n, *shape)).reshape(n, -1).T


def svd_norm(m: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(m, ord=2).item()


def _resize_cases():
    for mode, ac, aa in [("bilinear", False, False), ("bilinear", True, False), ("bilinear", False, True),
                         ("bicubic", False, False), ("bicubic", True, False), ("bicubic", False, True),
                         ("bicubic", True, True), ("nearest", None, False), ("nearest-exact", None, False),
                         ("area", None, False)]:
        for size in [dict(scale_factor=2), dict(scale_factor=0.5), dict(size=(5, 11)), dict(scale_factor=(1.7, 0.6))]:
            if mode == "area" and "scale_factor" in size and size["scale_factor"] == (1.7, 0.6):
                continue
            yield (lambda z, kw=size, m=mode, a=ac, x=aa:
                   F.interpolate(z, mode=m, align_corners=a, antialias=x, **kw)), (2, 7, 9)
    yield (lambda z: F.interpolate(z, scale_factor=1.5, mode="linear", align_corners=True)), (2, 7)
    yield (lambda z: F.interpolate(z, size=4, mode="linear")), (2, 9)
    yield (lambda z: F.interpolate(z, scale_factor=(1.5, 2, 0.7), mode="trilinear")), (2, 3, 4, 5)
    yield (lambda z: F.interpolate(z, size=(4, 5, 2), mode="nearest")), (1, 3, 4, 5)
    yield nn.Upsample(scale_factor=2, mode="bicubic"), (2, 5, 6)
    yield nn.Upsample(size=(4, 9), mode="bicubic", align_corners=True), (1, 6, 6)
    yield nn.Upsample(scale_factor=3, mode="nearest"), (2, 3, 4)


def _pool_and_pad_cases():
    for k, s, p, ceil, cip in itertools.product([2, 3], [1, 2, 3], [0, 1], [False, True], [False, True]):
        yield (lambda z, a=(k, s, p, ceil, cip): F.avg_pool2d(z, *a)), (2, 7, 8)
    yield nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False, divisor_override=4), (2, 7, 8)
    yield nn.AvgPool1d(3, stride=2, padding=1), (3, 9)
    yield nn.AvgPool3d(2, stride=1), (2, 3, 4, 3)
    yield nn.AdaptiveAvgPool2d((3, 2)), (2, 7, 5)
    yield nn.AdaptiveAvgPool1d(4), (2, 9)
    yield nn.AdaptiveAvgPool2d(1), (3, 5, 5)
    for mode in ("constant", "reflect", "replicate", "circular"):
        yield (lambda z, m=mode: F.pad(z, (2, 1, 0, 3), mode=m)), (2, 5, 6)
        yield (lambda z, m=mode: F.pad(z, (1, 2), mode=m)), (2, 4)
    yield (lambda z: F.pad(z, (-1, 2, 1, -2))), (2, 5, 6)  # crop and pad
    yield (lambda z: F.pad(z, (1, 0, 0, 1, 2, 1))), (2, 3, 4)  # pads the channel axis too
    yield nn.ReflectionPad2d(2), (2, 5, 5)
    yield nn.ReplicationPad1d((1, 3)), (2, 6)
    yield nn.CircularPad3d(1), (1, 3, 3, 3)


class Fn(nn.Module):
    """A model that calls ``fn`` (a function of torch.nn.functional) in its forward."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def graph_operator(fn, shape, dtype=torch.float64):
    model = nn.Sequential(fn) if isinstance(fn, nn.Module) else Fn(fn)  # a module stays a leaf
    graph = lipbound.as_graph(model.to(dtype), shape)
    (node,) = graph.affine_nodes()
    return node.op


@pytest.mark.parametrize("case", list(_resize_cases()) + list(_pool_and_pad_cases()))
def test_separable_maps_get_their_exact_norm(case):
    """Pooling, resizing (bicubic weights are negative) and padding: the certified norm, from the
    per-axis matrices alone, equals the SVD norm of torch's own matrix."""
    fn, shape = case
    op = graph_operator(fn, shape)
    exact = svd_norm(torch_matrix(fn, shape))
    bound = op.structural_bound()  # from the per-axis matrices, never an SVD of the whole map
    assert bound.exact and bound.value == pytest.approx(exact, rel=1e-9)
    assert certified_norm(op, dense_limit=0).value >= exact * (1 - 1e-12)
    x = torch.randn(3, *shape)
    assert torch.allclose(op.matvec(x), fn(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sf,hw", [(2, 40), (0.5, 80)])
def test_large_bicubic_bound_is_above_a_power_method_on_torch(sf, hw):
    """The audit's case (too large for an SVD): the certified value was 0.5 where a power
    iteration through torch's bicubic reaches 0.944."""
    fn = lambda z: F.interpolate(z, scale_factor=sf, mode="bicubic")  # noqa: E731
    r = lipbound.estimate(Fn(fn), (1, hw, hw), methods=["autolip"], progress=False).results[0]
    assert r.kind == "certified_upper"
    x = torch.randn(1, 1, hw, hw, generator=torch.Generator().manual_seed(0))
    for _ in range(300):
        x = x.requires_grad_(True)
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, y.detach())
        x = (g / g.norm()).detach()
    sigma = fn(x).norm().item()
    assert sigma <= r.value
    assert r.value <= sigma * (1 + 1e-3)


@pytest.mark.parametrize("index", [
    (slice(None), slice(1, 3)),
    (slice(None), slice(None), slice(None, None, 2), slice(1, None)),
    (Ellipsis, 0),
    (slice(None), [0, 0, 2]),  # reads channel 0 twice: norm sqrt(2)
    (slice(None), None, 1),
    (slice(None), torch.tensor([[True, False, True, True], [False, False, True, False], [True] * 4])),
])
def test_indexing_is_an_exact_selection(index):
    shape = (3, 4) if isinstance(index[-1], torch.Tensor) else (3, 4, 5)
    fn = lambda z: z[index]  # noqa: E731
    op = graph_operator(fn, shape)
    exact = svd_norm(torch_matrix(fn, shape))
    bound = op.structural_bound()
    assert bound.exact and bound.value == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("fn,axes,why", [
    (lambda z: z.transpose(-1, -2), 2, "separable"),  # a transposition is no Kronecker product
    (lambda z: z.roll(1, dims=1), 2, "separable"),  # mixes the channels it should keep apart
    (lambda z: z.flatten(2), 2, "last 2 axes"),
    (lambda z: z - z, 2, "constant inputs"),
])
def test_separable_refuses_what_it_cannot_read(fn, axes, why):
    with pytest.raises(lipbound.UnsupportedOperation, match=why):
        separable(fn, (3, 4, 4), "map", axes)


@pytest.mark.parametrize("fn", [lambda z: 2 * z[:, 1:], lambda z: z[:, 1:] + z[:, :-1], lambda z: z[:, 1:] * 0.5])
def test_selection_refuses_what_is_no_selection(fn):
    with pytest.raises(lipbound.UnsupportedOperation, match="selection|pick"):
        selection(fn, (3, 4), "map")


def test_a_black_box_function_has_no_structural_bound():
    """No claim about a function is trusted: its certified norm is an SVD, or none."""
    op = Function(lambda x: F.interpolate(x, scale_factor=0.5, mode="bicubic"), (1, 80, 80), "bicubic")
    assert op.structural_bound() is None
    assert certified_norm(op, dense_limit=10).value == math.inf


# ---- the norm cache -------------------------------------------------------------------------------

def test_norm_cache_does_not_outlive_the_tensors_it_was_computed_from():
    gen = torch.Generator().manual_seed(7)
    layer = nn.Conv2d(2, 3, 3, padding=1).double()
    op = operator_of_module(layer, (2, 5, 5))
    first = operator_norms(op)
    assert first.upper == pytest.approx(exact_norm(op), rel=1e-8)
    # a cast copy gets its own memo: scaling its weights must show
    op32 = op.to(dtype=torch.float32)
    op32.weight.mul_(2)
    assert operator_norms(op32).upper == pytest.approx(exact_norm(op32), rel=1e-6)
    assert operator_norms(op).upper == first.upper
    # an in-place change of the module's parameter reaches the operator (shared storage): new norms
    with torch.no_grad():
        layer.weight.mul_(3)
    assert operator_norms(op).upper == pytest.approx(3 * first.upper, rel=1e-8)
    # so does a replaced tensor, and a composition sees the change of a factor
    op.weight = torch.randn(op.weight.shape, generator=gen)
    assert operator_norms(op).upper == pytest.approx(exact_norm(op), rel=1e-8)
    dense = Dense(torch.randn(4, 75, generator=gen), (75,))
    chain = Compose([op, Reshape(op.out_shape, (75,)), dense])
    before = operator_norms(chain).upper
    dense.weight.mul_(-5)
    assert operator_norms(chain).upper == pytest.approx(5 * before, rel=1e-8)


# ---- every other structural bound against the SVD of torch's matrix, on random instances ----------

def _random_conv(rng: random.Random):
    """A random bias-free convolution (any N, stride, dilation, groups, padding mode, transposed)."""
    nd = rng.choice([1, 2, 2, 3])
    g = rng.choice([1, 1, 2, 3])
    cin, cout = g * rng.randint(1, 2), g * rng.randint(1, 2)
    k, s, d = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 2)
    size = (4, 9, 6, 4)[nd]
    shape = (cin, *(rng.randint(min(size, max(1, (k - 1) * d - 1)), size) for _ in range(nd)))
    cls = ((nn.Conv1d, nn.ConvTranspose1d), (nn.Conv2d, nn.ConvTranspose2d), (nn.Conv3d, nn.ConvTranspose3d))[nd - 1]
    p = rng.randint(0, k)
    if rng.random() < 0.3:
        out_pad = rng.randint(0, max(s, d) - 1)
        return cls[1](cin, cout, k, s, p, out_pad, g, False, d), shape
    if rng.random() < 0.15 and s == 1:
        return cls[0](cin, cout, k, 1, "same", d, g, False), shape
    mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
    return cls[0](cin, cout, k, s, p, d, g, False, mode), shape


def random_conv_cases(seed: int, count: int):
    """``count`` random convolution layers that torch evaluates (:func:`_random_conv`), each as
    ``(layer, input shape, torch's own matrix of it, lipbound's operator)``."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    made = 0
    while made < count:
        layer, shape = _random_conv(rng)
        try:
            matrix = torch_matrix(layer.double(), shape)
        except RuntimeError:  # an empty output, or a reflect pad wider than the input
            continue
        made += 1
        yield layer, shape, matrix, operator_of_module(layer, shape)


def test_conv_bounds_hold_on_random_layers():
    """The DFT bound (polyphase for strides, adjoint for transposed layers, product with the pad
    for reflect/replicate/circular padding) is >= the SVD norm of torch's own matrix."""
    for layer, shape, matrix, op in random_conv_cases(11, 250):
        x = torch.randn(2, *shape)
        assert torch.allclose(op.matvec(x), layer(x), atol=1e-12)
        exact = svd_norm(matrix)
        bound = certified_norm(op, dense_limit=0)  # the structural bound, not an SVD of op
        assert bound.value >= exact * (1 - 1e-12), (layer, shape, bound, exact)
        if bound.exact:
            assert bound.value == pytest.approx(exact, rel=3e-9), (layer, shape, bound, exact)  # 1e-9 margin


@pytest.mark.parametrize("stride,padding,shape", [(1, 1, (3, 8, 6)), (2, 1, (3, 8, 6)), (1, 2, (2, 5, 7)),
                                                  (3, 1, (2, 9, 6)), (2, 2, (2, 7, 8))])
def test_circular_convolution_bound_is_the_norm_on_the_torus(stride, padding, shape):
    """A circularly padded convolution is a convolution on the input's torus: its bound is the
    norm itself when the outputs cover one phase class of the torus once (stride 1 with 'same'
    padding; stride s dividing the size), and within sqrt(#repeats) of it otherwise (the product
    of the padding's norm and the convolution's bound was 2x above the norm)."""
    torch.manual_seed(8)
    layer = nn.Conv2d(shape[0], 4, 3, stride, padding, padding_mode="circular", bias=False)
    op = operator_of_module(layer, shape)
    exact = svd_norm(torch_matrix(layer, shape))
    bound = op.structural_bound()
    assert bound.value >= exact * (1 - 1e-12)
    covers = padding == 1 and all(h % stride == 0 for h in shape[1:])
    assert bound.exact == covers
    assert bound.value <= exact * (1 + 1e-9 if covers else 1.5)


def test_strided_conv_bound_where_the_stride_does_not_divide_the_padded_size():
    """The polyphase grid must hold every index the layer reads (``s M >= H + 2p``): with a grid
    one phase short, reads wrap onto real inputs and the value falls below the norm (7 = 2*3 + 1)."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(300):
        w = torch.randn(2, 1, 3, generator=gen)
        op = Conv(w, (1, 7), (2,), (0,), (1,))
        assert certified_norm(op, dense_limit=0).value >= svd_norm(op.to_dense()) * (1 - 1e-12)


def _random_chain(rng: random.Random, gen: torch.Generator):
    """Two operators ``first``, ``second`` on shape (C, H, W) of a kind ``compose`` may fold."""
    c, h, w = rng.randint(1, 4), rng.randint(2, 5), rng.randint(2, 5)
    shape = (c, h, w)

    def diagonal(s):
        kind = rng.choice(["scalar", "channel", "last", "full"])
        dims = {"scalar": (), "channel": (s[0], *[1] * (len(s) - 1)), "last": (s[-1],), "full": s}[kind]
        return Diagonal(torch.randn(dims, generator=gen), s, kind)

    def conv(s):
        g = rng.choice([gg for gg in (1, 2, 3) if s[0] % gg == 0])
        k = rng.randint(1, min(3, *s[1:]))
        return operator_of_module(nn.Conv2d(s[0], g * rng.randint(1, 2), k, rng.randint(1, 2), rng.randint(0, 1),
                                            groups=g, bias=False, padding_mode=rng.choice(["zeros", "circular"])), s)

    def dense(s):
        return Dense(torch.randn(rng.randint(1, 5), s[-1], generator=gen), s)

    def permute(s):
        perm = list(range(len(s)))
        rng.shuffle(perm)
        return Permute(perm, s)

    def reshape(s):
        return Reshape(s, (math.prod(s),)) if len(s) < 2 or rng.random() < 0.5 else Reshape(s, (s[0] * s[1], *s[2:]))

    makers = [diagonal, conv, dense, permute, reshape]
    first = rng.choice(makers)(shape)
    second = rng.choice([m for m in makers if m is not conv or len(first.out_shape) == 3])(first.out_shape)
    return first, second


def test_compose_and_its_folds_keep_the_map_and_bound_its_norm():
    """``compose`` folds diagonals into convolutions and dense layers, reshapes into reshapes: the
    folded operator computes the unfolded chain, and its bound (exact where it says so) holds."""
    rng = random.Random(5)
    gen = torch.Generator().manual_seed(5)
    folded = 0
    for _ in range(300):
        first, second = _random_chain(rng, gen)
        op = compose(first, second)
        folded += not isinstance(op, Compose)
        x = torch.randn(3, *first.in_shape, generator=gen)
        assert torch.allclose(op.matvec(x), second.matvec(first.matvec(x)), atol=1e-12)
        exact = svd_norm(torch_matrix(lambda z: second.matvec(first.matvec(z)), first.in_shape))
        bound = op.structural_bound()
        assert bound.value >= exact * (1 - 1e-12), (first, second, bound, exact)
        if bound.exact:
            assert bound.value == pytest.approx(exact, rel=1e-9, abs=1e-12), (first, second, bound, exact)
    assert folded > 50


@pytest.mark.parametrize("make", [
    lambda: Reshape((2, 3), (5,)),
    lambda: Permute((0, 0, 1), (2, 3, 4)),
    lambda: Permute((1, 0), (2, 3, 4)),
    lambda: Diagonal(torch.ones(2, 3, 4), (3, 4)),
    lambda: Diagonal(torch.ones(3), (3, 4)),
])
def test_structural_operators_refuse_shapes_their_bound_does_not_cover(make):
    with pytest.raises(ValueError):
        make()


def _lanczos_dense_cases():
    """Random, ill-conditioned (1e-12), nearly tied top values, rank one; float64 and float32."""
    gen = torch.Generator().manual_seed(5)
    for i in range(24):
        m, n = int(torch.randint(1, 60, (1,), generator=gen)), int(torch.randint(1, 60, (1,), generator=gen))
        yield f"randn{i}", torch.randn(m, n, generator=gen)
    u, _ = torch.linalg.qr(torch.randn(50, 30, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(40, 30, generator=gen))
    yield "cond1e12", (u * torch.logspace(0, -12, 30)) @ v.T
    tied = torch.linspace(1, 0.1, 30)
    tied[1] = 1 - 1e-6
    yield "tied", (u * tied) @ v.T
    yield "rank1", torch.outer(torch.randn(20, generator=gen), torch.randn(30, generator=gen))


def test_lanczos_is_a_lower_bound_and_converges_on_matrices_and_convolutions():
    """>= 200 cases: random convolutions (:func:`random_conv_cases`) and dense matrices, float64
    and float32. The Lanczos value never exceeds the SVD norm of the materialised matrix (up to the
    rounding of one evaluation in the operator's dtype), and in float64 it is within 1e-4 of it."""
    from lipbound.linalg.lanczos import lanczos_norm

    cases = [(f"conv{i}", op, matrix) for i, (_, _, matrix, op) in enumerate(random_conv_cases(23, 170))]
    cases += [(name, Dense(w, (w.shape[1],)), w) for name, w in _lanczos_dense_cases()]
    for name, op, matrix in cases:
        exact = svd_norm(matrix.double())
        for dtype, slack in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            res = lanczos_norm(op.to(dtype=dtype), tol=1e-7, max_iter=400, generator=torch.Generator().manual_seed(0))
            assert res.sigma <= exact * (1 + slack) + 1e-30, (name, dtype, res.sigma, exact)
            if dtype == torch.float64:
                assert res.sigma >= exact * (1 - 1e-4), (name, res.sigma, exact, res.stopped_by)
                assert res.stopped_by in ("converged", "iterations")


def test_lanczos_stops_by_its_rules():
    from lipbound.linalg.lanczos import lanczos_norm

    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(1))
    op = Dense(w, (200,))
    assert lanczos_norm(op, tol=0, max_iter=7).stopped_by == "iterations"
    assert lanczos_norm(op, tol=0, max_iter=7).iterations == 8  # 7 steps and the final evaluation
    assert lanczos_norm(op, max_iter=50, deadline=0.0).stopped_by == "time"
    restarted = lanczos_norm(op, tol=1e-9, max_iter=300, max_basis=10)  # explicit restarts
    assert restarted.sigma == pytest.approx(svd_norm(w), rel=1e-6)


def test_to_dense_by_rows_or_columns_is_torchs_own_matrix():
    """``to_dense`` builds the matrix from the adjoint when there are fewer outputs than inputs
    (strided convolutions) and from ``matvec`` otherwise: both equal torch's own layer applied to
    basis vectors."""
    sides = set()
    for layer, shape, matrix, op in random_conv_cases(21, 30):
        sides.add(op.out_numel < op.in_numel)
        assert torch.allclose(op.to_dense(chunk=7), matrix, rtol=1e-12, atol=1e-12), (layer, shape)
    assert sides == {True, False}
