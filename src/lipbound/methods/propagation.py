"""Sound bounds of every activation's input over an input region (DESIGN §7): interval bound
propagation (IBP) and CROWN-style back-substitution of linear relaxations.

:func:`localize` is what the API calls: it returns ``graph.localized(region, pre)`` where, for every
:class:`~lipbound.graph.ir.Activation` and :class:`~lipbound.graph.ir.MaxPool` node,
``pre[name] = (l, u)`` holds ``l <= z <= u`` element-wise for the node's input ``z`` at every ``x``
in the region, for the **exact real** network (not only its float64 evaluation). The methods then
read per-neuron slope intervals from them (:meth:`~lipbound.graph.ir.Activation.slope_bounds`).
Why a local constant computed from them is sound: for ``x, y`` in a convex region every neuron's
input stays in ``[l_i, u_i]`` along the segment, so ``s(z_x) - s(z_y) = d_i (z_x - z_y)`` with
the secant slope ``d_i`` in the neuron's interval, and ``f(x) - f(y) = W_k D_{k-1} ... D_1 W_1 (x - y)``
with every ``D`` a diagonal of admissible slopes.

**IBP** (:func:`interval_bounds`), node by node in topological order, each node's interval
``[l, u]`` from its inputs':

* input: the region's bounding box ``[region.low, region.high]``;
* affine ``A h + b``: center/radius form ``A c + b +- |A| r`` with ``c = (l + u) / 2``,
  ``r = (u - l) / 2``; ``|A|`` is the operator with absolute weights where it is cheap, else the
  certified-norm substitute ``(|A| r)_i <= ||A||_2 ||r||_2`` (both from :mod:`.rounding`);
* activation: piecewise-linear ones exactly, as the min and max of ``s`` over the ends and the
  breakpoints inside ``[l, u]``; the others from the slope interval ``[lo, hi]`` of ``s`` on
  ``[l, u]`` (``facts.slopes_on``), anchored at both ends: ``s(z) in s(l) + [min(0, lo w), max(0, hi w)]``
  and ``s(z) in s(u) + [min(0, -hi w), max(0, -lo w)]`` with ``w = u - l``, intersected;
* max pooling: ``[pool(l), pool(u)]`` (the max is monotone); add: the sum; concat: the concatenation.

**Rounding.** Every step runs in float64 and is widened outwards by a rigorous margin, so the
bounds hold for the exact network: the affine step is :func:`.rounding._linear` (error
``gamma_k (|A| |c|)`` plus ``|A| r``, ``gamma_k = k u / (1 - k u)``, ``u = 2^-53``, ``k`` the
operator's input size, bounded whatever the order of summation: Higham §3.1); a result of at most
``m <= 6`` floating-point operations on terms whose absolute values sum to ``M`` is widened by
``gamma_8 M + 2^-1022`` (:func:`_widen`); activation values carry the error bound of
:func:`.rounding._activation_rounding` (exact pieces: ``gamma_4``; smooth: 16 ulp, the assumption
that torch's float64 kernels are accurate to a few ulp, as in :mod:`.rounding`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InvalidInput, UnsupportedOperation
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node
from .rounding import _TINY, _U, _activation_rounding, _gamma, _linear, _up

__all__ = ["localize", "interval_bounds", "crown_bounds", "Bounds"]

Bounds = tuple[torch.Tensor, torch.Tensor]  # (l, u), element-wise, float64


def _widen(lo: torch.Tensor, hi: torch.Tensor, mag: torch.Tensor) -> Bounds:
    """``[lo, hi]`` computed by at most 6 float64 operations on terms whose absolute values sum to
    at most ``mag``, widened to a rigorous enclosure of the exact values: ``-+ (gamma_8 mag + tiny)``
    (the widening's own rounding is within the ``gamma_8`` headroom)."""
    pad = _gamma(8) * (mag + lo.abs() + hi.abs()) + _TINY
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


def _center_radius(l: torch.Tensor, u: torch.Tensor) -> Bounds:
    """``(c, r)`` in float64 with ``[c - r, c + r]`` containing ``[l, u]`` exactly: ``c = fl((l + u) / 2)``
    is within ``u |c| + tiny`` of the midpoint, which the radius absorbs."""
    c = (l + u) / 2
    r = (u - l) / 2
    return c, _up(r + 2 * _U * c.abs(), 2)


def _ibp_affine(node: Affine, h: Bounds) -> Bounds:
    """``A h + b`` over the box ``h`` (module doc)."""
    c, r = _center_radius(*h)
    y, e = _linear(node.op, c.unsqueeze(0), r.unsqueeze(0))
    y, e = y[0], e[0]
    if node.bias is not None:
        k = node.op.in_numel + 1
        e = _up(e + _gamma(k) * node.bias.abs(), k)
        y = y + node.bias
    return _widen(y - e, y + e, y.abs() + e)


def _pwl_candidates(node: Activation, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The ends and every breakpoint clamped into ``[l, u]``, stacked on a new first axis: a
    piecewise-linear function minus a linear one takes its extremes on ``[l, u]`` there."""
    points = [l, u] + [torch.clamp(torch.full_like(l, b), l, u) for b in node.pieces.breakpoints]
    return torch.stack(points)


def _pwl_values(node: Activation, p: torch.Tensor) -> Bounds:
    """``s(p)`` from the exact pieces and its rounding error bound (``gamma_4``, :mod:`.rounding`)."""
    s = node.pieces(p)
    return s, _activation_rounding(node, p, s)


def _slopes(node: Activation, l: torch.Tensor, u: torch.Tensor) -> Bounds:
    """``facts.slopes_on(l, u)`` on ``l``'s device (its first call locates ``s''``'s sign changes by autograd)."""
    with torch.enable_grad():
        lo, hi = node.facts.slopes_on(l.cpu(), u.cpu())
    return lo.to(l.device), hi.to(l.device)


def _ibp_activation(node: Activation, h: Bounds) -> Bounds:
    """The activation's range over the box ``h`` (module doc)."""
    l, u = h
    if node.pieces is not None:
        s, e = _pwl_values(node, _pwl_candidates(node, l, u))
        lo, hi = (s - e).amin(0), (s + e).amax(0)
        return _widen(lo, hi, (s.abs() + e).amax(0))
    lo_s, hi_s = _slopes(node, l, u)
    w = _up(u - l, 1)
    sl, su = node.evaluate(l), node.evaluate(u)
    el, eu = _activation_rounding(node, l, sl), _activation_rounding(node, u, su)
    low = torch.maximum(sl - el + torch.clamp(lo_s * w, max=0), su - eu + torch.clamp(-hi_s * w, max=0))
    high = torch.minimum(sl + el + torch.clamp(hi_s * w, min=0), su + eu + torch.clamp(-lo_s * w, min=0))
    mag = torch.maximum(sl.abs(), su.abs()) + el + eu + (lo_s.abs() + hi_s.abs()) * w
    return _widen(low, high, mag)


def _ibp_add(node: Add, *hs: Bounds) -> Bounds:
    lo, hi = sum(h[0] for h in hs), sum(h[1] for h in hs)
    return _widen(lo, hi, sum(h[0].abs() + h[1].abs() for h in hs))


def interval(node: Node, ins: list[Bounds], box: Bounds) -> Bounds:
    """The IBP interval of ``node``'s output from its inputs' intervals ``ins`` (module doc);
    ``box`` is the input's. Raises :class:`UnsupportedOperation` for an unknown node kind."""
    if isinstance(node, Input):
        return box
    if isinstance(node, Affine):
        return _ibp_affine(node, ins[0])
    if isinstance(node, Activation):
        return _ibp_activation(node, ins[0])
    if isinstance(node, MaxPool):
        l, u = ins[0]
        return node.evaluate(l.unsqueeze(0))[0], node.evaluate(u.unsqueeze(0))[0]
    if isinstance(node, Add):
        return _ibp_add(node, *ins)
    if isinstance(node, Concat):
        return (torch.cat([h[0] for h in ins], dim=node.axis), torch.cat([h[1] for h in ins], dim=node.axis))
    raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'",
                               f"bound propagation has no rule for {node.kind} nodes")


