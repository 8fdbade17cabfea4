"""Sound pre-activation bounds of many ``neuron-bab`` nodes at once (one box, different neuron
splits) by CROWN back-substitution under each node's splits; the cheap node bound of
:mod:`~lipbound.methods.neuron_bab` (its LP, :mod:`~lipbound.methods.split_lp`, is the tight and slow one).

**A node** is the set of inputs ``x`` of the box whose ReLUs satisfy its splits (``z_i >= 0`` or
``z_i <= 0``); its bounds ``[l_i, u_i]`` (its parent's, with a split neuron's clamped at 0: ``l_i = 0``
when split active, ``u_i = 0`` when split inactive) hold at every one of its inputs.

**The bound.** Layer by layer, every neuron still unstable in a node (``l_i < 0 < u_i``) is bounded
by :func:`.relu_crown.crown_layer` (CROWN, Zhang et al. 2018: the linear relaxation of each earlier
ReLU on its node bounds, back-substituted to the input and minimised over the box, with rigorous
rounding and weight enclosures) from the node's bounds of the earlier layers, and the result is
intersected with the node's own bounds. A split neuron is stable in its node (``l_i >= 0`` or
``u_i <= 0``), so its relaxation is its linear piece exactly (the identity or zero). **Soundness**:
each relaxation holds at every input of the node, since the node's bounds do; so the back-substituted
form is a lower (upper) bound of ``z_i(x)`` at every input of the node, and its minimum (maximum) over
the whole box, which contains the node, bounds ``z_i`` on the node (the split constraints themselves
are relaxed away in that last minimum: a looser, still sound, bound). The nodes of a batch share the
box and the network and differ only in their bounds: ``crown_layer`` bounds all of them in one batched
back-substitution per layer.
"""

from __future__ import annotations

import numpy as np
import torch

from ..graph.ir import Graph
from .float_error import round_up
from .relu_boxes import Layer, affine_runs
from .relu_crown import crown_layer

__all__ = ["chain_of", "children", "node_bounds"]

Bounds = list[tuple[np.ndarray, np.ndarray]]  # per hidden layer, (l, u) float64


def node_bounds(layers: list[Layer], nodes: list[Bounds], low: np.ndarray, high: np.ndarray,
                beta_iterations: int = 0) -> list[Bounds]:
    """Each node's bounds (``nodes[b]``: per hidden layer ``(l, u)``, sound on the node) intersected
    with CROWN's under its splits (module doc), on the box ``[low, high]``; ``layers``: the chain of
    :func:`.relu_boxes.relu_chain` (hidden layers, then the output layer). ``beta_iterations > 0``:
    the first layer's sign constraints also enter the concretisation as Lagrange terms
    (:func:`.relu_crown.crown_layer`, :mod:`.split_bounds`)."""
    if not nodes:
        return []
    depth = len(nodes[0])
    stacked = [(torch.from_numpy(np.stack([n[m][0] for n in nodes])), torch.from_numpy(np.stack([n[m][1] for n in nodes])))
               for m in range(depth)]
    lo = torch.from_numpy(np.asarray(low, dtype=np.float64)).reshape(1, -1).expand(len(nodes), -1)
    hi = torch.from_numpy(np.asarray(high, dtype=np.float64)).reshape(1, -1).expand(len(nodes), -1)
    out = [stacked[0]]  # the first layer's bounds are over the whole box already: no earlier ReLU to relax
    for k in range(1, depth):
        out.append(crown_layer(layers, k, out, lo, hi, stacked[k], beta_iterations))
    return [[(out[m][0][b].numpy().copy(), out[m][1][b].numpy().copy()) for m in range(depth)]
            for b in range(len(nodes))]


def children(pre: list, split: list, m: int, i: int) -> list[tuple[list, list]]:
    """The two nodes of splitting neuron ``i`` of hidden layer ``m``: ``z_i >= 0`` (its lower bound
    raised to 0) and ``z_i <= 0`` (its upper bound lowered to 0); every input of the parent lies in
    one of them (module doc)."""
    out = []
    for active in (True, False):
        pre_c = [(l.copy(), u.copy()) for l, u in pre]
        split_c = [s.copy() for s in split]
        l, u = pre_c[m]
        if active:
            l[i] = max(l[i], 0.0)
        else:
            u[i] = min(u[i], 0.0)
        split_c[m][i] = True
        out.append((pre_c, split_c))
    return out


def chain_of(graph: Graph, weights: list, biases: list) -> list[Layer]:
    """The hidden layers of :func:`~lipbound.methods.piecewise.mlp_layers` ``(graph)`` with their float64
    ``weights`` and ``biases`` (the numbers every other bound of ``neuron-bab`` takes as the network)
    as :class:`.relu_boxes.Layer` enclosing the exact maps: ``|W* - W| <= E``, ``|b* - b| <= e``.

    ``mlp_layers`` reads the fused graph, whose composed nodes were rounded when they were composed
    (a normalisation folded into a dense layer: ``E ~ 1e-13``). The exact map of each layer is the
    composition of the graph's own affine nodes before its activation (:func:`.relu_boxes.affine_runs`:
    each node materialised with its error bound, its bias exact, composed by
    :meth:`.relu_boxes.Layer.then`), which gives
    ``(W', E', b', e')`` with ``|W* - W'| <= E'`` and ``|b* - b'| <= e'``; so ``E = E' + |W' - W|`` and
    ``e = e' + |b' - b|``, rounded up. Where no affine node precedes an activation the layer is the
    identity, exact (``E = 0``, ``e = 0``)."""
    out = []
    for enclosing, w, b in zip(affine_runs(graph), weights, biases):
        W, c = torch.from_numpy(np.asarray(w, dtype=np.float64)), torch.from_numpy(np.asarray(b, dtype=np.float64))
        if enclosing is None:
            out.append(Layer(W, torch.zeros_like(W), c, torch.zeros_like(c)))
        else:
            out.append(Layer(W, round_up(enclosing.E + (enclosing.W - W).abs(), 2), c,
                             round_up(enclosing.e + (enclosing.b - c).abs(), 2)))
    return out
