"""Localize a graph on a region without losing the tighter per-neuron bounds it already carries.

A graph localized on a region ``R`` (:func:`~lipbound.methods.propagation.localize`, e.g. the API's
``method="auto"``: CROWN refined by a split tree) carries, for every activation, bounds ``[l, u]``
of its input that hold at every input of ``R``. A method that localizes the graph again on a region
``X`` (a box, a part of one, a ball) with a cheaper propagation (plain CROWN) would throw the
tighter ones away. :func:`localize_keeping` intersects instead.

**Soundness.** When ``X`` is a subset of ``R`` (:func:`covers`), the carried bounds hold at every
input of ``X`` (they hold on all of ``R``), and so do the fresh ones; every pre-activation value at
an input of ``X`` lies in both intervals, hence in their intersection ``[max(l, l'), min(u, u')]``,
which is therefore sound on ``X``, for the exact real network (both are: module doc of
:mod:`~lipbound.methods.propagation`). Neither is ever replaced by a looser one. When ``X`` is not
known to lie inside ``R`` the carried bounds are not used at all: they may fail at inputs of ``X``
outside ``R``.

**The containment test** is rigorous: ``X`` lies in ``R`` when its bounding box ``[X.low, X.high]``
does, and the box is taken to lie in ``R`` when ``R.contains`` (which accepts a point only if it is
in ``R`` for exact arithmetic: :mod:`.region`) accepts the box's two extreme corners ``low`` and
``high`` and its corner farthest from ``R``'s centre. That suffices for the convex regions there are (a
union of boxes is never taken to cover anything): a
box or an L-infinity ball (a box, which holds a box when it holds both extreme corners) and an L2
ball (it holds a box when it holds the box's corner farthest from its centre, where the distance
to the centre, convex and separable, peaks on the box). So an L-infinity ball's own bounding box,
rounded outwards (:class:`.region.Ball`), is *not* covered by the ball: a method that works on that
box does not get the bounds carried on the ball.
"""

from __future__ import annotations

from typing import Any

import torch

from ..graph.ir import Activation, Graph, MaxPool
from .propagation import localize
from .region import BoxUnion

__all__ = ["covers", "carried_bounds", "localize_keeping"]

Bounds = tuple[torch.Tensor, torch.Tensor]


def covers(region: Any, inner: Any) -> bool:
    """Whether ``inner`` (a box or a ball: its bounding box ``[inner.low, inner.high]``) certainly
    lies inside ``region`` (module doc); False for no region, another input shape, or a union of boxes
    (not convex: a box whose corners lie in the union may still cross a gap between its parts)."""
    if (region is None or isinstance(region, BoxUnion) or not hasattr(region, "contains")
            or tuple(region.center.shape) != tuple(inner.low.shape)):
        return False
    low, high = inner.low.to(torch.float64), inner.high.to(torch.float64)
    centre = region.center.to(low)
    far = torch.where((low - centre).abs() > (high - centre).abs(), low, high)
    return bool(region.contains(torch.stack([low, high, far])).all())


def carried_bounds(graph: Graph, region: Any) -> dict[str, Bounds]:
    """The pre bounds ``{node name: (l, u)}`` that ``graph`` carries and that hold on ``region``: all
    of them when the graph's region covers it (:func:`covers`), none otherwise."""
    if not covers(graph.region, region):
        return {}
    return {name: node.pre for name, node in graph.nodes.items()
            if isinstance(node, (Activation, MaxPool)) and node.pre is not None}


def localize_keeping(graph: Graph, region: Any, *, method: str = "crown", time_budget: float | None = None) -> Graph:
    """``localize(graph, region, method=..., time_budget=...)`` with every activation's bounds
    intersected with those ``graph`` carries when its region covers ``region`` (module doc: sound on
    ``region``, never looser than either)."""
    local = localize(graph, region, method=method, time_budget=time_budget)
    kept = carried_bounds(graph, region)
    mine = {name: node.pre for name, node in local.nodes.items()
            if isinstance(node, (Activation, MaxPool)) and node.pre is not None}
    both = {name: (torch.maximum(l, kept[name][0].to(l).reshape(l.shape)),
                   torch.minimum(u, kept[name][1].to(u).reshape(u.shape)))
            for name, (l, u) in mine.items() if name in kept}
    if not both:
        return local
    out = local.localized(region, {**mine, **both})
    out.notes.append(f"pre bounds intersected with those carried on {graph.region.describe()} ({len(both)} layers)")
    return out
