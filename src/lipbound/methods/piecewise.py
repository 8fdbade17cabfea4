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
  affine, ..., affine* as dense float64 matrices (the input flattened).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOperation
from ..graph.activations import PiecewiseLinear
from ..graph.ir import Activation, Affine, Graph, Input

__all__ = ["two_slope", "smoothed", "DenseLayer", "mlp_layers", "count_two_slope_neurons"]

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
    None for the last layer, which is affine."""

    weight: torch.Tensor
    bias: torch.Tensor
    pieces: PiecewiseLinear | None
    origin: str


def count_two_slope_neurons(graph: Graph) -> int | None:
    """Number of ReLU units of the equivalent ReLU network (module doc: one per kink of each
    neuron's activation; ReLU and LeakyReLU neurons count one, ReLU6 and Hardtanh neurons two) of
    an MLP-like graph (see :func:`mlp_layers`), or None when the graph is not of that form.
    Cheap: nothing is materialised."""
    try:
        chain = _chain(graph.fused())
    except UnsupportedOperation:
        return None
    return sum(_numel(n.shape) * len(_kinks_only(n.pieces).breakpoints) for n in chain if isinstance(n, Activation))


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
        layers.append(_dense(pending, n_in, _kinks_only(node.pieces), node.origin))
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
