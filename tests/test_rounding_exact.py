"""The exact re-check of witnesses (``methods/rounding_exact``) against an independent oracle: the
network evaluated in ``fractions.Fraction`` arithmetic, written here from the torch modules' float64
weights (dense, convolution, max pooling, ReLU, LeakyReLU, residual sum). Checked: exact values
equal the oracle's; pair and Jacobian bounds bracket the oracle's exact quotient (Jacobian: the
oracle's secant over a tiny step) to 1e-12; ties are declined where a moving input is on a kink
and accepted where it is locally constant; on a 96-layer net whose float64 enclosure is too wide,
the new path gives a witness below the product of the layers' SVD norms."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from lipbound import as_graph
from lipbound.methods import rounding, rounding_exact
from lipbound.methods.budget import graph_macs
from lipbound.methods.rounding import jacobian_witness_values, pair_bounds, region_check
from lipbound.methods.rounding_exact import exact_forward, exact_jacobian_values, exact_pair_bounds


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def _frac(t: torch.Tensor) -> np.ndarray:
    return np.vectorize(Fraction, otypes=[object])(t.detach().double().numpy())


def oracle(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """``module`` at ``x`` (object array of Fractions, no batch axis) in exact rational arithmetic."""
    if isinstance(module, nn.Sequential):
        for m in module:
            x = oracle(m, x)
        return x
    if isinstance(module, Residual):
        return x + oracle(module.body, x)
    if isinstance(module, nn.Linear):
        return _frac(module.weight).dot(x) + _frac(module.bias)
    if isinstance(module, nn.ReLU):
        return np.vectorize(lambda t: max(t, Fraction(0)), otypes=[object])(x)
    if isinstance(module, nn.LeakyReLU):
        a = Fraction(module.negative_slope)
        return np.vectorize(lambda t: t if t >= 0 else a * t, otypes=[object])(x)
    if isinstance(module, nn.Flatten):
        return x.reshape(-1)
    if isinstance(module, nn.Conv2d):  # stride 1
        w, b, p = _frac(module.weight), _frac(module.bias), module.padding[0]
        c, h, wd = x.shape
        xp = np.full((c, h + 2 * p, wd + 2 * p), Fraction(0), dtype=object)
        xp[:, p:p + h, p:p + wd] = x
        k = w.shape[2]
        out = np.empty((w.shape[0], h + 2 * p - k + 1, wd + 2 * p - k + 1), dtype=object)
        for o in range(out.shape[0]):
            for i in range(out.shape[1]):
                for j in range(out.shape[2]):
                    out[o, i, j] = (w[o] * xp[:, i:i + k, j:j + k]).sum() + b[o]
        return out
    if isinstance(module, nn.MaxPool2d):  # kernel = stride
        k = module.kernel_size
        c, h, wd = x.shape
        return np.array([[[max(x[ch, i:i + k, j:j + k].ravel()) for j in range(0, wd - k + 1, k)]
                          for i in range(0, h - k + 1, k)] for ch in range(c)], dtype=object)
    raise TypeError(type(module))


def _nets() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.LeakyReLU(0.1), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8, 3))
    res = nn.Sequential(nn.Linear(4, 4), Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))),
                        nn.LeakyReLU(0.2), nn.Linear(4, 2))
    return {"mlp": (mlp.double(), (4,)), "cnn": (cnn.double(), (1, 4, 4)), "residual": (res.double(), (4,))}


NETS = _nets()


def _oracle_out(name: str, x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = _frac(x) if isinstance(x, torch.Tensor) else x
    return np.asarray(oracle(NETS[name][0], x)).reshape(-1)


def _dyadic_fractions(d: rounding_exact.Dyadic) -> list[Fraction]:
    return [Fraction(int(m)) * Fraction(2) ** d.exp for m in d.mant.ravel()]


@pytest.mark.parametrize("name", list(NETS))
def test_exact_values_equal_fraction_arithmetic(name):
    module, shape = NETS[name]
    graph = as_graph(module, shape)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        state, _ = exact_forward(graph, x)
        assert _dyadic_fractions(state.value) == list(_oracle_out(name, x))


def _sq(vals) -> Fraction:
    return sum((Fraction(v) ** 2 for v in vals), Fraction(0))


def _brackets(low: float, high: float | None, q: Fraction) -> None:
    """``low <= sqrt(q) <= high`` exactly, and both within 1e-12 relative of it."""
    assert Fraction(low) ** 2 <= q
    assert Fraction(low) ** 2 >= q * (1 - Fraction(1, 10 ** 12)) ** 2
    if high is not None:
        assert Fraction(high) ** 2 >= q
        assert Fraction(high) ** 2 <= q * (1 + Fraction(1, 10 ** 12)) ** 2


@pytest.mark.parametrize("name", list(NETS))
def test_pair_bounds_bracket_the_exact_quotient(name):
    module, shape = NETS[name]
    graph = as_graph(module, shape)
    gen = torch.Generator().manual_seed(2)
    x, y = (torch.randn(4, *shape, generator=gen, dtype=torch.float64) for _ in range(2))
    low, high, reasons = exact_pair_bounds(graph, x, y)
    assert reasons == [None] * 4
    for b in range(4):
        num = _sq(_oracle_out(name, x[b]) - _oracle_out(name, y[b]))
        den = _sq((_frac(x[b]) - _frac(y[b])).ravel())
        _brackets(float(low[b]), float(high[b]), num / den)


@pytest.mark.parametrize("name", list(NETS))
def test_jacobian_values_bracket_the_exact_secant(name):
    """Off every kink the oracle's secant ``(f(x + h v) - f(x)) / h`` is ``Df(x) v`` for a tiny
    ``h`` (the same for two steps confirms it)."""
    module, shape = NETS[name]
    graph = as_graph(module, shape)
    gen = torch.Generator().manual_seed(3)
    x, v = (torch.randn(3, *shape, generator=gen, dtype=torch.float64) for _ in range(2))
    low, reasons = exact_jacobian_values(graph, x, v)
    assert reasons == [None] * 3
    for b in range(3):
        fx = _oracle_out(name, x[b])
        secants = []
        for k in (60, 70):
            h = Fraction(1, 2 ** k)
            moved = _frac(x[b]) + h * _frac(v[b])
            secants.append([(a - c) / h for a, c in zip(_oracle_out(name, moved), fx)])
        assert secants[0] == secants[1]
        _brackets(float(low[b]), None, _sq(secants[0]) / _sq(_frac(v[b]).ravel()))


def _tie_net() -> nn.Sequential:
    """ReLU net whose first pre-activation is ``x_0 - x_1`` (moving) and second is ``0`` whatever the
    input (locally constant: zero weights and bias)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[2.0, 3.0]]))
        net[2].bias.zero_()
    return net


