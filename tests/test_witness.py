"""Witnesses (DESIGN §8): valid only where they determine a region, pair quotients with a rigorous
rounding margin, and a re-check that can fail.

Oracles: Jacobians written out by hand in numpy from the layers' weights, exact rational
evaluation (``fractions``) of small ReLU nets, central differences on the ``nn.Module`` itself, and
values derived by hand for hand-built nets (derivations in the comments).
"""

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from oracles import ZeroNet
import lipbound.methods.enclosure as rounding_module
from lipbound.errors import InvalidInput
from lipbound.witness import PairWitness, PointWitness, pair_bounds, witness_value

_DERIVATIVES = {nn.ReLU: lambda z: (z > 0).astype(float), nn.Tanh: lambda z: 1 - np.tanh(z) ** 2,
                nn.LeakyReLU: lambda z: np.where(z > 0, 1.0, 0.1)}


def mlp_jacobian(net: nn.Sequential, x: torch.Tensor) -> np.ndarray:
    """``W_K D_{K-1} ... D_1 W_1`` at ``x`` for a Sequential of Linear layers and the activations of
    ``_DERIVATIVES`` (LeakyReLU with slope 0.1), in numpy from the weights."""
    h = x.detach().double().numpy().reshape(-1)
    jac = np.eye(len(h))
    for layer in net:
        if isinstance(layer, nn.Linear):
            w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
            h, jac = w @ h + b, w @ jac
        else:
            d = _DERIVATIVES[type(layer)](h)
            h, jac = {nn.ReLU: np.maximum(h, 0), nn.Tanh: np.tanh(h), nn.LeakyReLU: np.where(h > 0, h, 0.1 * h)}[
                type(layer)], d[:, None] * jac
    return jac


def jacobian_quotient(net: nn.Sequential, x: torch.Tensor, v: torch.Tensor) -> float:
    """``||J(x) v|| / ||v||`` with the hand-written Jacobian."""
    v = v.detach().double().numpy().reshape(-1)
    return float(np.linalg.norm(mlp_jacobian(net, x) @ v) / np.linalg.norm(v))


def _mlp(act: nn.Module, w1, b1, w2) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(len(w1[0]), len(w1)), act, nn.Linear(len(w2[0]), len(w2))).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1))
        net[0].bias.copy_(torch.tensor(b1))
        net[2].weight.copy_(torch.tensor(w2))
        net[2].bias.zero_()
    return net


def _jac(x, v) -> dict:
    return {"form": "jacobian", "x": torch.tensor(x, dtype=torch.float64), "v": torch.tensor(v, dtype=torch.float64)}


@pytest.mark.parametrize("act", [nn.ReLU(), nn.Tanh(), nn.LeakyReLU(0.1)])
def test_jacobian_witness_equals_the_hand_written_jacobian(act):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 7), act, nn.Linear(7, 6), act, nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.randn(5, generator=gen, dtype=torch.float64)
        v = torch.randn(5, generator=gen, dtype=torch.float64)
        value = witness_value(net, {"form": "jacobian", "x": x, "v": v})
        assert value == pytest.approx(jacobian_quotient(net, x, v), rel=1e-12)
        assert value <= jacobian_quotient(net, x, v)  # the rounding margin is subtracted, never added


def test_witness_at_coinciding_kinks_is_rejected():
    # f(x) = 10 x - 10 relu(x) + 10 relu(-x) = 0 for every x (L = 0). At x = 0 both neurons kink and
    # autograd's slopes relu'(0) = 0 give 10. Off the kink, J = 10 - 10 = 0 exactly.
    f = ZeroNet()
    with pytest.raises(InvalidInput, match="kink"):
        witness_value(f, _jac([0.0], [1.0]))
    assert witness_value(f, _jac([0.5], [1.0])) == 0.0
    assert witness_value(f, _jac([-1e-300], [1.0])) == 0.0  # far from the kink relative to its rounding
    res = lipbound.lower_bound(f, (1,), data=torch.zeros(8, 1, dtype=torch.float64), time_budget=5, steps=40, starts=16)
    assert res.value == 0.0
    assert witness_value(f, res.witness) == res.value  # lower's witness passes the re-check


