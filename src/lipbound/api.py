"""Public entry points: :func:`estimate`, :func:`autolip`, :func:`as_graph`, :func:`witness_value`."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .errors import InvalidInput, LipboundError, NotApplicable, UnsupportedOperation
from .frontends import from_torch, operator_of_module
from .graph import Graph
from .graph.input_scale import with_input_scale
from .frontends.loading import load
from .methods import get_method
from .methods.propagation import localize
from .methods.autolip import autolip as _autolip
from .methods.region import Ball, Box, BoxUnion, Region, as_region
from .methods.union_bound import distinct_parts, touching_clusters, union_upper
from .methods.cost import graph_sizes
from .methods.selection import DEFAULT_SET_WORK, DEFAULT_TIME_BUDGET, budget_share, check_options, method_kwargs, select_methods
from .methods.witness import Witness, as_witness
from .linalg.operators import Dense, LinearOperator
from .linalg.spectral import SpectralNorm, operator_norms
from .report import Kind, Report, Result

Model = nn.Module | Graph


def as_graph(model: Model, input_shape: Sequence[int] | None = None, device: str | torch.device | None = None,
             input_scale: float | Sequence[float] | None = None) -> Graph:
    """The :class:`~lipbound.graph.Graph` of ``model`` (an ``nn.Module`` with ``input_shape``
    without batch axis, a Graph, whose own input shape is used, or a file path given to
    :func:`lipbound.load`), moved to ``device``. ``input_scale`` (the std of an input
    normalisation outside the model, one value or one per channel) composes the graph with
    ``diag(1/std)`` at its input (:func:`~lipbound.graph.input_scale.with_input_scale`)."""
    if isinstance(model, Graph):
        if input_shape is not None and tuple(input_shape) != model.input_shape:
            raise InvalidInput(f"the graph's input shape is {model.input_shape}, not {tuple(input_shape)}")
        graph = model
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise InvalidInput("input_shape (without batch axis) is required for an nn.Module")
        graph = from_torch(model, input_shape)
    elif isinstance(model, (str, os.PathLike)):
        graph = load(model, input_shape)
    else:
        raise InvalidInput(f"expected an nn.Module, a lipbound Graph or a model file, got {type(model).__name__}")
    if input_scale is not None:
        graph = with_input_scale(graph, input_scale)
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInput("device 'cuda' was asked for but no CUDA GPU is available")
        if device != graph.device:
            graph = graph.to(device=device)
    return graph


def estimate(model: Model, input_shape: Sequence[int] | None = None, methods: Iterable[str] | str | None = None,
             device: str | torch.device | None = None, seed: int = 0, progress: bool | None = None,
             input_scale: float | Sequence[float] | None = None, domain: Any = None, data: Any = None,
             time_budget: float | None = None, method_options: dict[str, dict[str, Any]] | None = None,
             **options: Any) -> Report:
    """Bracket the Lipschitz constant (L2 -> L2) of ``model``.

    Args:
        model: an ``nn.Module`` (with ``input_shape``), a Graph (e.g. from :func:`lipbound.load`,
            which carries its input shape) or a model file path (``.onnx``, ...).
        input_shape: the input shape without batch axis, e.g. ``(1, 28, 28)``.
        methods: method names (``lipbound.methods.METHODS`` lists them): ``"autolip"`` (certified
            upper bound), ``"autolip-power"`` (the paper's estimate), ``"lower"`` (witnessed lower
            bound), ``"exact"`` (small ReLU MLPs), ...; None: a default set for the model's size;
            ``"all"``: every method that applies (see :mod:`lipbound.methods.selection`).
        device: where to compute (``"cpu"``, ``"cuda"``); default: where the model's weights are.
        seed: seed of every random choice (start vectors, ...): same seed, same numbers (every
            method stops on its iteration counts, work caps and tolerances; see ``time_budget``).
        progress: show progress bars on stderr; None (default): only when stderr is a terminal,
            so that logs and pipes get no bars.
        input_scale: std of an input normalisation outside the model (one value or one per
            channel): the bounds are then for raw inputs, ``f o diag(1/std)``.
        domain: the input region (:func:`~lipbound.methods.region.as_region`): None (all of ``R^n``),
            a box ``(low, high)`` (numbers or tensors), :class:`~lipbound.methods.region.Box`,
            :class:`~lipbound.methods.region.Ball` (L2 or L-infinity), a
            :class:`~lipbound.frontends.vnnlib.VnnlibProperty` or a ``.vnnlib`` path. The graph is
            localized to it once; the methods that take a domain (``lower``, ``exact``, ...) get
            it, and every certified bound then holds for all pairs in the region. A union of boxes
            (a VNN-LIB ``or``) is not convex: the methods run on each distinct part
            (``Report.parts``: pairs inside one part only), and the report's one result,
            ``"union"``, bounds every pair of the union from the parts' bounds and, for pairs
            across parts at positive distance, the outputs at the parts' centres
            (:mod:`~lipbound.methods.union_bound`); parts that touch, or whose cross bound is too
            large, are bounded on their hull (``Report.hulls``). Its lower end is witnessed in the
            union.
        data: inputs (tensor or DataLoader) where ``lower`` starts its search.
        time_budget: total seconds for the whole call, an outer cap shared by the methods that
            can run long (each gets its share of the time left when it starts, by the methods'
            weights, a method that finishes on its own no more than its cost model predicts it
            needs; time one does not use passes to the next; see
            :func:`~lipbound.methods.selection.budget_share`). The default set is chosen to fit
            it. None: a default run (``methods=None``) gets
            :data:`~lipbound.methods.selection.DEFAULT_TIME_BUDGET` (30 s); named methods their
            own defaults. It never changes what a method computes, only where it stops: a method
            cut short by its share returns the best bound it found and says
            ``details["stopped_by"] == "time"`` (its numbers may then differ between runs; else
            ``"work"``, ``"iterations"`` or ``"converged"``).
        method_options: ``{method name: {option: value}}`` for one method only, e.g.
            ``{"lower": {"starts": 128}}``; an option the method does not know raises.
        **options: passed to every method that takes them (e.g. ``tol``, ``max_iter`` of the
            power method); an option no selected method takes raises.

    Returns:
        A :class:`~lipbound.report.Report`: ``.upper`` (best certified), ``.lower`` (best witnessed),
        ``.ratio`` and ``.results``.
    """
    if methods is not None and not isinstance(methods, str):
        methods = list(methods)
        for m in methods:
            if m != "all":
                get_method(m)  # unknown names fail before any work
    if time_budget is not None and not (time_budget > 0 and math.isfinite(time_budget)):
        raise InvalidInput(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    if progress is None:
        progress = sys.stderr.isatty()
    if methods is None and time_budget is None:
        time_budget = DEFAULT_TIME_BUDGET  # the default set is chosen for, and shares, this budget
    graph = as_graph(model, input_shape, device, input_scale)
    region = as_region(domain, graph.input_shape)
    hull = region.hull() if isinstance(region, BoxUnion) else region
    names, _ = select_methods(graph if hull is None else graph.localized(hull, {}), methods, time_budget)
    check_options(names, options, method_options)  # before any work; the set is chosen again once localized
    if not isinstance(region, BoxUnion):
        return _run_methods(graph, region, methods, seed, progress, data, time_budget, options, method_options)
    return _run_union(graph, region, lambda part, share: _run_methods(
        graph, part, methods, seed, progress, data, share, options, method_options), time_budget)


def _run_union(graph: Graph, region: BoxUnion, run: Any, time_budget: float | None) -> Report:
    """The report on a union of boxes (not convex; :mod:`~lipbound.methods.union_bound`): ``run(box,
    seconds)`` on each distinct part (identical boxes are run once) and on the hulls of the
    clusters that need one; its one result, ``"union"``, holds the least certified upper bound over
    the clusterings tried and the best lower bound witnessed in the union (the parts', a hull's
    only when its witness re-checks in the union). ``Report.parts``: one report per part (pairs
    inside that part only); ``Report.hulls``: the clusters' hull reports.

    With a time budget, the first pass (the parts, then the hulls) shares half of it; the rest goes
    to the part or hull whose bound decides the union's, run again when its first run was cut
    short by time (its report then holds both runs' results: the least upper and the largest
    lower of the two count)."""
    start = time.perf_counter()
    first = distinct_parts(region.parts)
    distinct = sorted(set(first))
    boxes = [region.parts[i] for i in distinct]
    done: dict[int, Report] = {}
    hulls: dict[tuple[int, ...], Report] = {}
    planned = len(distinct) + sum(len(c) > 1 for c in touching_clusters(boxes))  # the runs known up front

    def left(reserve: float = 0.0) -> float | None:
        return None if time_budget is None else max(time_budget * (1 - reserve) - (time.perf_counter() - start), 1e-3)

    def share() -> float | None:  # of the first pass
        return None if time_budget is None else left(0.5) / max(1, planned - len(done) - len(hulls))

    def hull_upper(cluster: list[int]) -> float:
        if tuple(cluster) not in hulls:
            hulls[tuple(cluster)] = run(BoxUnion([boxes[k] for k in cluster]).hull(), share())
        return hulls[tuple(cluster)].upper

    def bound_union() -> Any:
        can_merge = lambda: time_budget is None or time.perf_counter() - start < time_budget  # noqa: E731
        return union_upper(graph, boxes, [done[i].upper for i in distinct], hull_upper, can_merge=can_merge)
    for i in distinct:
        done[i] = run(region.parts[i], share())
    bound = bound_union()
    deciding = _deciding(bound, [done[i] for i in distinct], hulls)
    if deciding is not None and time_budget is not None and left() > 0.05 * time_budget and any(
            r.details.get("stopped_by") == "time" for r in deciding.results):
        deciding.results += run(deciding.region, left()).results
        bound = bound_union()
    lower, witness, lower_from = _union_lower(graph, region, done, list(hulls.values()))
    results = [r for rep in [*done.values(), *hulls.values()] for r in rep.results]
    cut = any(r.details.get("stopped_by") == "time" for r in results)
    details = {"parts": len(region.parts), "distinct_parts": len(distinct),
               "clusters": [[distinct[k] for k in c] for c in bound.clusters],
               "cluster_uppers": bound.cluster_uppers, "cross": bound.cross.value,
               "cross_pair": None if bound.cross.pair is None else [distinct[k] for k in bound.cross.pair],
               "cross_boxes": bound.cross.boxes, "cross_stopped": bound.cross.stopped,
               "clusterings_tried": [list(t) for t in bound.tried], "lower_from": lower_from,
               "second_pass": None if deciding is None else deciding.region_text,
               "stopped_by": "time" if cut else "work" if bound.cross.stopped == "work" and
               bound.upper == bound.cross.value else "converged"}
    upper = bound.upper
    kind = Kind.EXACT if lower is not None and lower >= upper else Kind.CERTIFIED_UPPER
    result = Result("union", upper, kind, time.perf_counter() - start, witness=witness, details=details,
                    bracket=None if lower is None else (min(lower, upper), upper))
    report = Report(graph.name, graph.input_shape, [result], region=region)
    report.parts = [done[i] for i in first]
    report.hulls = list(hulls.values())
    return report


def _deciding(bound: Any, parts: list[Report], hulls: dict[tuple[int, ...], Report]) -> Report | None:
    """The report of the part or cluster hull whose bound is the union's (None when the cross
    bound decides it)."""
    for cluster, value in zip(bound.clusters, bound.cluster_uppers):
        if value >= bound.upper:
            return parts[cluster[0]] if len(cluster) == 1 else hulls.get(tuple(cluster))
    return None


def _union_lower(graph: Graph, region: BoxUnion, parts: dict[int, Report],
                 hulls: list[Report]) -> tuple[float | None, Any, str | None]:
    """The best witnessed lower bound of the union (module doc of
    :mod:`~lipbound.methods.union_bound`): a part's (its witness lies in the part) or a hull's
    re-checked in the union; ``(value, witness, "part i: method" | "hull: method")``."""
    best: tuple[float | None, Any, str | None] = (None, None, None)
    for name, rep in [*((f"part {i}", rep) for i, rep in parts.items()), *(("hull", h) for h in hulls)]:
        for r in rep.results:
            if r.lower is None or r.witness is None or (best[0] is not None and r.lower <= best[0]):
                continue
            value = r.lower
            if name == "hull":
                try:
                    value = min(value, as_witness(r.witness).recheck(graph, region))
                except InvalidInput:
                    continue  # its witness lies outside the union: no lower bound of the union's constant
            if best[0] is None or value > best[0]:
                best = (value, r.witness, f"{name}: {r.method}")
    return best


SPLIT_SHARE = 0.75
"""The share of a run's time budget that caps the localization's split tree on the clock; the tree is
planned, from the layers' sizes, for :data:`~lipbound.methods.propagation.AUTO_PLAN_SHARE` of it (half
the run's budget; :func:`~lipbound.methods.split_bounds.planned_leaves`): its stall rule stops it first
on mnistfc 256x6 and ACAS Xu; on ERAN 9x200 the plan does (94 leaves at a 60 s budget, 17-30 s at load
3-4), and the bounds are worth the time: LipSDP's dense interior point then takes 4-15 s of the 60."""


