"""Interval bound propagation (IBP) of a graph over an input region, with its rounding: the first,
cheapest sound bounds of :mod:`.propagation` (which intersects CROWN's with them).

**IBP** (:func:`interval_bounds`), node by node in topological order, each node's interval
``[l, u]`` from its inputs':

* input: the region's bounding box ``[region.low, region.high]``;
* affine ``A h + b``: center/radius form ``A c + b +- |A| r`` with ``c = (l + u) / 2``,
  ``r = (u - l) / 2``; ``|A|`` is the operator with absolute weights where it is cheap, else the
  certified-norm substitute ``(|A| r)_i <= ||A||_2 ||r||_2`` (both from :mod:`.rounding`);
* activation: its range on ``[l, u]`` (:func:`.relaxations.value_range`): exact for piecewise-linear
  ones (the ends and the breakpoints inside), from slope intervals on pieces of ``[l, u]`` for the
  others;
* max pooling: ``[pool(l), pool(u)]`` (the max is monotone); add: the sum; concat: the concatenation.


**Rounding.** Every step runs in float64 and is widened outwards by a rigorous margin, so the bounds
hold for the exact network: the affine step is :func:`.float_error.linear_error`; a result of at most
``m`` floating-point operations on terms whose absolute values sum to ``M`` is widened by
``gamma_{m+2} M + 2^-1022`` (:func:`widen`); activation ranges carry the error bounds of
:func:`.relaxations.value_range`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInput, UnsupportedOperation
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node
from .backsubstitution import Bounds, center_radius
from .float_error import TINY, gamma, linear_error, round_up
from .relaxations import value_range

__all__ = ["interval_bounds", "interval", "region_box", "widen", "float64_graph", "activation_inputs", "pre_of"]


def widen(lo: torch.Tensor, hi: torch.Tensor, mag: torch.Tensor, ops: int = 6) -> Bounds:
    """``[lo, hi]`` computed by at most ``ops`` float64 operations on terms whose absolute values
    sum to at most ``mag``, widened to a rigorous enclosure of the exact values:
    ``-+ (gamma_{ops+2} mag + tiny)`` (the widening's own rounding is within the headroom)."""
    pad = gamma(ops + 2) * (mag + lo.abs() + hi.abs()) + TINY
    return lo - pad, hi + pad


def region_box(region: Any, graph: Graph) -> Bounds:
    """The region's bounding box ``(low, high)``, float64 on the graph's device, checked against the
    input shape. Raises :class:`InvalidInput` for a wrong shape, a non-finite or an empty box."""
    if region is None:
        raise InvalidInput("bounds on activations need an input region, got None (all of R^n)")
    try:
        low, high = region.low, region.high
    except AttributeError:
        raise InvalidInput(f"a region needs .low and .high (its bounding box), got {region!r}") from None
    low = torch.as_tensor(low, dtype=torch.float64)
    high = torch.as_tensor(high, dtype=torch.float64)
    shape = tuple(graph.input_shape)
    if tuple(low.shape) != shape or tuple(high.shape) != shape:
        raise InvalidInput(f"the region's box has shape {tuple(low.shape)}, the network's input is {shape}")
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise InvalidInput("the region's bounding box must be finite")
    if bool((low > high).any()):
        raise InvalidInput("the region is empty (low > high in some element)")
    device = graph.device
    return low.to(device), high.to(device)


def _ibp_affine(node: Affine, h: Bounds) -> Bounds:
    """``A h + b`` over the box ``h`` (module doc)."""
    c, r = center_radius(*h)
    y, e = linear_error(node.op, c.unsqueeze(0), r.unsqueeze(0))
    y, e = y[0], e[0]
    if node.bias is not None:
        k = node.op.in_numel + 1
        e = round_up(e + gamma(k) * node.bias.abs(), k)
        y = y + node.bias
    return widen(y - e, y + e, y.abs() + e)


def _ibp_add(node: Add, *hs: Bounds) -> Bounds:
    lo, hi = sum(h[0] for h in hs), sum(h[1] for h in hs)
    return widen(lo, hi, sum(h[0].abs() + h[1].abs() for h in hs), len(hs))


def interval(node: Node, ins: list[Bounds], box: Bounds) -> Bounds:
    """The IBP interval of ``node``'s output from its inputs' intervals ``ins`` (module doc);
    ``box`` is the input's. Raises :class:`UnsupportedOperation` for an unknown node kind."""
    if isinstance(node, Input):
        return box
    if isinstance(node, Affine):
        return _ibp_affine(node, ins[0])
    if isinstance(node, Activation):
        return value_range(node, *ins[0])
    if isinstance(node, MaxPool):
        l, u = ins[0]
        return node.evaluate(l.unsqueeze(0))[0], node.evaluate(u.unsqueeze(0))[0]
    if isinstance(node, Add):
        return _ibp_add(node, *ins)
    if isinstance(node, Concat):
        return (torch.cat([h[0] for h in ins], dim=node.axis), torch.cat([h[1] for h in ins], dim=node.axis))
    raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'",
                               f"bound propagation has no rule for {node.kind} nodes")


def float64_graph(graph: Graph) -> Graph:
    """The graph in float64 on its own device (a float32 model's exact float64 fold where it has
    one); a float64 graph as it is (a conversion rebuilds every operator)."""
    if graph.dtype == torch.float64:
        return graph
    return graph.to(device=graph.device, dtype=torch.float64)


def activation_inputs(graph: Graph) -> dict[str, str]:
    """``{activation or max-pool name: the name of its input node}``."""
    return {n.name: n.inputs[0] for n in graph if isinstance(n, (Activation, MaxPool))}


def pre_of(graph: Graph, bounds: dict[str, Bounds]) -> dict[str, Bounds]:
    """The pre bounds of every activation and max-pool node, float64 on the CPU."""
    return {name: (bounds[z][0].cpu(), bounds[z][1].cpu()) for name, z in activation_inputs(graph).items()}


def interval_bounds(graph: Graph, region: Any) -> dict[str, Bounds]:
    """IBP pre bounds ``{node name: (l, u)}`` of every activation and max-pool node's input over
    ``region`` (module doc): float64 CPU tensors of the node's input shape, rigorous for the exact
    network."""
    g = float64_graph(graph)
    box = region_box(region, g)
    bounds: dict[str, Bounds] = {}
    with torch.no_grad():
        for node in g:
            bounds[node.name] = interval(node, [bounds[i] for i in node.inputs], box)
    return pre_of(g, bounds)