def test_witness_on_a_box_face_at_a_kink_is_rejected():
    # f(x) = relu(x + 10) - 0.5 relu(x) = 10 + 0.5 x on [0, 1]; at x = 0 the second neuron kinks and
    # autograd gives 1 (the slope of x < 0, outside the box). L on the box is 0.5.
    net = _mlp(nn.ReLU(), [[1.0], [1.0]], [10.0, 0.0], [[1.0, -0.5]])
    with pytest.raises(InvalidInput, match="kink"):
        witness_value(net, _jac([0.0], [1.0]), domain=(0.0, 1.0))
    assert witness_value(net, _jac([1.0], [1.0]), domain=(0.0, 1.0)) == pytest.approx(0.5, rel=1e-14)  # face, no kink
    with pytest.raises(InvalidInput, match="outside"):
        witness_value(net, _jac([1.5], [1.0]), domain=(0.0, 1.0))
    res = lipbound.lower_bound(net, (1,), domain=(0.0, 1.0), time_budget=5, steps=30, starts=8)
    assert 0.5 * (1 - 1e-12) <= res.value <= 0.5
    assert witness_value(net, res.witness, domain=(0.0, 1.0)) == res.value


def test_kinks_of_smooth_activations_are_checked():
    # ELU(alpha=2): s'(0-) = 2, s'(0+) = 1, a kink at 0; f(x) = 3 elu(x): at x = 1, f' = 3,
    # at x = -1, f' = 3 * 2 e^{-1}. ReLU6 kinks at 0 and 6.
    elu = _mlp(nn.ELU(alpha=2.0), [[1.0]], [0.0], [[3.0]])
    with pytest.raises(InvalidInput, match="kink"):
        witness_value(elu, _jac([0.0], [1.0]))
    assert witness_value(elu, _jac([1.0], [1.0])) == pytest.approx(3.0, rel=1e-12)
    assert witness_value(elu, _jac([-1.0], [1.0])) == pytest.approx(6 * np.exp(-1.0), rel=1e-12)
    relu6 = _mlp(nn.ReLU6(), [[1.0]], [0.0], [[2.0]])
    with pytest.raises(InvalidInput, match="kink"):
        witness_value(relu6, _jac([6.0], [1.0]))
    assert 2.0 * (1 - 1e-14) <= witness_value(relu6, _jac([5.0], [1.0])) <= 2.0  # f = 2 relu6(x): slope 2 on (0, 6)


def test_softplus_is_bounded_as_the_smooth_function_and_a_large_jump_is_refused():
    # torch's Softplus(threshold=2) jumps by log(1 + e^-2) = 0.127 at t = 2: not Lipschitz
    with pytest.raises(lipbound.UnsupportedOperation, match="discontinuous"):
        lipbound.as_graph(_mlp(nn.Softplus(beta=1.0, threshold=2.0), [[1.0]], [0.0], [[3.0]]), (1,))
    # with the default threshold 20 the graph evaluates log(1 + e^x) itself: f = 3 softplus(x),
    # f'(1) = 3 sigmoid(1), and the witness at the threshold is valid (no kink)
    soft = _mlp(nn.Softplus(), [[1.0]], [0.0], [[3.0]])
    assert witness_value(soft, _jac([1.0], [1.0])) == pytest.approx(3 / (1 + np.exp(-1.0)), rel=1e-12)
    assert witness_value(soft, _jac([20.0], [1.0])) == pytest.approx(3 / (1 + np.exp(-20.0)), rel=1e-12)


def _pool_sum() -> nn.Module:
    """``f(x) = sum of the maxima of the windows (x0, x1), (x1, x2), (x2, x3)`` (overlapping)."""
    net = nn.Sequential(nn.MaxPool1d(2, stride=1), nn.Flatten(), nn.Linear(3, 1, bias=False)).double()
    with torch.no_grad():
        net[2].weight.fill_(1.0)
    return net


@pytest.mark.parametrize("x,grad", [([0.0, 3.0, 1.0, 2.0], [0.0, 2.0, 0.0, 1.0]),  # maxima at 1, 1, 3
                                    ([3.0, 1.0, 3.0, 0.0], [1.0, 0.0, 2.0, 0.0])])  # equal values, other windows
def test_maxpool_witness_with_overlapping_windows(x, grad):
    # f is linear near x with gradient `grad` (each window adds the unit vector of its maximum):
    # ||Df(x) v|| / ||v|| with v = grad is ||grad|| = sqrt(5)
    value = witness_value(_pool_sum(), _jac([x], [grad]))
    assert value == pytest.approx(5 ** 0.5, rel=1e-14)


def test_maxpool_tie_inside_a_window_is_rejected():
    # the window (x1, x2) = (3, 3) ties: f is not differentiable there. Its neighbours' maxima (x1
    # for (x0, x1), x2 for (x2, x3)) lie in it, so masking every window's maximum at once would hide the tie.
    with pytest.raises(InvalidInput, match="max pooling"):
        witness_value(_pool_sum(), _jac([[0.0, 3.0, 3.0, 2.0]], [[0.0, 1.0, 1.0, 1.0]]))