def test_a_moving_input_exactly_on_a_kink_is_declined_and_a_constant_one_is_not():
    graph = as_graph(_tie_net(), (2,))
    on_kink = torch.tensor([[0.5, 0.5]], dtype=torch.float64)  # x_0 - x_1 = 0 exactly; the second neuron too
    off_kink = torch.tensor([[0.5, 0.25]], dtype=torch.float64)  # only the constant neuron sits on 0
    v = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    low, reasons = exact_jacobian_values(graph, on_kink, v)
    assert torch.isnan(low[0]) and "kink" in reasons[0]
    low, reasons = exact_jacobian_values(graph, off_kink, v)
    assert reasons[0] is None
    _brackets(float(low[0]), None, Fraction(4))  # f = 2 relu(x_0 - x_1) near off_kink: D f v = 2
    # the pair through the kink is still valid: (0.5, 0.5) -> (1, 0.5) moves f by 2 * 0.5
    pl, ph, pr = exact_pair_bounds(graph, on_kink, torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    _brackets(float(pl[0]), float(ph[0]), Fraction(4))


def test_a_max_pooling_tie_of_moving_inputs_is_declined():
    net = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 1)).double()
    graph = as_graph(net, (1, 2, 2))
    tie = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)
    low, reasons = exact_jacobian_values(graph, tie, torch.ones_like(tie))
    assert torch.isnan(low[0]) and "tie" in reasons[0]
    low, reasons = exact_jacobian_values(graph, tie + torch.tensor([[[[0.0, 2.0 ** -40], [0, 0]]]]), torch.ones_like(tie))
    assert reasons[0] is None
    _brackets(float(low[0]), None, Fraction(float(net[2].weight.detach())) ** 2 / 4)


