"""Facts about piecewise-linear activations shared by the ``lower`` and ``exact`` methods.

A continuous piecewise-linear activation with scalar pieces (``node.pieces``, a
:class:`~lipbound.graph.activations.PiecewiseLinear`: breakpoints ``bp_1 < ... < bp_K``, slope
``a_k`` and offset ``o_k`` on piece ``k``) is a sum of ReLUs of affine functions of its input:

    ``s(t) = o_0 + a_0 t + sum_k (a_k - a_{k-1}) relu(t - bp_k)``.

A network of such activations (ReLU, LeakyReLU, Abs, ReLU6, Hardtanh, Clip, HardSigmoid) is affine
on each *linear region*: a set of inputs where every neuron's pre-activation stays inside one
piece; its Jacobian there is ``W_K D_{K-1} W_{K-1} ... D_1 W_1`` with ``D_i`` diagonal, holding the
pieces' slopes. The piece index of a neuron is the number of active ReLU units of its sum above
(unit ``k`` is active when ``t > bp_k``); the other unit patterns (``t > bp_2`` but ``t < bp_1``)
are empty. So branching on piece indices, as ``exact`` does, is branching on the units of that
wider ReLU network with the empty combinations left out, and with the exact breakpoints: the
shifted biases ``c - bp_k`` of the rewritten network would be rounded in float64.

An activation is **two-slope** when ``s(t) = b t`` for ``t >= 0`` and ``s(t) = a t`` for ``t < 0``
(ReLU: ``a = 0, b = 1``; LeakyReLU(alpha): ``a = alpha, b = 1``; Abs: ``a = -1, b = 1``).

* :func:`two_slope` recognises such a node from its activation's definition (its exact pieces).
* :func:`smoothed` gives a copy of a graph where every two-slope activation is replaced by
  ``a t + (b - a) tau softplus(t / tau)``, a smooth function within ``(b - a) tau log 2`` of it:
  its Jacobian norm has a non-zero gradient in the input, which a piecewise-constant Jacobian has
  not. Used as a search surrogate only; nothing is ever reported from the smoothed network.
* :func:`mlp_layers` extracts ``(W_i, c_i, pieces_i)`` of a chain *affine, piecewise-linear,
  affine, ..., affine* as dense float64 matrices (the input flattened), with each activation's
  bounds ``pre`` on an input region when the graph is localized.
* :func:`piece_range` gives the pieces a neuron can use on a region: those whose open interval
  meets ``[l, u]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInput, UnsupportedOperation
from ..graph.activations import PiecewiseLinear
from ..graph.ir import Activation, Affine, Graph, Input

__all__ = ["two_slope", "smoothed", "DenseLayer", "mlp_layers", "count_two_slope_neurons", "piece_range"]

def two_slope(node: Activation) -> tuple[float, float] | None:
    """``(a, b)`` when ``node`` computes ``t -> b t (t >= 0), a t (t < 0)`` element-wise with the
    same scalars for every element, else None: read from the activation's definition
    (:class:`~lipbound.graph.activations.ActivationFacts`), never probed."""
    return node.pieces.two_slope if node.pieces is not None else None


def smoothed(graph: Graph, tau: dict[str, float], slopes: dict[str, tuple[float, float]] | None = None) -> Graph:
    """A copy of ``graph`` where each two-slope activation named in ``tau`` becomes
    ``a t + (b - a) tau softplus(t / tau)`` (``tau > 0``, in the units of its input).
    ``slopes`` may give the nodes' ``(a, b)`` when known (else :func:`two_slope` finds them)."""
    nodes = {}
    for name, node in graph.nodes.items():
        if isinstance(node, Activation) and name in tau:
            a, b = slopes[name] if slopes is not None else two_slope(node)
            t = tau[name]
            fn = (lambda z, a=a, b=b, t=t: a * z + (b - a) * t * F.softplus(z / t))
            node = dataclasses.replace(node, fn=fn, label=f"smoothed {node.label}")
        nodes[name] = node
    return graph.rebuilt(nodes)


@dataclass
class DenseLayer:
    """One layer ``h -> s(W h + c)`` of an MLP (float64, input flattened): ``pieces`` are the exact
    pieces of the activation ``s`` applied to every element, with only its kinks as breakpoints;
    None for the last layer, which is affine. ``pre``: bounds ``(l, u)`` of ``W h + c`` (flat,
    float64) valid on the graph's region, None without one."""

    weight: torch.Tensor
    bias: torch.Tensor
    pieces: PiecewiseLinear | None
    origin: str
    pre: tuple[torch.Tensor, torch.Tensor] | None = None