def test_maxpool_cnn_witness_matches_central_differences_on_the_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(12, 2)).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    h = 1e-7  # f is affine near a generic x: the central difference is exact up to rounding
    with torch.no_grad():
        fd = ((net((x + h * v)[None]) - net((x - h * v)[None])).norm() / (2 * h * v.norm())).item()
    assert witness_value(net, {"form": "jacobian", "x": x, "v": v}) == pytest.approx(fd, rel=1e-6)
    # x = 1: each channel's map is constant, sum(kernel) + bias, positive for channel 2 (0.491 - 0.084):
    # its windows tie among active ReLUs, whose values move with x
    with pytest.raises(InvalidInput, match="max pooling"):
        witness_value(net, {"form": "jacobian", "x": torch.ones(1, 8, 8, dtype=torch.float64), "v": v})
    # x = 0: every map is its bias, all negative: every ReLU is off, the windows tie among zeros that
    # stay zero nearby, so f is constant near 0 and the witness is valid with value 0
    assert witness_value(net, {"form": "jacobian", "x": torch.zeros(1, 8, 8, dtype=torch.float64), "v": v}) == 0.0


def test_the_central_difference_recheck_can_fail(monkeypatch):
    # a tangent path that doubles every activation's derivative must be caught by the pair path
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    w = {"form": "jacobian", "x": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64),
         "v": torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)}
    honest = witness_value(net, w)
    derivative = rounding_module._derivative
    monkeypatch.setattr(rounding_module, "_derivative", lambda node, z: 2 * derivative(node, z))
    with pytest.raises(InvalidInput, match="central difference"):
        witness_value(net, w)
    assert honest == pytest.approx(jacobian_quotient(net, w["x"], w["v"]), rel=1e-12)


def _exact_quotient_squared(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> Fraction:
    """``||f(x) - f(y)||^2 / ||x - y||^2`` in exact rational arithmetic (Linear / ReLU / Linear)."""
    def rat(t):
        return [Fraction(float(a)) for a in t.reshape(-1).tolist()]

    def f(z):
        h = rat(z)
        for layer in net:
            if isinstance(layer, nn.Linear):
                w, b = layer.weight.detach(), rat(layer.bias.detach())
                h = [sum((p * q for p, q in zip(rat(row), h)), Fraction(0)) + c for row, c in zip(w, b)]
            else:
                h = [max(Fraction(0), a) for a in h]
        return h

    num = sum((a - b) ** 2 for a, b in zip(f(x), f(y)))
    return num / sum((a - b) ** 2 for a, b in zip(rat(x), rat(y)))


def test_pair_with_huge_offset_stays_below_the_exact_rational_quotient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        net[2].weight.mul_(1e-3)
        net[2].bias.fill_(1e9)  # f(x) - f(y) cancels ~1e9 in float64
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, generator=gen, dtype=torch.float64)
    naive_above = False
    for d in (1e-9, 1e-6, 1e-3, 1e-1, 10.0):
        y = x + d * torch.randn(3, generator=gen, dtype=torch.float64)
        exact = _exact_quotient_squared(net, x, y)
        low = witness_value(net, {"form": "pair", "x": x, "y": y})
        assert Fraction(low) ** 2 <= exact
        with torch.no_grad():
            naive = ((net(x[None]) - net(y[None])).norm() / (x - y).norm()).item()
        naive_above |= Fraction(naive) ** 2 > exact
        if d == 10.0:  # far apart, the margin is a small part of the quotient
            assert low >= 0.99 * float(exact) ** 0.5
    assert naive_above  # without the margin the float quotient overshoots: the test has teeth


def test_pair_bounds_enclose_the_exact_quotient_on_random_pairs():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    graph = lipbound.as_graph(net, (4,)).to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    y = x + 10.0 ** torch.randint(-12, 1, (20, 1), generator=gen) * torch.randn(20, 4, generator=gen,
                                                                               dtype=torch.float64)
    low, high = pair_bounds(graph, x, y)
    for b in range(20):
        exact = _exact_quotient_squared(net, x[b], y[b])
        assert Fraction(float(low[b])) ** 2 <= exact <= Fraction(float(high[b])) ** 2


