"""Certified Lipschitz constants of logit differences ("pair constants", DESIGN §7).

For a classifier ``f : R^n -> R^m`` and two classes ``y != j`` the margin ``g_yj = f_y - f_j =
(e_y - e_j)^T f`` is a map ``R^n -> R``; its Lipschitz constant for the L2 norm on the input and the
absolute value on the output, ``L_yj = L(g_yj)``, is what a robustness certificate needs: if
``g_yj(x) > r L_yj`` for every ``j``, no ``x'`` with ``||x' - x|| <= r`` changes the class ``y``.
``L_yj <= sqrt(2) L(f)`` always, and is often much smaller.

**Why the numbers are certified.** :func:`with_output_map` appends one affine node, the linear map
``R`` (rows ``e_y - e_j``) without bias, after the graph's output: the augmented graph computes
exactly ``g = R f``, and it is an ordinary graph (a chain of affine layers and activations stays
one: the new node fuses into the last affine layer, so when the net ends in a linear layer ``W``
the new last layer is ``R W``, whose rows are differences of rows of ``W``). Every certified
method bounds the constant of the graph it is given, so its value on the augmented graph is a
certified upper bound of ``L(R f)``; with the single row ``e_y - e_j`` that is ``L_yj``. The least
of several certified values is still certified. On a region ``X`` the graph is first localized to
``X`` (sound pre-activation bounds), and the values bound the constant of ``g_yj`` on ``X``
(a convex region; a union of boxes is replaced by its hull, which contains it).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch

from .api import Model, as_graph
from .errors import InvalidInput, NotApplicable, UnsupportedOperation
from .graph.ir import Affine, Graph
from .linalg.operators import Dense, Reshape, compose
from .methods import get_method
from .methods.propagation import localize
from .methods.region import BoxUnion, as_region
from .methods.selection import DEFAULT_TIME_BUDGET, default_methods

__all__ = ["margin_constants", "with_output_map", "margin_rows", "least_certified", "pair_methods"]


def with_output_map(graph: Graph, rows: torch.Tensor, label: str = "output map") -> Graph:
    """``graph`` followed by the linear map ``rows`` ``(k, m)`` on its flattened output (``m``
    logits), as one more :class:`~lipbound.graph.ir.Affine` node without bias: the map ``x ->
    rows @ f(x)``. Same input, region and per-neuron bounds as ``graph``."""
    out = graph.nodes[graph.output]
    m = math.prod(out.shape)
    if rows.dim() != 2 or rows.shape[1] != m:
        raise InvalidInput(f"an output map for {m} outputs must have shape (k, {m}), got {tuple(rows.shape)}")
    op = Dense(rows.to(dtype=graph.dtype, device=graph.device), (m,))
    if len(out.shape) != 1:
        op = compose(Reshape(out.shape, (m,)), op)
    name = f"{graph.output}__map"
    nodes = dict(graph.nodes)
    nodes[name] = Affine(name, [graph.output], (rows.shape[0],), label, op, None)
    return graph.rebuilt(nodes, name)


def margin_rows(m: int, y: int, j: int) -> torch.Tensor:
    """The row ``e_y - e_j`` ``(1, m)`` of the margin ``f_y - f_j``."""
    row = torch.zeros(1, m, dtype=torch.float64)
    row[0, y], row[0, j] = 1.0, -1.0
    return row


def least_certified(graph: Graph, methods: Sequence[str], seed: int = 0, time_budget: float | None = None,
                    progress: bool = False) -> tuple[float, str | None]:
    """The least certified upper bound of ``methods`` on ``graph`` and the method that gave it
    (``(inf, None)`` if none applies). On a localized graph the methods that take a domain get
    ``graph.region``; those that take a time budget share ``time_budget`` equally."""
    best, source = math.inf, None
    budgeted = [m for m in methods if get_method(m).budgeted]
    for name in methods:
        spec = get_method(name)
        kwargs: dict[str, Any] = {}
        if graph.region is not None and spec.takes_domain:
            kwargs["domain"] = graph.region
        if time_budget is not None and spec.budgeted:
            kwargs["time_budget"] = time_budget / len(budgeted)
        try:
            res = spec(graph, seed=seed, progress=progress, **kwargs)
        except (NotApplicable, UnsupportedOperation):
            continue
        if res.upper is not None and res.upper < best:
            best, source = res.upper, name
    return best, source


def pair_methods(graph: Graph, time_budget: float) -> list[str]:
    """The default certified methods for one pair graph within its share ``time_budget`` of the
    run (:func:`~lipbound.methods.selection.default_methods`, whose cost model drops what does not
    fit) but ``exact``, whose time goes mostly to its witnessed lower end, which a certificate does
    not use (name it in ``methods`` to run it); AutoLip when nothing else fits."""
    return [name for name in default_methods(graph, lower=False, time_budget=time_budget) if name != "exact"] \
        or ["autolip"]


def margin_constants(model: Model, input_shape: Sequence[int] | None = None, label: int | None = None,
                     methods: Iterable[str] | None = None, domain: Any = None, *, seed: int = 0,
                     device: str | torch.device | None = None, input_scale: float | Sequence[float] | None = None,
                     time_budget: float | None = None) -> torch.Tensor:
    """Certified upper bounds of the constants ``L_yj`` of the logit differences ``f_y - f_j``
    (L2 on the input, absolute value on the output; module doc for why they are certified).

    Args:
        model: a classifier (``nn.Module`` with ``input_shape``, Graph or model file) whose
            flattened output is the ``m >= 2`` logits.
        label: None for every pair, or one class ``y`` for its row only.
        methods: certified methods (``certified_upper`` or ``exact``) to run on each pair graph;
            the least value is kept. Default: :func:`pair_methods` of each pair graph (the
            default set's certified methods that fit the pair's share of the time).
        domain: an input region (as in :func:`lipbound.estimate`): the constants on it (default:
            the region of a localized Graph, else all of ``R^n``).
        seed, device, input_scale: as in :func:`lipbound.estimate`.
        time_budget: seconds in all, shared equally by the pairs (None:
            :data:`~lipbound.methods.selection.DEFAULT_TIME_BUDGET`); with the default ``methods``
            each pair runs the certified methods the cost model fits in its share.

    Returns:
        float64 ``(m, m)``, symmetric, ``[y, j]`` bounding ``L(f_y - f_j)``, 0 on the diagonal;
        with ``label=y`` its row ``(m,)``.
    """
    graph = as_graph(model, input_shape, device, input_scale)
    m = math.prod(graph.output_shape)
    if m < 2:
        raise InvalidInput(f"margin constants need a classifier with at least 2 logits, the output has {m}")
    if label is not None and not (isinstance(label, int) and 0 <= label < m):
        raise InvalidInput(f"label must be a class index in [0, {m}), got {label!r}")
    names = None if methods is None else [methods] if isinstance(methods, str) else list(methods)
    for name in names or []:
        if not get_method(name).guarantee.is_upper:
            raise InvalidInput(f"margin constants take certified methods only; {name!r} gives a "
                               f"{get_method(name).guarantee.value}")
    if time_budget is not None and not (time_budget > 0 and math.isfinite(time_budget)):
        raise InvalidInput(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    region = as_region(domain, graph.input_shape)
    if region is not None:
        graph = localize(graph, region.hull() if isinstance(region, BoxUnion) else region)
    pairs = [(y, j) for y in range(m) for j in range(y + 1, m) if label is None or label in (y, j)]
    share = (DEFAULT_TIME_BUDGET if time_budget is None else time_budget) / len(pairs)
    out = torch.zeros(m, m, dtype=torch.float64)
    for y, j in pairs:
        pair = with_output_map(graph, margin_rows(m, y, j), f"logit {y} - logit {j}")
        chosen = names if names is not None else pair_methods(pair, share)
        out[y, j] = out[j, y] = least_certified(pair, chosen, seed, share)[0]
    return out if label is None else out[label]
