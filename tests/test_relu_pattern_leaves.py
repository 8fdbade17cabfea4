"""The pattern tree's leaves settled by LP (:mod:`lipbound.methods.pattern_leaves`) against independent
oracles: ``test_exact``'s brute force over activation patterns with scipy LPs (the constant on the box),
Jacobian norms by numpy at the points found (another evaluation path than the chain's), the
:class:`~lipbound.methods.witness.PointWitness` re-check on the graph, and points sampled in the box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipbound.methods.pattern_leaves import settle_leaves
from lipbound.methods.relu_boxes import pre_bounds, relu_chain
from lipbound.methods.relu_patterns import pattern_bound, pattern_tree
from lipbound.methods.witness import PointWitness

from test_exact import graph_of
from test_relu_patterns import constant_of, grid_jacobian_norms, part_of
from test_local_bab import relu_net, sub_boxes


@pytest.mark.parametrize("seed", range(8))
def test_settled_bound_covers_the_constant_and_never_exceeds_the_tree(seed):
    """Every leaf settled (no seed, many LPs): the bound with the leaves proved empty dropped is never below
    the constant on the box (the region oracle), never above the tree's own bound, and every point found
    is a point of the box whose numpy Jacobian norm is at most the constant's upper end."""
    net, chain, lo, hi, pre = part_of(seed)
    tree = pattern_tree(chain, pre, lo, hi)
    keep, points = settle_leaves(tree, lps=10_000)
    truth, upper = constant_of(seed)
    bound = float(tree.bound(keep)[0])
    assert bound >= truth * (1 - 1e-12), "a leaf with a point of the box was dropped"
    assert bound <= float(pattern_bound(chain, pre, lo, hi)[0])
    assert len(points) == 1
    assert bool(((points >= lo) & (points <= hi)).all())
    assert float(grid_jacobian_norms(net, points.numpy()).max()) <= upper * (1 + 1e-9)


def test_settling_closes_boxes_and_drops_leaves_somewhere():
    """A tree without its own emptiness tests (no Farkas ascent, no box cuts) keeps empty leaves: settled,
    on some boxes the top leaves are proved empty and the bound falls, never below the constant (the
    region oracle); on every box the point found has the Jacobian norm of the largest leaf kept (the
    part's bracket closes: lower = upper, up to rounding), checked by numpy."""
    fell = 0
    for seed in range(8):
        net, chain, lo, hi, pre = part_of(seed)
        tree = pattern_tree(chain, pre, lo, hi, passes=0, farkas=0)
        keep, points = settle_leaves(tree, lps=10_000)
        bound = float(tree.bound(keep)[0])
        fell += bound < float(tree.bound()[0])
        assert bound >= constant_of(seed)[0] * (1 - 1e-12), seed
        norm = float(grid_jacobian_norms(net, points.numpy())[0])
        assert norm == pytest.approx(bound, rel=1e-8), seed
    assert fell >= 2


@pytest.mark.parametrize("seed", range(3))
def test_points_are_witnesses_of_their_leaf_on_many_small_boxes(seed):
    """Two inputs, two hidden layers of 8, 40 small boxes, one LP a box: each point found re-checks as a
    Jacobian witness in its box (PointWitness on the graph) with the value of a leaf of that box, and the
    settled bounds stay above the largest Jacobian norm on a 40 x 40 grid of each box."""
    net = relu_net(seed, 2, widths=(8, 8))
    graph = graph_of(net).to(dtype=torch.float64)
    chain = relu_chain(graph)
    lows, highs = sub_boxes(seed, 2, 40, 0.3)
    lo, hi = torch.from_numpy(lows), torch.from_numpy(highs)
    tree = pattern_tree(chain, pre_bounds(chain, lo, hi), lo, hi)
    keep, points = settle_leaves(tree, lps=1)
    bounds = tree.bound(keep)
    t = np.linspace(0, 1, 40)
    for b in range(len(lows)):
        grid = lows[b] + (highs[b] - lows[b]) * np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
        assert float(bounds[b]) >= grid_jacobian_norms(net, grid).max() * (1 - 1e-12), b
    checked = 0
    for x in points:
        b = int(((x >= lo) & (x <= hi)).all(1).nonzero()[0])
        J = chain_free_jacobian(net, x)
        v = torch.as_tensor(np.linalg.svd(J)[2][0])
        value = PointWitness(x, v).recheck(graph, (lo[b], hi[b]))
        leaves = tree.value[tree.box == b]
        assert float((leaves - value).abs().min()) <= 1e-8 * value, b
        checked += 1
    assert checked >= 20


def chain_free_jacobian(net, x: torch.Tensor) -> np.ndarray:
    """The Jacobian at ``x`` by numpy (the net's own weights, not the chain's)."""
    h, J = x.numpy(), np.eye(len(x))
    for k in range(len(net.acts)):
        z = net.ws[k] @ h + net.bs[k]
        h, J = np.maximum(z, 0), (z > 0)[:, None] * (net.ws[k] @ J)
    return net.ws[-1] @ J


@pytest.mark.parametrize("seed", range(8))
def test_settled_bound_of_a_small_seeded_tree_keeps_its_other_rows(seed):
    """A tree seeded at half the constant and stopped at 2 rows: its stopped and pruned rows (``rest``) stay
    in the settled bound, which is never below the constant (the region oracle) however many leaves are
    proved empty."""
    net, chain, lo, hi, pre = part_of(seed)
    truth, _ = constant_of(seed)
    tree = pattern_tree(chain, pre, lo, hi, seed=truth / 2, max_leaves=2, passes=0, farkas=0)
    keep, _ = settle_leaves(tree, lps=10_000)
    assert float(tree.bound(keep)[0]) >= truth * (1 - 1e-12)