def piece_range(breakpoints: np.ndarray, l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, last)``: per neuron whose input stays in ``[l, u]``, the range of piece indices
    whose open interval ``(bp_{p-1}, bp_p)`` meets ``[l, u]``; for ``l == u`` on a breakpoint, the
    piece below it. Every linear region with an interior point where ``z in [l, u]`` uses such a
    piece, or has ``z`` constant on it (a zero row), where the piece closed around that value gives
    the same function and Jacobian. ``first == last``: the neuron is **stable** (one piece)."""
    last = np.searchsorted(breakpoints, u, side="left")
    return np.minimum(np.searchsorted(breakpoints, l, side="right"), last), last


def count_two_slope_neurons(graph: Graph) -> int | None:
    """Number of ReLU units of the equivalent ReLU network (module doc: one per kink of each
    neuron's activation; ReLU and LeakyReLU neurons count one, ReLU6 and Hardtanh neurons two) of
    an MLP-like graph (see :func:`mlp_layers`), or None when the graph is not of that form. On a
    localized graph (activations with ``pre``) only the kinks a neuron can cross on the region
    count (:func:`piece_range`): stable neurons count zero. Cheap: nothing is materialised."""
    try:
        chain = _chain(graph.fused())
    except UnsupportedOperation:
        return None
    return sum(_units(n) for n in chain if isinstance(n, Activation))


def _units(node: Activation) -> int:
    bps = _kinks_only(node.pieces).breakpoints
    if node.pre is None:
        return _numel(node.shape) * len(bps)
    first, last = piece_range(np.array(bps, dtype=np.float64), *_flat_pre(node.pre))
    return int((last - first).sum())


def _flat_pre(pre: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """An activation's bounds ``(l, u)`` as flat float64 arrays, checked."""
    l, u = (torch.as_tensor(t, dtype=torch.float64).cpu().reshape(-1).numpy() for t in pre)
    if l.shape != u.shape or np.isnan(l).any() or np.isnan(u).any() or (l > u).any():
        raise InvalidInput("an activation's region bounds pre = (l, u) must have one l <= u per neuron, no NaN")
    return l, u


def mlp_layers(graph: Graph, *, method: str = "exact") -> list[DenseLayer]:
    """The layers of ``graph`` as dense float64 matrices, when it is a chain
    ``Input -> Affine -> activation -> Affine -> ... -> Affine`` of continuous piecewise-linear
    activations with scalar pieces (after fusing affine chains; the first and last node may be an
    activation too: the missing affine map is the identity).

    Raises:
        UnsupportedOperation: for any other structure or activation, naming the node.
    """
    chain = _chain(graph.fused(), method)
    layers: list[DenseLayer] = []
    n_in = _numel(graph.input_shape)
    pending: Affine | None = None
    for node in chain:
        if isinstance(node, Affine):
            pending = node
            continue
        layer = _dense(pending, n_in, _kinks_only(node.pieces), node.origin)
        if node.pre is not None:
            l, u = _flat_pre(node.pre)
            if len(l) != len(layer.bias):
                raise InvalidInput(f"node '{node.origin}': pre bounds for {len(l)} neurons, the layer has {len(layer.bias)}")
            layer.pre = (torch.from_numpy(l), torch.from_numpy(u))
        layers.append(layer)
        n_in = _numel(node.shape)
        pending = None
    layers.append(_dense(pending, n_in, None, pending.origin if pending is not None else "output"))
    return layers


def _kinks_only(pieces: PiecewiseLinear) -> PiecewiseLinear:
    """The same function on the reals with only its kinks as breakpoints: without breakpoints at
    ``-inf`` or ``inf`` (``Hardtanh(-inf, m)``: their outer piece is never reached) and without those
    where nothing changes (same slope and offset on both sides)."""
    bps, slopes, offsets = pieces.breakpoints, pieces.slopes, pieces.offsets
    first = sum(b == -math.inf for b in bps)  # the first piece a real input reaches ...
    last = len(bps) - sum(b == math.inf for b in bps)  # ... and the last
    keep = [k for k in range(first, last) if (slopes[k], offsets[k]) != (slopes[k + 1], offsets[k + 1])]
    return PiecewiseLinear(tuple(bps[k] for k in keep), (slopes[first],) + tuple(slopes[k + 1] for k in keep),
                           (offsets[first],) + tuple(offsets[k + 1] for k in keep))


def _chain(g: Graph, method: str = "exact") -> list:
    """The nodes after the input, checked to form a chain of affine and piecewise-linear nodes."""
    chain = []
    prev = g.input
    for node in g:
        if isinstance(node, Input):
            continue
        if node.inputs != [prev]:
            raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'",
                                       f"{method} handles chains of affine layers and piecewise-linear activations "
                                       "only (no branches, sums or concatenations)")
        if isinstance(node, Activation):
            if node.pieces is None:
                raise UnsupportedOperation(node.label or "activation", f"node '{node.origin}'",
                                           f"{method} handles continuous piecewise-linear activations with the same "
                                           "pieces on every element only (ReLU, LeakyReLU, Abs, ReLU6, Hardtanh, "
                                           "Clip, HardSigmoid)")
        elif not isinstance(node, Affine):
            raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'",
                                       f"{method} handles chains of affine layers and piecewise-linear "
                                       "activations only")
        chain.append(node)
        prev = node.name
    if prev != g.output:
        raise UnsupportedOperation("graph", f"output '{g.output}'", "the output is not the end of the chain")
    return chain


def _dense(node: Affine | None, n_in: int, pieces: PiecewiseLinear | None, origin: str) -> DenseLayer:
    if node is None:  # identity between activations, or before the first one
        return DenseLayer(torch.eye(n_in, dtype=torch.float64), torch.zeros(n_in, dtype=torch.float64), pieces, origin)
    w = node.op.to(dtype=torch.float64).to_dense().to(torch.float64).reshape(_numel(node.shape), n_in)
    c = (node.bias.to(torch.float64).reshape(-1) if node.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    return DenseLayer(w.cpu(), c.cpu(), pieces, origin)


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