def _localized(graph: Graph, region: Region, time_budget: float | None) -> Graph:
    """The graph on ``region`` with sound per-neuron bounds of every activation's input, from which
    every method reads per-neuron slope intervals: :func:`~lipbound.methods.propagation.localize`
    with ``method="auto"`` (IBP and CROWN to the end, so that the bounds do not depend on the time;
    on ReLU MLPs of at least 3 hidden layers refined by a split tree, capped at :data:`SPLIT_SHARE`
    of ``time_budget``)."""
    return localize(graph, region, method="auto",
                    time_budget=None if time_budget is None else SPLIT_SHARE * time_budget)


def _run_methods(graph: Graph, region: Region | None, methods: Any, seed: int, progress: bool,
                 data: Any, time_budget: float | None, options: dict[str, Any],
                 method_options: dict[str, dict[str, Any]] | None) -> Report:
    """Run ``methods`` (as :func:`~lipbound.methods.selection.select_methods` takes them, the
    default set chosen on the localized graph) one after the other on ``graph`` localized once to
    the convex ``region`` (the methods that take a domain get ``domain=region``), sharing
    ``time_budget`` (an outer cap: the localization's time counts against it)."""
    start = time.perf_counter()
    local = graph if region is None else _localized(graph, region, time_budget)
    names, explicit = select_methods(local, methods, time_budget)
    specs = [get_method(n) for n in names]
    sizes = graph_sizes(local)
    report = Report(graph.name, graph.input_shape, region=region)
    for i, spec in enumerate(specs):
        t0 = time.perf_counter()
        share = None if time_budget is None else budget_share(time_budget, time_budget - (t0 - start), specs[i:], sizes)
        kwargs = method_kwargs(spec, options, method_options, domain=region, data=data, time_budget=share)
        if not explicit:  # the default set's work caps, so that its numbers repeat (the user's options win)
            for key, value in DEFAULT_SET_WORK.get(spec.name, {}).items():
                kwargs.setdefault(key, value)
        name = spec.name
        try:
            result = spec(local, seed=seed, progress=progress, **kwargs)
        except (NotApplicable, UnsupportedOperation) as exc:
            if explicit:
                raise
            report.skipped[name] = str(exc)
            continue
        result.seconds = time.perf_counter() - t0
        result.options = {k: ("given" if k == "data" else region.describe() if k == "domain" else v)
                          for k, v in kwargs.items()}
        if share is not None:
            result.details["time_share"] = share
        report.results.append(result)
    return report


