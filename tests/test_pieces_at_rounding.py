"""The forward error bound of :meth:`PiecewiseNet.pieces_at` against exact rational arithmetic.

Oracle: the network evaluated in :class:`fractions.Fraction` (every float64 weight, bias, piece and
input is an exact rational), independent of the float64 code under test. On small random nets of
ReLU, LeakyReLU, a four-piece activation, HardSigmoid (torch's and ONNX's: float pieces that jump
by ``~3e-17`` at their breakpoints) and a ReLU whose upper piece is raised by ``2^-30`` (a jump made
large enough to be seen), with rows scaled by powers of two from ``2^-24`` to ``2^24`` and biases
placed so that some pre-activations fall within rounding of a breakpoint (where the float and the
exact pre-activation may lie in different pieces), every hidden neuron must have ``|z^ - z| <=
e_z``, and a neuron called clear must have ``z`` strictly inside ``z^``'s piece.

HardSigmoid's jumps (at most about ``u |bp|`` times its slope) are covered by the slope term ``L e_z``
alone, since ``e_z >= gamma_2 |z^|`` near ``bp``; sampling cannot tell whether the jump term is
there. ``JUMPY`` can: dropping the term from :meth:`PiecewiseNet.rounded_layers` fails this test on it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from lipbound.graph.activation_facts import PiecewiseLinear
from lipbound.graph.activations import hard_sigmoid
from lipbound.methods.exact_network import PiecewiseNet, _rounded_up
from lipbound.methods.piecewise import DenseLayer

RELU = PiecewiseLinear((0.0,), (0.0, 1.0), (0.0, 0.0))
LEAKY = PiecewiseLinear((0.0,), (0.01, 1.0), (0.0, 0.0))
# continuous in exact arithmetic: -0.25 - 0.75 = -1, 0.5 = -0.25 + 0.75, -1 + 0.75 = -0.25
FOUR = PiecewiseLinear((-1.0, 0.5, 2.0), (0.25, 1.0, -0.5, 0.0), (-0.75, 0.0, 0.75, -0.25))
HARD_SIGMOID = hard_sigmoid().pieces  # slope fl(1/6), breakpoints -3, 3: jumps of 2.8e-17
HARD_SIGMOID_ONNX = hard_sigmoid(0.2, 0.5).pieces  # slope fl(0.2), breakpoints -2.5, 2.5
JUMPY = PiecewiseLinear((0.0,), (0.0, 1.0), (0.0, 2.0 ** -30))  # jumps by 2^-30 at 0
ALL = [RELU, LEAKY, FOUR, HARD_SIGMOID, HARD_SIGMOID_ONNX, JUMPY]
IDS = ["relu", "leaky", "four", "hardsigmoid", "hardsigmoid-onnx", "jumpy"]


def _exact_act(pieces: PiecewiseLinear, z: Fraction) -> Fraction:
    """``s(z)`` exactly, from the float pieces as stored: the piece is the number of breakpoints
    below ``z`` (at a breakpoint, where pieces that do not meet exactly jump, the lower piece)."""
    k = sum(Fraction(bp) < z for bp in pieces.breakpoints)
    return Fraction(pieces.slopes[k]) * z + Fraction(pieces.offsets[k])


def _exact_pre(layers: list[DenseLayer], x: np.ndarray) -> list[list[Fraction]]:
    """The exact pre-activations of every hidden layer at the float point ``x``."""
    h, out = [Fraction(float(v)) for v in x], []
    for layer in layers[:-1]:
        w, b = layer.weight.numpy(), layer.bias.numpy()
        z = [sum((Fraction(float(w[i, j])) * h[j] for j in range(len(h))), Fraction(float(b[i])))
             for i in range(len(b))]
        out.append(z)
        h = [_exact_act(layer.pieces, v) for v in z]
    return out


def _random_net(rng: np.random.Generator, pieces: PiecewiseLinear, x0: np.ndarray,
                widths: list[int]) -> list[DenseLayer]:
    """Layers with rows scaled by random powers of two, and about half the biases chosen so that
    the float pre-activation at ``x0`` is within rounding of a random breakpoint."""
    layers, h, dims = [], x0, [len(x0)] + widths
    for m, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        w = rng.standard_normal((n_out, n_in)) * 2.0 ** rng.integers(-24, 25, size=(n_out, 1))
        b = rng.standard_normal(n_out) * 2.0 ** rng.integers(-24, 25, size=n_out)
        last = m == len(widths) - 1
        if not last:
            near = rng.random(n_out) < 0.5
            bp = np.array(pieces.breakpoints)[rng.integers(0, len(pieces.breakpoints), size=n_out)]
            b = np.where(near, bp - h @ w.T, b)
        layers.append(DenseLayer(torch.tensor(w), torch.tensor(b), None if last else pieces, f"l{m}"))
        if not last:
            h = pieces(torch.tensor(h @ w.T + b)).numpy()
    return layers


@pytest.mark.parametrize("pieces", ALL, ids=IDS)
def test_pre_activation_errors_are_bounded(pieces: PiecewiseLinear) -> None:
    rng = np.random.default_rng(7)
    for _ in range(12):
        x0 = rng.standard_normal(5) * 2.0 ** rng.integers(-20, 21, size=5)
        layers = _random_net(rng, pieces, x0, [6, 5, 6, 4, 2])
        net = PiecewiseNet(layers)
        # x0 (near the breakpoints by construction), a few ulps away from it, and far points
        points = np.concatenate([x0[None], x0 * (1 + 2.0 ** -52 * rng.integers(-4, 5, size=(6, 5))),
                                 rng.standard_normal((3, 5)) * 2.0 ** rng.integers(-20, 21, size=(3, 5))])
        for p, x in enumerate(points):
            exact = _exact_pre(layers, x)
            for m, (z, ez, piece, clear) in enumerate(net.rounded_layers(x[None])):
                bps = [Fraction(v) for v in pieces.breakpoints]
                for i, zi in enumerate(exact[m]):
                    err = abs(Fraction(float(z[0, i])) - zi)
                    assert err <= Fraction(float(ez[0, i])), (pieces, p, m, i, float(err), ez[0, i])
                    if clear[0, i]:
                        assert sum(bp < zi for bp in bps) == piece[0, i] and zi not in bps


def test_some_neurons_are_not_clear_and_some_are() -> None:
    """The near-breakpoint construction reaches the non-clear case the bound must handle."""
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal(5)
    net = PiecewiseNet(_random_net(rng, RELU, x0, [6, 5, 6, 4, 2]))
    _, clear, _ = net.pieces_at(x0[None])
    assert clear.any() and not clear.all()


@pytest.mark.parametrize("pieces", [HARD_SIGMOID, HARD_SIGMOID_ONNX, JUMPY], ids=IDS[3:])
def test_pieces_jump_and_some_neurons_straddle_a_breakpoint(pieces: PiecewiseLinear) -> None:
    """The oracle's premises: the float pieces do not meet at some breakpoint, and the near-breakpoint
    construction puts the float and the exact pre-activation of some neuron in different pieces,
    where the jump enters ``|h^' - s(z)|``."""
    jumps = [(Fraction(a1) - Fraction(a0)) * Fraction(bp) + Fraction(o1) - Fraction(o0) for bp, a0, a1, o0, o1
             in zip(pieces.breakpoints, pieces.slopes, pieces.slopes[1:], pieces.offsets, pieces.offsets[1:])]
    assert any(jumps)
    rng = np.random.default_rng(7)
    straddles = 0
    for _ in range(12):
        x0 = rng.standard_normal(5) * 2.0 ** rng.integers(-20, 21, size=5)
        layers = _random_net(rng, pieces, x0, [6, 5, 6, 4, 2])
        exact = _exact_pre(layers, x0)
        for m, (_, _, piece, _) in enumerate(PiecewiseNet(layers).rounded_layers(x0[None])):
            straddles += sum(sum(Fraction(bp) < zi for bp in pieces.breakpoints) != piece[0, i]
                             for i, zi in enumerate(exact[m]))
    assert straddles > 0


def test_rounded_up_covers_a_sum_that_rounds_down_at_every_step() -> None:
    """``1 + d + d + ...`` with ``d`` just under half an ulp of 1: each float addition returns 1,
    the exact sum is ``1 + k d``; :func:`_rounded_up` must reach it (``depth = k``)."""
    d = 0.99 * 2.0 ** -53
    for k in (1, 3, 20, 200):
        t = 1.0
        for _ in range(k):
            t = t + d
        assert t == 1.0
        bound = _rounded_up(np.array([t]), depth=k, ops=k, tiny=0)[0]
        assert Fraction(float(bound)) >= 1 + k * Fraction(d)


def test_rounded_up_covers_underflow() -> None:
    """Products that underflow to (nearly) nothing: the bound still covers ``X + tiny T``."""
    tiny = 2.0 ** -1022
    a, b = 2.0 ** -600, 2.0 ** -500  # a b = 2^-1100, far below the subnormals' 2^-1074
    t = a * b + a * b
    assert t == 0.0
    bound = _rounded_up(np.array([t]), depth=2, ops=3, tiny=5)[0]
    assert Fraction(float(bound)) >= 2 * Fraction(a) * Fraction(b) + 5 * Fraction(tiny)