def _float64(graph: Graph) -> Graph:
    """The graph in float64 on its own device (a float32 model's exact float64 fold where it has one)."""
    return graph.to(device=graph.device, dtype=torch.float64)


def _targets(graph: Graph) -> dict[str, str]:
    """``{activation or max-pool name: the name of its input node}``."""
    return {n.name: n.inputs[0] for n in graph if isinstance(n, (Activation, MaxPool))}


def _pre(graph: Graph, bounds: dict[str, Bounds]) -> dict[str, Bounds]:
    """The pre bounds of every activation and max-pool node, float64 on the CPU."""
    return {name: (bounds[z][0].cpu(), bounds[z][1].cpu()) for name, z in _targets(graph).items()}


def interval_bounds(graph: Graph, region: Any) -> dict[str, Bounds]:
    """IBP pre bounds ``{node name: (l, u)}`` of every activation and max-pool node's input over
    ``region`` (module doc): float64 CPU tensors of the node's input shape, rigorous for the exact
    network."""
    g = _float64(graph)
    box = region_box(region, g)
    bounds: dict[str, Bounds] = {}
    with torch.no_grad():
        for node in g:
            bounds[node.name] = interval(node, [bounds[i] for i in node.inputs], box)
    return _pre(g, bounds)


def localize(graph: Graph, region: Any, *, method: str = "crown", time_budget: float | None = None) -> Graph:
    """``graph.localized(region, pre)`` with sound pre bounds of every activation and max-pool node
    over the convex ``region`` (module doc): ``method="ibp"`` (:func:`interval_bounds`) or
    ``"crown"`` (:func:`crown_bounds`, intersected with IBP; ``time_budget`` caps its pass). The
    returned graph's notes say which layers got which bounds."""
    if method == "ibp":
        pre, note = interval_bounds(graph, region), "pre bounds: IBP on every layer"
    elif method == "crown":
        pre, note = interval_bounds(graph, region), "pre bounds: IBP (CROWN not yet)"
    else:
        raise InvalidInput(f"unknown bound propagation method {method!r}: use 'crown' or 'ibp'")
    out = graph.localized(region, pre)
    out.notes.append(note)
    return out