def autolip(model: Model, input_shape: Sequence[int] | None = None, certified: bool = True,
            seed: int = 0, progress: bool = False, **options: Any) -> Result:
    """AutoLip of ``model``: a certified upper bound (``certified=True``) or the paper's
    power-method estimate. See :mod:`lipbound.methods.autolip`."""
    return _autolip(as_graph(model, input_shape), certified=certified, seed=seed, progress=progress, **options)


def seqlip(model: Model, input_shape: Sequence[int] | None = None, solver: str = "certified",
           seed: int = 0, progress: bool = False, **options: Any) -> Result:
    """SeqLip of ``model``: ``solver="certified"`` (a certified upper bound, exact per pair when
    the layers are narrow), ``"greedy"`` or ``"topk"`` (the paper's estimates). See
    :mod:`lipbound.methods.seqlip`."""
    from .methods.seqlip import seqlip as _seqlip

    return _seqlip(as_graph(model, input_shape), solver=solver, seed=seed, progress=progress, **options)


def lower_bound(model: Model, input_shape: Sequence[int] | None = None, seed: int = 0, progress: bool = False,
                **options: Any) -> Result:
    """Witnessed lower bound of ``model`` by Jacobian and pair search (options: ``domain``,
    ``data``, ``time_budget``, ``starts``, ``steps``, ...). See :mod:`lipbound.methods.lower`;
    :func:`lipbound.witness_value` re-checks ``Result.witness``."""
    from .methods.lower import lower

    graph = as_graph(model, input_shape)
    if options.get("domain") is not None:
        options["domain"] = as_region(options["domain"], graph.input_shape)
    return lower(graph, seed=seed, progress=progress, **options)


