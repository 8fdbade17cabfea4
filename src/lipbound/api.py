"""Public entry points: :func:`estimate`, :func:`autolip`, :func:`as_graph`."""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .errors import InvalidInput, LipboundError
from .graph import Graph, from_torch
from .methods import get_method
from .methods.autolip import autolip as _autolip
from .report import Report, Result

Model = nn.Module | Graph


def as_graph(model: Model, input_shape: Sequence[int] | None = None, device: str | torch.device | None = None) -> Graph:
    """The :class:`~lipbound.graph.Graph` of ``model`` (an ``nn.Module`` with ``input_shape``
    without batch axis, or a Graph, whose own input shape is used), moved to ``device``."""
    if isinstance(model, Graph):
        if input_shape is not None and tuple(input_shape) != model.input_shape:
            raise InvalidInput(f"the graph's input shape is {model.input_shape}, not {tuple(input_shape)}")
        graph = model
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise InvalidInput("input_shape (without batch axis) is required for an nn.Module")
        graph = from_torch(model, input_shape)
    else:
        raise InvalidInput(f"expected an nn.Module or a lipbound Graph, got {type(model).__name__}")
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInput("device 'cuda' was asked for but no CUDA GPU is available")
        if device != graph.device:
            graph = graph.to(device=device)
    return graph


def estimate(model: Model, input_shape: Sequence[int] | None = None, methods: Iterable[str] = ("autolip",),
             device: str | torch.device | None = None, seed: int = 0, progress: bool = True,
             **options: Any) -> Report:
    """Bracket the Lipschitz constant (L2 -> L2) of ``model``.

    Args:
        model: an ``nn.Module`` (with ``input_shape``) or a Graph.
        input_shape: the input shape without batch axis, e.g. ``(1, 28, 28)``.
        methods: method names (``lipbound.methods.METHODS`` lists them): ``"autolip"`` (certified
            upper bound), ``"autolip-power"`` (the paper's estimate), ...
        device: where to compute (``"cpu"``, ``"cuda"``); default: where the model's weights are.
        seed: seed of every random choice (start vectors, ...): same seed, same numbers.
        progress: show progress bars on stderr.
        **options: passed to every method (e.g. ``tol``, ``max_iter`` of the power method).

    Returns:
        A :class:`~lipbound.report.Report`: ``.upper`` (best certified), ``.lower`` (best witnessed),
        ``.ratio`` and ``.results``.
    """
    methods = list(methods)
    fns = [get_method(m) for m in methods]  # unknown names fail before any work
    graph = as_graph(model, input_shape, device)
    report = Report(graph.name, graph.input_shape)
    for name, fn in zip(methods, fns):
        t0 = time.perf_counter()
        result = fn(graph, seed=seed, progress=progress, **options)
        result.seconds = time.perf_counter() - t0
        report.results.append(result)
    return report


def autolip(model: Model, input_shape: Sequence[int] | None = None, certified: bool = True,
            seed: int = 0, progress: bool = False, **options: Any) -> Result:
    """AutoLip of ``model``: a certified upper bound (``certified=True``) or the paper's
    power-method estimate. See :mod:`lipbound.methods.autolip`."""
    return _autolip(as_graph(model, input_shape), certified=certified, seed=seed, progress=progress, **options)


__all__ = ["estimate", "autolip", "as_graph", "LipboundError"]
