"""A seeded family of tiny piecewise-linear nets, with and without box domains and thin slabs,
where ``exact`` must agree with the brute-force oracle of ``test_exact`` (every piece pattern of
the original activations, exact re-checks of points, pairs and witnesses)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from lipbound.methods.exact import exact

from test_exact import Abs, Net, activation_formula, check, graph_of

ACTIVATIONS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.ReLU6, lambda: nn.Hardtanh(-1.0, 1.0), nn.Hardsigmoid, Abs]


def random_net(seed: int) -> tuple[Net, tuple | None, list]:
    """A net of 1-3 inputs and one or two hidden layers of 2-3 neurons (2 with two kinks; one activation kind),
    weights and biases scaled to reach every piece, on ``R^n`` or a box; every other net gets a
    slab of width ``1e-10`` in its last hidden layer with slope ~30 across it, and the pair of
    inputs that crosses it."""
    rng = np.random.default_rng(seed)
    make = ACTIVATIONS[seed % len(ACTIVATIONS)]
    n = int(rng.integers(1, 4))
    bps = activation_formula(make())[0]
    widths = [int(w) for w in rng.integers(2, 5 - len(bps), size=int(rng.integers(1, 3)))]  # 2-3, or 2 with two kinks
    scale = 1.0 + float(max(abs(b) for b in bps))  # pre-activations of the size of the breakpoints
    sizes = [n] + widths + [int(rng.integers(1, 3))]
    ws = [rng.normal(size=(b, a)) * (scale if k < len(widths) else 1.0)
          for k, (a, b) in enumerate(zip(sizes, sizes[1:]))]
    bs = [rng.normal(size=b) * scale for b in sizes[1:]]
    box = None if seed % 4 < 2 else (-1.0, 2.0)
    net = Net(ws, bs, [make() for _ in widths])
    pairs = []
    if seed % 2:
        net, pairs = with_slab(net, rng, box)
    return net, box, pairs


def with_slab(net: Net, rng, box) -> tuple[Net, list]:
    """Two more neurons in the last hidden layer, ``s(t - bp)`` and ``s(t - bp - w)`` with ``t`` a
    random direction of the previous layer's output and ``bp`` the activation's first kink, read
    out with weights ``+K, -K``: across ``t`` in ``(t0, t0 + w)`` near a random input ``x0`` the slope
    jumps by ``K`` times the kink's change of slope."""
    width, k = 1e-10, 30.0
    n = net.ws[0].shape[1]
    last_w, last_b = net.ws[-2], net.bs[-2]
    u = rng.normal(size=last_w.shape[0])
    bp = float(activation_formula(net.acts[-1])[0][0])
    readout = np.zeros((net.ws[-1].shape[0], 2))
    readout[0] = [k, -k]
    for _ in range(20):  # a start x0 where the slab's direction t varies (not in a saturated zone)
        x0 = rng.uniform(-1.0, 2.0, size=n) if box else rng.normal(size=n)
        h = x0
        for w, b, act in zip(net.ws[:-2], net.bs[:-2], net.acts[:-1]):
            h = np.array([float(activation_formula(act)[1](z)) for z in _fractions(w @ h + b)])
        t0 = float(u @ (last_w @ h + last_b))  # the slab starts at x0
        ws, bs = list(net.ws), list(net.bs)
        ws[-2] = np.vstack([last_w, u @ last_w, u @ last_w])
        bs[-2] = np.concatenate([last_b, [u @ last_b - t0 + bp, u @ last_b - t0 + bp - width]])
        ws[-1] = np.hstack([net.ws[-1], readout])
        slab = Net(ws, bs, net.acts)
        g = _gradient_of_slab(slab, x0)
        if np.linalg.norm(g) > 1e-3:
            # a pair inside the slab: x0 moved along the gradient of t by a quarter of the slab's width
            step = width / 4 / float(np.linalg.norm(g)) ** 2 * g
            return slab, [(x0 + step, x0 + 3 * step)]
    return net, []


def _fractions(v):
    from fractions import Fraction

    return [Fraction(float(t)) for t in v]


def _gradient_of_slab(net: Net, x0) -> np.ndarray:
    """Central differences of the slab's first neuron's pre-activation at ``x0`` (a direction to
    cross the slab; the pair quotient itself is exact)."""
    def t(x):
        _, zs = net.forward(_fractions(x))
        return float(zs[-1][-2])

    eps = 1e-6
    return np.array([(t(x0 + eps * e) - t(x0 - eps * e)) / (2 * eps) for e in np.eye(len(x0))])


@pytest.mark.parametrize("seed", range(24))
def test_random_tiny_nets_match_the_brute_force_oracle(seed):
    net, box, pairs = random_net(seed)
    res = exact(graph_of(net), domain=box, lower_budget=0, time_budget=60)
    lo, up = check(net, res, box=box, pairs=pairs)
    if up <= lo * (1 + 1e-9):  # the oracle knows the constant (else a region has no float64 point)
        assert res.kind == "exact" and res.value == pytest.approx(lo, rel=1e-9)