def witness_value(model: Model, witness: Witness | dict[str, Any], input_shape: Sequence[int] | None = None,
                  domain: Any = None) -> float:
    """Re-check a witness in float64 from the model alone and return the lower bound it shows
    (:mod:`lipbound.methods.witness`): for a pair, the rigorous lower end of its quotient; for a
    Jacobian witness, the enclosure of ``||Df(x) v|| / ||v||`` after the region check and the
    central-difference re-check.

    Args:
        model: the ``nn.Module``, :class:`~lipbound.graph.Graph` or model file the witness is for.
        witness: a ``Result.witness`` (:class:`~lipbound.methods.witness.Witness`) or its dict form
            (``{"form": "jacobian", "x", "v"}`` or ``{"form": "pair", "x", "y"}``, e.g. read back
            from ``Result.to_dict()``).
        input_shape: the input shape without batch axis (default: the graph's, or for a module the
            shape of the witness's ``x``).
        domain: None, or the region the witness must lie in (anything
            :func:`~lipbound.methods.region.as_region` takes; closed).

    Raises:
        InvalidInput: a malformed witness, or one that is not valid (a Jacobian witness at a kink,
            outside the domain, or not confirmed by the central difference; a pair with ``x == y``
            or outside the domain).
    """
    witness = as_witness(witness)
    if input_shape is None and not isinstance(model, Graph):
        input_shape = tuple(torch.as_tensor(witness.x).shape)
    graph = as_graph(model, input_shape)
    return witness.recheck(graph, as_region(domain, graph.input_shape))


