"""Certified accuracy of a classifier over a data set: :func:`certify_dataset`.

One instance per input ``x_i`` with label ``y_i``: its predicted class, rigorous logit margin and
certified L2 radius from a certified Lipschitz bound ``U`` and the certified constants ``L_yj`` of
the logit differences (both computed once, before the sweep, by :func:`lipbound.estimate` and
:func:`lipbound.margin_constants` with certified methods only; ``U`` may be given), through
:func:`~lipbound.sweep.adapter.certify_one`. With ``domain`` (a convex set, e.g. the pixel box
``(0, 1)``), ``U`` bounds the constant on the domain only, and a certificate covers the
perturbations that stay inside it: ``B(x, r) ∩ domain`` (the segment from ``x`` to such a point
stays in the convex domain). With ``local=True`` each input also gets the largest ball certified
by local logit-pair constants (:func:`lipbound.certify` with ``local``).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..api import as_graph, estimate
from ..errors import InvalidInput
from ..graph.ir import Graph
from ..margins import margin_constants
from ..methods.region import BoxUnion, as_region
from ..methods.selection import default_methods
from .accuracy import DatasetSummary, summarize
from .adapter import certify_one
from .keys import graph_digest, instance_key, settings_digest
from .runner import check_execution, execute
from .tasks import Task

__all__ = ["certify_dataset", "DatasetJob", "check_dataset"]


@dataclass
class DatasetJob:
    """Certify one input per task with the bound ``upper`` (module doc); the graph travels to
    each worker once, with the job."""

    graph: Graph
    upper: float
    radii: Sequence[float]
    local: bool = False
    seed: int = 0
    time_budget: float | None = None
    pair_constants: torch.Tensor | None = None

    def setup(self) -> None:
        pass

    def run(self, payload: tuple[torch.Tensor, int]) -> dict[str, Any]:
        x, label = payload
        out = certify_one(self.graph, x, self.upper, self.radii, pair_constants=self.pair_constants,
                          local=self.local, seed=self.seed, time_budget=self.time_budget)
        return {"label": label, **out}


def check_dataset(graph: Graph, inputs: Any, labels: Any,
                  radii: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """``inputs`` (N, *input shape) as float tensor, ``labels`` (N,) as int64 and the sorted radii;
    :class:`~lipbound.errors.InvalidInput` names the first problem: lengths that differ, a shape
    that does not match the model, a NaN or infinite input, a label outside ``0..classes-1``, a
    radius that is not positive and finite."""
    x, y = torch.as_tensor(inputs), torch.as_tensor(labels)
    if x.dim() < 1 or y.dim() != 1:
        raise InvalidInput(f"labels must be one integer per input, shape (N,); got {tuple(y.shape)}")
    if len(x) != len(y):
        raise InvalidInput(f"{len(x)} inputs but {len(y)} labels: one label per input")
    if len(x) == 0:
        raise InvalidInput("no inputs to certify")
    if tuple(x.shape[1:]) != graph.input_shape:
        raise InvalidInput(f"inputs must have shape (N, {', '.join(map(str, graph.input_shape))}) for this model, "
                           f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    bad = torch.nonzero(~torch.isfinite(x.flatten(1)).all(dim=1)).flatten()
    if len(bad):
        raise InvalidInput(f"input {bad[0].item()} contains NaN or infinite values")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise InvalidInput("labels must be integers (class indices)")
    y = y.to(torch.int64)
    classes = math.prod(graph.output_shape)
    out = torch.nonzero((y < 0) | (y >= classes)).flatten()
    if len(out):
        i = out[0].item()
        raise InvalidInput(f"label {y[i].item()} of input {i} is outside 0..{classes - 1} "
                           f"(the model has {classes} logits)")
    radii = sorted(float(r) for r in radii)
    if not radii or not all(r > 0 and math.isfinite(r) for r in radii):
        raise InvalidInput(f"radii must be positive finite numbers, got {radii}")
    return x, y, radii


def certify_dataset(model: Any, inputs: Any, labels: Any, radii: Sequence[float] = (0.1, 0.25, 0.5), *,
                    domain: Any = None, methods: Sequence[str] | None = None, upper: float | None = None,
                    pair_constants: bool = True, local: bool = False, workers: int | None = None,
                    backend: str = "process",
                    out: str | os.PathLike | None = None, seed: int = 0, time_budget: float | None = None,
                    input_shape: Sequence[int] | None = None, progress: bool = False,
                    address: str | None = None) -> DatasetSummary:
    """Certified accuracy of the classifier ``model`` on ``inputs`` / ``labels`` (module doc).

    Args:
        model: an ``nn.Module`` (input shape from ``input_shape`` or the inputs), a Graph or a file.
        inputs: tensor or array ``(N, *input shape)``; ``labels``: ``(N,)`` class indices.
        radii: L2 radii at which certified accuracy is reported.
        domain: None (``R^n``) or a convex input region (e.g. ``(0, 1)``) the bound ``U`` is for.
        methods: certified methods that compute ``U`` (default: the default set's upper bounds).
        upper: a certified bound ``U`` to use instead (valid on ``domain``).
        pair_constants: also compute, once before the sweep, the certified constants of the logit
            differences (:func:`lipbound.margin_constants` with ``methods``, on ``domain``): each
            radius is then the larger of ``min_j (f_y - f_j) / L_yj`` and ``margin / (sqrt(2) U)``.
        local: also search a larger radius per input with local logit-pair constants.
        workers, backend, address, out, progress: as for :func:`~lipbound.sweep.run_instances`.
        seed: seed of every random choice; time_budget: seconds for ``U`` and, with ``local``,
            per input (None: no cap).

    Returns:
        A :class:`~lipbound.sweep.accuracy.DatasetSummary` (print it, or ``.plot(path)``).
    """
    check_execution(workers, backend)
    shape = input_shape if input_shape is not None or isinstance(model, (Graph, str, os.PathLike)) \
        else tuple(torch.as_tensor(inputs).shape[1:])
    graph = as_graph(model, shape)
    x, y, radii = check_dataset(graph, inputs, labels, radii)
    region = as_region(domain, graph.input_shape)
    if isinstance(region, BoxUnion):
        raise InvalidInput("domain must be convex (a box or a ball), not a union of boxes")
    if region is not None:
        outside = torch.nonzero(~region.contains(x.to(torch.float64))).flatten()
        if len(outside):
            raise InvalidInput(f"input {outside[0].item()} lies outside the domain {region.describe()}")
    constants = _constant(graph, region, methods, upper, seed, time_budget)
    constants["local"] = local
    pairs = margin_constants(graph, methods=methods, domain=region, seed=seed) if pair_constants else None
    constants["pair_constants"] = None if pairs is None else pairs.tolist()
    settings = settings_digest({"radii": radii, "upper": constants["upper"], "local": local, "seed": seed,
                                "time_budget": time_budget if local else None,
                                "pair_constants": constants["pair_constants"]})
    model_digest = graph_digest(graph)
    tasks = [Task(i, instance_key(model_digest, _input_id(i, x[i], int(y[i])), settings), f"input {i}",
                  (x[i], int(y[i]))) for i in range(len(x))]
    job = DatasetJob(graph, constants["upper"], radii, local, seed, time_budget if local else None, pairs)
    run = execute(job, tasks, out, workers, backend, progress, address)
    return summarize(run, radii, constants)


def _constant(graph: Graph, region: Any, methods: Sequence[str] | None, upper: float | None, seed: int,
              time_budget: float | None) -> dict[str, Any]:
    """The certified bound ``U`` on ``region`` and where it comes from."""
    where = "R^n" if region is None else region.describe()
    if upper is not None:
        if not (upper > 0 and math.isfinite(upper)):
            raise InvalidInput(f"the Lipschitz upper bound must be positive and finite, got {upper}")
        return {"upper": float(upper), "source": "given", "domain": where}
    names = list(methods) if methods is not None else default_methods(graph, lower=False)
    report = estimate(graph, methods=names, domain=region, seed=seed, progress=False, time_budget=time_budget)
    used = [r.method for r in report.results if r.kind.is_upper]
    if not used or not math.isfinite(report.upper):
        raise InvalidInput(f"no certified upper bound from the methods {', '.join(names)}")
    return {"upper": report.upper, "source": "best of " + ", ".join(used), "domain": where,
            "methods": {r.method: r.value for r in report.results if r.kind.is_upper}}


def _input_id(i: int, x: torch.Tensor, label: int) -> str:
    """``i:digest`` of the input's values and label (a changed input is a new instance)."""
    digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes() + str(label).encode()).hexdigest()
    return f"{i}:{digest[:12]}"