def test_malformed_witnesses_are_refused():
    net = _mlp(nn.ReLU(), [[1.0], [1.0]], [1.0, 0.0], [[1.0, 1.0]])
    x = torch.ones(1, dtype=torch.float64)
    for bad in ({"form": "nonsense", "x": x}, {"form": "jacobian", "x": x}, {"form": "pair", "x": x, "y": x},
                {"form": "jacobian", "x": x, "v": torch.zeros(1, dtype=torch.float64)},
                {"form": "jacobian", "x": torch.tensor([float("nan")]), "v": x}):
        with pytest.raises(InvalidInput):
            witness_value(net, bad)


@pytest.mark.parametrize("act", [None, nn.LeakyReLU(1.0)])
def test_lower_on_an_affine_graph_is_the_norm_of_its_jacobian(act):
    torch.manual_seed(0)
    layers = [nn.Conv1d(2, 3, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(18, 2)]
    if act is not None:
        layers.insert(1, act)  # LeakyReLU(1) is the identity: still affine
    net = nn.Sequential(*layers).double()
    jac = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], torch.zeros(2, 6, dtype=torch.float64))
    true = torch.linalg.matrix_norm(jac.reshape(2, 12), ord=2).item()  # f is affine: L = ||J||_2
    res = lipbound.lower_bound(net, (2, 6), time_budget=5)
    assert res.details["constant_jacobian"] and res.witness["form"] == "jacobian"
    assert true * (1 - 1e-9) <= res.value <= true


def test_lower_through_hardsigmoid_which_has_no_double_backward():
    # f(x) = 6 hardsigmoid(x) = x + 3 on (-3, 3), constant outside: L = 1. On the box [0, 1] with
    # g(x) = 6 hardsigmoid(0.1 x + 10): the input stays above 3, g is constant there: L = 0.
    f = _mlp(nn.Hardsigmoid(), [[1.0]], [0.0], [[6.0]])
    res = lipbound.lower_bound(f, (1,), time_budget=5, steps=30, starts=8)
    assert 1 - 1e-12 <= res.value <= 1.0
    g = _mlp(nn.Hardsigmoid(), [[0.1]], [10.0], [[6.0]])
    res = lipbound.lower_bound(g, (1,), domain=(0.0, 1.0), time_budget=5, steps=30, starts=8)
    assert res.value == 0.0 and witness_value(g, res.witness, domain=(0.0, 1.0)) == 0.0


def test_typed_witnesses_recheck_alike_on_every_path_and_keep_their_json_form():
    # f(x) = [relu(x1 + 1) + relu(x1), ...]: at x = 1 both units are active, Df = [[2]], so the point
    # witness (1, v) shows 2 (hand-derived), as does the pair (1, 2): f(2) - f(1) = (5 - 3) = 2.
    net = _mlp(nn.ReLU(), [[1.0], [1.0]], [1.0, 0.0], [[1.0, 1.0]])
    graph = lipbound.as_graph(net, (1,))
    one, two = torch.ones(1, dtype=torch.float64), torch.full((1,), 2.0, dtype=torch.float64)
    for witness, form, second in ((PointWitness(one, one), "jacobian", "v"), (PairWitness(one, two), "pair", "y")):
        as_json = json.loads(json.dumps(lipbound.Result("lower", 1.0, "witnessed_lower", witness=witness).to_dict()))
        assert as_json["witness"] == {"form": form, "x": [1.0], second: [witness[second].item()]}
        values = {witness.recheck(graph), witness_value(net, witness), witness_value(net, as_json["witness"]),
                  witness_value(graph, witness.to_dict(), domain=(0.0, 2.0))}
        assert len(values) == 1 and 2 * (1 - 1e-12) <= values.pop() <= 2
        with pytest.raises(InvalidInput, match="witness_value"):
            witness.recheck(net)  # a module needs the frontend: lipbound.witness_value
        with pytest.raises(InvalidInput, match="outside the domain"):
            witness.recheck(graph, domain=(1.5, 3.0))


def test_lower_returns_a_typed_witness_carrying_its_rechecked_value():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    res = lipbound.lower_bound(net, (3,), time_budget=2, starts=8, steps=20)
    w = res.witness
    assert isinstance(w, (PointWitness, PairWitness)) and w.value == res.value == res.details[f"{w.form}_value"]
    assert w.recheck(lipbound.as_graph(net, (3,))) == res.value
    if w.form == "jacobian":  # the hand-written Jacobian: another evaluation path
        assert jacobian_quotient(net, w.x, w.v) == pytest.approx(res.value, rel=1e-9)
    else:
        assert (net(w.x) - net(w.y)).norm().item() / (w.x - w.y).norm().item() == pytest.approx(res.value, rel=1e-9)