def spectral_norm(layer: nn.Module | LinearOperator | torch.Tensor, input_shape: Sequence[int] | None = None,
                  **options: Any) -> SpectralNorm:
    """Spectral norm of one linear layer or operator, from below and from above.

    ``layer`` is an ``nn.Linear``, ``nn.ConvNd``, ``nn.ConvTransposeNd``, ``nn.BatchNorm`` (eval),
    a pooling layer, any other linear module the graph frontend knows (or a module whose whole
    graph is affine, e.g. ``Sequential(Flatten(), Linear(...))``), a weight matrix, or a
    :class:`~lipbound.linalg.operators.LinearOperator`. ``input_shape`` (without batch axis) is
    needed for everything but matrices and operators: a convolution's norm depends on its input
    size. Returns a :class:`~lipbound.linalg.spectral.SpectralNorm` with ``lower`` (power method)
    and ``upper`` (certified); ``options`` go to :func:`~lipbound.linalg.spectral.operator_norms`.
    """
    if isinstance(layer, LinearOperator):
        op = layer
    elif isinstance(layer, torch.Tensor):
        if layer.dim() != 2:
            raise InvalidInput(f"a weight matrix must be 2-D, got shape {tuple(layer.shape)}")
        op = Dense(layer, (layer.shape[1],))
    else:
        if input_shape is None:
            raise InvalidInput("input_shape (without batch axis) is required for a module")
        op = _linear_part(layer, tuple(input_shape))
    return operator_norms(op, **options)


def _linear_part(module: nn.Module, input_shape: tuple[int, ...]) -> LinearOperator:
    """The operator of one affine layer, or of a module whose whole graph is affine."""
    try:
        return operator_of_module(module, input_shape)
    except UnsupportedOperation:
        graph = from_torch(module, input_shape).fused()
        nodes = [n for n in graph if n.kind != "input"]
        if len(nodes) != 1 or nodes[0].kind != "affine":
            raise InvalidInput(f"spectral_norm needs an affine module; {type(module).__name__} has "
                               f"{', '.join(n.kind for n in nodes)} nodes") from None
        return nodes[0].op


__all__ = ["spectral_norm", "estimate", "autolip", "seqlip", "lower_bound", "as_graph", "witness_value",
           "LipboundError", "Ball", "Box", "BoxUnion"]
