"""Keeping the bounds a localized graph carries (:mod:`lipbound.methods.carried_bounds`): the
containment test against geometry known by construction, and the intersected bounds against
pre-activations sampled from the torch network (an oracle independent of the propagation code)."""

from __future__ import annotations

import torch

from lipbound.api import as_graph
from lipbound.methods.carried_bounds import covers, localize_keeping
from lipbound.methods.propagation import localize
from lipbound.methods.region import Ball, Box, BoxUnion

from oracles import seeded_mlp

WIDTHS = (5, 12, 12, 12, 3)  # seed 1 on [-0.6, 0.6]^5: CROWN leaves 30 neurons unstable, split-crown 22


def _box(low: list[float], high: list[float]) -> Box:
    return Box(torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64))


def _cube(r: float, n: int = WIDTHS[0], shift: float = 0.0) -> Box:
    return Box(torch.full((n,), shift - r, dtype=torch.float64), torch.full((n,), shift + r, dtype=torch.float64))


def _pre_samples(net: torch.nn.Sequential, box: Box, n: int = 4000) -> list[torch.Tensor]:
    """Each ReLU's input at ``n`` points of the box (its corners among them)."""
    gen = torch.Generator().manual_seed(0)
    x = box.low + torch.rand((n, len(box.low)), generator=gen, dtype=torch.float64) * (box.high - box.low)
    x = torch.cat([x, box.low[None], box.high[None]])
    out = []
    for m in net:
        if isinstance(m, torch.nn.ReLU):
            out.append(x.clone())
        x = m(x)
    return out


def _bounds(graph) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [n.pre for n in graph.nodes.values() if getattr(n, "pre", None) is not None]


def test_covers_boxes_and_balls_only_when_every_point_is_inside():
    outer = _box([-1, -1], [1, 1])
    assert covers(outer, _box([-1, -0.5], [0.5, 1]))
    assert not covers(outer, _box([-1, -0.5], [1.5, 1]))
    assert not covers(None, outer)
    assert not covers(_box([-1, -1, -1], [1, 1, 1]), outer)  # another input shape
    ball = Ball(torch.zeros(2, dtype=torch.float64), 1.0, 2)
    # both extreme corners are in the L2 ball (norm 0.806), the corner (0.8, -0.8) is not (1.13)
    assert not covers(ball, _box([-0.1, -0.8], [0.8, 0.1]))
    assert covers(ball, _box([-0.5, -0.5], [0.5, 0.5]))  # farthest corner at 0.707
    linf = Ball(torch.zeros(2, dtype=torch.float64), 1.0, "inf")
    assert covers(linf, _box([-0.5, -0.9], [0.9, 0.5]))  # (its boundary itself is refused: rounding)
    assert not covers(linf, _box([-1, -1], [1, 1.5]))
    assert covers(outer, Ball(torch.zeros(2, dtype=torch.float64), 0.5, 2))  # a ball by its bounding box
    # a union of two boxes with a gap: both corners of [-1, 1]^2 (and its far corner) lie in a part,
    # but the box crosses the gap (0, 0) lies in neither part
    union = BoxUnion([_box([-1, -1], [-0.5, 1]), _box([0.5, -1], [1, 1])])
    assert bool(union.contains(torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)).all())
    assert not bool(union.contains(torch.zeros(1, 2, dtype=torch.float64)).any())
    assert not covers(union, outer)


def test_kept_bounds_are_the_intersection_and_hold_at_sampled_points():
    """On a sub-box of the region the graph was localized on (split-crown, tighter than CROWN),
    the kept bounds are the intersection of the sub-box's CROWN bounds with the carried ones,
    strictly tighter than CROWN alone here, and every sampled pre-activation lies inside them."""
    net = seeded_mlp(1, WIDTHS)
    g = as_graph(net, (WIDTHS[0],))
    region = _cube(0.6)
    carried = localize(g, region, method="split-crown")
    assert len(carried.unstable_neurons()) < len(localize(g, region).unstable_neurons())
    sub = _box([-0.6, -0.5, -0.6, -0.2, -0.6], [0.6, 0.6, 0.3, 0.6, 0.6])
    kept = localize_keeping(carried, sub)
    crown = localize(g, sub)
    for (l, u), (lc, uc), (lr, ur), z in zip(_bounds(kept), _bounds(crown), _bounds(carried), _pre_samples(net, sub)):
        assert torch.equal(l, torch.maximum(lc, lr)) and torch.equal(u, torch.minimum(uc, ur))
        assert (z >= l).all() and (z <= u).all()
    assert len(kept.unstable_neurons()) < len(crown.unstable_neurons())
    assert kept.region is sub


def test_bounds_carried_on_a_region_that_does_not_cover_the_box_are_not_used():
    """Bounds localized on a small box do not hold on a larger one: they must be ignored there
    (the result is CROWN's on the larger box, which holds at every sampled point)."""
    net = seeded_mlp(1, WIDTHS)
    g = as_graph(net, (WIDTHS[0],))
    small = localize(g, _cube(0.05), method="split-crown")
    big = _cube(0.6)
    kept = localize_keeping(small, big)
    for (l, u), (lc, uc), z in zip(_bounds(kept), _bounds(localize(g, big)), _pre_samples(net, big)):
        assert torch.equal(l, lc) and torch.equal(u, uc)
        assert (z >= l).all() and (z <= u).all()
