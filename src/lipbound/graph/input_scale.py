"""Composing a graph with an input normalisation that lives outside the model.

Many trained networks expect ``(x - mean) / std`` but do not contain it (the CIFAR nets of the
real-network suite, ERAN's ConvSmall .pth). Their Lipschitz constant with respect to raw inputs is
that of ``f o diag(1/std)``: the shift by ``mean`` does not change any difference ``f(x) - f(y)``,
so only the scaling matters. :func:`with_input_scale` puts that diagonal in front of the graph as
an affine node (which :meth:`Graph.fused` then folds into the first convolution or dense layer).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from ..errors import InvalidInput
from ..linalg.operators import Diagonal
from .ir import Affine, Graph, Input

__all__ = ["with_input_scale", "parse_scale"]


def parse_scale(text: str) -> tuple[float, ...]:
    """``"0.2471,0.2435,0.2616"`` or ``"0.3081"`` -> a tuple of positive floats."""
    try:
        values = tuple(float(p) for p in text.replace(" ", ",").split(",") if p)
    except ValueError:
        raise InvalidInput(f"--input-scale must be numbers separated by commas (the std per channel, or one "
                           f"std), got {text!r}") from None
    if not values:
        raise InvalidInput("--input-scale needs at least one number")
    return values


def with_input_scale(graph: Graph, std: float | Sequence[float] | torch.Tensor) -> Graph:
    """The graph of ``x -> graph((x - mean) / std)`` (any mean): ``graph`` composed with
    ``diag(1 / std)`` at its input.

    ``std`` is one number, or one number per channel: a vector whose length is the size of the
    input's first axis (``C`` of ``(C, H, W)``) or, failing that, of its last axis (``C`` of an
    NHWC input ``(H, W, C)``), or a tensor that broadcasts to the input shape. Every entry must be
    finite and positive.
    """
    s = torch.as_tensor(std, dtype=torch.float64).reshape(-1) if not isinstance(std, torch.Tensor) else std.double()
    if s.numel() == 0 or not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise InvalidInput(f"input scale (std) must be finite and positive, got {s.tolist()}")
    shape = graph.input_shape
    if s.dim() <= 1 and s.numel() > 1:
        if s.numel() == shape[0]:
            s = s.reshape(-1, *([1] * (len(shape) - 1)))
        elif s.numel() == shape[-1]:
            s = s.reshape(*([1] * (len(shape) - 1)), -1)
        else:
            raise InvalidInput(f"input scale has {s.numel()} values but the input shape {shape} has no first or "
                               f"last axis of that size")
    try:
        torch.broadcast_to(s, shape)
    except RuntimeError:
        raise InvalidInput(f"input scale of shape {tuple(s.shape)} does not broadcast to the input {shape}") from None
    name = _fresh(graph, "input_scale")
    inp = graph.nodes[graph.input]
    scale = Affine(name, [graph.input], shape, "diag(1/std) (--input-scale)",
                   Diagonal((1.0 / s).to(graph.dtype).to(graph.device), shape, "InputScale"), None)
    nodes = {graph.input: Input(inp.name, [], shape, inp.origin), name: scale}
    for node in graph:
        if node.name == graph.input:
            continue
        if graph.input in node.inputs:
            node = copy.copy(node)
            node.inputs = [name if i == graph.input else i for i in node.inputs]
        nodes[node.name] = node
    notes = list(graph.notes) + [f"input scaled by diag(1/std), std = {[round(v, 6) for v in s.reshape(-1).tolist()]}"]
    return Graph(nodes, graph.input, graph.output, graph.name, notes)


def _fresh(graph: Graph, base: str) -> str:
    name, i = base, 1
    while name in graph.nodes:
        name, i = f"{base}_{i}", i + 1
    return name