def test_smooth_activations_and_the_work_cap_are_declined(monkeypatch):
    graph = as_graph(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)).double(), (3,))
    x = torch.randn(2, 3, dtype=torch.float64)
    assert all("smooth activation" in r for r in exact_pair_bounds(graph, x, x + 1)[2])
    module, shape = NETS["mlp"]
    mlp = as_graph(module, shape)
    monkeypatch.setattr(rounding_exact, "WORK_CAP", 2 * 3 * graph_macs(mlp))  # two Jacobian witnesses
    low, reasons = exact_jacobian_values(mlp, torch.randn(4, *shape, dtype=torch.float64),
                                         torch.randn(4, *shape, dtype=torch.float64))
    assert [r is None for r in reasons] == [True, True, False, False] and "work cap" in reasons[2]


def _deep(depth: int, width: int, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, width, generator=g, dtype=torch.float64) * 1.5 / width ** 0.5)
            lin.bias.copy_(torch.randn(width, generator=g, dtype=torch.float64) * 0.1)
        layers += [lin, nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers, nn.Linear(width, 2).double())


def test_deep_net_gets_a_witness_below_the_product_of_norms_where_float64_declines():
    net = _deep(96, 8, 0)
    graph = as_graph(net, (8,))
    gen = torch.Generator().manual_seed(4)
    x, v = (torch.randn(2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    assert not region_check(graph, x).valid.any()  # the float64 enclosure cannot place x in a region
    low, reasons = jacobian_witness_values(graph, x, v)
    assert reasons == [None, None]
    upper = 1.0
    for m in net:
        if isinstance(m, nn.Linear):
            upper *= float(torch.linalg.matrix_norm(m.weight.detach(), ord=2))
    jac = torch.autograd.functional.jacobian(net, x[0])
    assert float(low[0]) <= float(torch.linalg.matrix_norm(jac, ord=2)) * (1 + 1e-9) <= upper * (1 + 1e-6)
    pl, ph = pair_bounds(graph, x[:1], x[1:])
    assert 0 < float(pl[0]) <= float(ph[0]) <= upper * (1 + 1e-6)
    assert float(ph[0]) - float(pl[0]) <= 1e-12 * float(ph[0])  # the exact path answered, not the float one


def test_without_the_exact_fallback_the_deep_witness_is_declined_not_wrong():
    """``exact_fallback(False)`` (what ``benchmarks/deep_witness.py`` times against): the same deep
    net's witnesses get no value (NaN) and its pair keeps the wide float64 interval, which still
    brackets the exact quotient computed with the fallback on."""
    net = _deep(96, 8, 0)
    graph = as_graph(net, (8,))
    gen = torch.Generator().manual_seed(4)
    x, v = (torch.randn(2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    exact_low, _ = pair_bounds(graph, x[:1], x[1:])
    with rounding.exact_fallback(False):
        low, reasons = jacobian_witness_values(graph, x, v)
        pl, ph = pair_bounds(graph, x[:1], x[1:])
    assert torch.isnan(low).all() and all(r is not None for r in reasons)
    assert float(pl[0]) <= float(exact_low[0]) <= float(ph[0])
    assert float(ph[0]) - float(pl[0]) > 1e-6 * float(ph[0])  # the float interval, not the exact one
    assert not torch.isnan(jacobian_witness_values(graph, x, v)[0]).any()  # the fallback is back on


def test_sqrt_ratio_bounds_bracket_quotients_just_off_a_square():
    """``num / den = m^2 +- 1/den`` with ``den ~ 2^300``: far below the bounds' 128-bit scaling, so
    only correct floors and ceilings keep ``sqrt`` inside ``[low, high]``."""
    gen = torch.Generator().manual_seed(5)
    for _ in range(50):
        m = int(torch.randint(1, 2 ** 53, (1,), generator=gen))
        den = 2 ** 300 + int(torch.randint(0, 2 ** 40, (1,), generator=gen))
        for num in (m * m * den + 1, m * m * den - 1):
            low, high = rounding_exact.sqrt_ratio_bounds(num, -7, den, 5)
            q = Fraction(num, den) / 2 ** 12
            assert Fraction(low) ** 2 <= q <= Fraction(high) ** 2


def test_the_exact_secant_declines_a_step_that_crosses_a_kink(monkeypatch):
    """The re-check by another path: with a step far too long the segment leaves the region and the
    exact secant disagrees with the exact tangent."""
    module, shape = NETS["mlp"]
    graph = as_graph(module, shape)
    x, v = (torch.randn(3, *shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64) for _ in range(2))
    monkeypatch.setattr(rounding_exact, "_step_exponent", lambda limits: -20)  # h = 2^20
    low, reasons = exact_jacobian_values(graph, x, v)
    assert all("secant" in r for r in reasons) and torch.isnan(low).all()
