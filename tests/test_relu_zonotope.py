"""The zonotope Jacobian bound (:mod:`lipbound.methods.relu_zonotope`) against independent oracles:
the supremum of the slope box by brute force over its vertices (numpy SVD of each materialised
``W_K D_{K-1} ... D_1 W_1``), Jacobian norms on a grid of the box (numpy), and the norm of the one
Jacobian of a box where every neuron is stable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipbound.methods.relu_boxes import bound_boxes, relu_chain
from lipbound.methods.relu_zonotope import zonotope_bound

from test_exact import graph_of, inside, witness_quotient
from test_local_bab import local_bab, relu_jacobian_norms, relu_net, sub_boxes, vertex_sup


def boxes_and_bounds(seed: int, n: int, widths, count: int, half: float):
    net = relu_net(seed, n, widths=widths)
    layers = relu_chain(graph_of(net))
    lows, highs = sub_boxes(seed, n, count, half)
    res = bound_boxes(layers, torch.from_numpy(lows), torch.from_numpy(highs))
    return net, layers, lows, highs, res


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("keep", [2, 64])
def test_zonotope_bound_stays_above_the_slope_box_supremum(seed, keep):
    """Never below the supremum of the box's slope box (brute force over its vertices, boxes with
    at most 9 unstable neurons) nor below the Jacobian norms on a grid of the box; ``keep=2`` moves
    most generators to the remainder (the order reduction)."""
    n = 2 + seed % 3
    net, layers, lows, highs, res = boxes_and_bounds(seed, n, (5, 4, 3), 12, 0.6)
    z = zonotope_bound(layers, res.pre, n, keep=keep)
    checked = 0
    for b in range(len(lows)):
        grid = np.stack(np.meshgrid(*[np.linspace(lows[b][i], highs[b][i], 4) for i in range(n)]), -1).reshape(-1, n)
        assert float(z[b]) >= relu_jacobian_norms(net, grid).max() * (1 - 1e-12), b
        if int(res.unstable[b]) <= 9:
            checked += 1
            sup = vertex_sup(net, [(l[b].numpy(), u[b].numpy()) for l, u in res.pre])
            assert float(z[b]) >= sup * (1 - 1e-12), (b, int(res.unstable[b]))
    assert checked >= 4


def test_zonotope_bound_is_the_jacobian_norm_when_every_neuron_is_stable():
    """Tiny boxes: every neuron stable, the bound is the norm of the box's one Jacobian (numpy, at
    the centre) up to rounding."""
    net, layers, lows, highs, res = boxes_and_bounds(1, 3, (6, 5), 8, 1e-7)
    z = zonotope_bound(layers, res.pre, 3)
    assert bool((res.unstable == 0).all())
    for b in range(len(lows)):
        exact = relu_jacobian_norms(net, ((lows[b] + highs[b]) / 2)[None])[0]
        assert exact <= float(z[b]) <= exact * (1 + 1e-8) + 1e-300


@pytest.mark.parametrize("seed", range(3))
def test_zonotope_bound_is_tighter_than_the_interval_jacobian_on_deep_nets(seed):
    """Four hidden layers of 8, boxes with many unstable neurons: the zonotope keeps the first-order
    cancellations that the interval Jacobian (with its meeting points) loses; below it on most boxes."""
    net, layers, lows, highs, res = boxes_and_bounds(seed, 3, (8, 8, 8, 8), 16, 0.5)
    z = zonotope_bound(layers, res.pre, 3)
    busy = res.unstable >= 6
    assert int(busy.sum()) >= 4
    assert float((z[busy] / res.value[busy]).median()) < 0.9


@pytest.mark.parametrize("seed", range(2))
def test_zonotope_bound_of_a_box_does_not_depend_on_its_batch(seed):
    """Each box bounded alone gets its bound in the batch (chunks of 3 boxes, ``keep`` binding)."""
    n = 3
    net, layers, lows, highs, res = boxes_and_bounds(seed, n, (6, 6, 6), 9, 0.6)
    z = zonotope_bound(layers, res.pre, n, keep=8, chunk=3)
    for b in range(len(lows)):
        one = zonotope_bound(layers, [(l[b:b + 1], u[b:b + 1]) for l, u in res.pre], n, keep=8)
        assert float(one[0]) == pytest.approx(float(z[b]), rel=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_batched_search_with_zonotope_bounds_brackets_the_grid_constant(seed):
    """The batched search bounding every top part by the zonotope (``full_units=0``): the bracket
    holds the largest Jacobian norm on a grid of the box and its witness re-checks in the box."""
    net = relu_net(seed, 5, widths=(8, 8, 8))
    low, high = -0.3 * np.ones(5), 0.3 * np.ones(5)
    grid = np.stack(np.meshgrid(*[np.linspace(-0.3, 0.3, 6)] * 5), -1).reshape(-1, 5)
    sampled = relu_jacobian_norms(net, grid).max()
    res = local_bab(net, low, high, time_budget=0.7, lower_share=0.0, full_units=0, zonotope=4)
    lower, upper = res.bracket
    assert upper >= sampled * (1 - 1e-12)
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert inside(net, [], x, (low.tolist(), high.tolist()))
    assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)
