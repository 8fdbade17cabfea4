"""The region ``local-bab`` (:mod:`.local_bab`) splits: a box, searched in its free inputs.

Only boxes are split (an infinity ball is its box); an L2 ball's parts are not implemented and are
refused (:func:`as_box`).

A box that is flat in some inputs (``low == high``, e.g. ACAS Xu's property 4) is searched in its
free inputs only (:func:`free_inputs`): the network composed with the embedding ``x_free -> x``
(fixed inputs as a constant) has, on the full-dimensional box of the free inputs, exactly the
constant of the network on the flat box, since pairs and their distances correspond one to one.
Witnesses are mapped back and re-checked on the original network and region (:func:`expanded`),
so the lower end stays **witnessed** on the original network.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InvalidInput, NotApplicable
from ..graph.ir import Affine, Graph, Input, with_inputs
from ..linalg.operators import Dense, Reshape, compose
from .region import Box
from .witness import PairWitness, PointWitness, Witness

__all__ = ["as_box", "expanded", "free_inputs"]


def as_box(region: Any) -> Box:
    """The region's bounding box, refusing what local-bab cannot split soundly."""
    norm = getattr(region, "norm", math.inf)
    if norm != math.inf:
        raise NotApplicable("local-bab splits boxes: give a box or an infinity ball (an L2 ball's parts are "
                            "not implemented)")
    return Box(region.low.clone(), region.high.clone())


def free_inputs(graph: Graph, box: Box) -> tuple[Graph, Box, Any]:
    """``(graph o embedding, box of the free inputs, (free mask, fixed values, input shape))`` for a
    box flat in some inputs (module doc); ``(graph, box, None)`` when no input is fixed."""
    free = (box.high > box.low).flatten()
    if bool(free.all()):
        return graph, box, None
    if not bool(free.any()):
        raise InvalidInput("local-bab: the box is a single point (every input fixed)")
    shape, n, k = graph.input_shape, free.numel(), int(free.sum())
    embed = torch.zeros(n, k, dtype=torch.float64)
    embed[free.nonzero().flatten(), torch.arange(k)] = 1.0
    fixed = torch.where(free, torch.zeros(n, dtype=torch.float64), box.low.flatten())
    op = Dense(embed.to(dtype=graph.dtype, device=graph.device), (k,))
    if len(shape) != 1:
        op = compose(op, Reshape((n,), shape))
    source, name = "free_inputs", "embed_free_inputs"
    nodes = {source: Input(source, [], (k,), f"{k} free inputs of {n}"),
             name: Affine(name, [source], shape, "fixed inputs of the flat box", op,
                          fixed.reshape(shape).to(dtype=graph.dtype, device=graph.device), fixed.reshape(shape))}
    for key, node in graph.nodes.items():
        if key != graph.input:
            nodes[key] = with_inputs(node, [name if i == graph.input else i for i in node.inputs])
    reduced = Graph(nodes, source, graph.output, graph.name, list(graph.notes))
    return reduced, Box(box.low.flatten()[free].clone(), box.high.flatten()[free].clone()), (free, fixed, shape)


def expanded(lower: float, witness: Witness | None, expand: Any, graph: Graph,
             region: Any) -> tuple[float, Witness | None]:
    """The lower bound ``lower`` and its ``witness`` on the free inputs, mapped back to the original
    inputs (``expand``: the third item of :func:`free_inputs`) and re-checked on the original
    network ``graph`` and ``region`` (0 and None when it does not re-check)."""
    if expand is None or witness is None:
        return lower, witness
    free, fixed, shape = expand

    def full(t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        out = base.clone()
        out[free] = t.detach().to(torch.float64).flatten()
        return out.reshape(shape)
    zero = torch.zeros_like(fixed)
    x = full(witness.x, fixed)
    other = full(witness.other, zero if isinstance(witness, PointWitness) else fixed)
    form = PointWitness if isinstance(witness, PointWitness) else PairWitness
    try:
        value = form(x, other).recheck(graph, region)
    except InvalidInput:
        return 0.0, None
    return value, form(x, other, value)
