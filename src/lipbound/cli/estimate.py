"""``lipbound estimate MODEL ...``: the bracket of one model, on all of R^n or on a region."""

from __future__ import annotations

import argparse
import json

from .. import api
from ..methods import METHODS
from .common import add_model_options, add_run_options, load_graph, progress_of, region_of


def register(sub: argparse._SubParsersAction) -> None:
    est = sub.add_parser("estimate", help="bound the Lipschitz constant of a model")
    add_model_options(est, "input shape without batch axis, e.g. 1,28,28 (required for PyTorch models and ONNX "
                      "models with dynamic shapes)")
    add_run_options(est)
    est.set_defaults(func=lambda args: run(args, args.model, args.input_shape, args.weights))


def run(args: argparse.Namespace, model_spec: str, shape_text: str | None, weights: str | None,
        methods: list[str] | None = None, budget: float | None = None) -> int:
    """Estimate and print; ``methods`` / ``budget`` are the defaults when the command line gives none."""
    graph = load_graph(args, model_spec, shape_text, weights)
    budget = args.time_budget if args.time_budget is not None else budget
    report = api.estimate(graph, methods=args.methods or methods, device=args.device, seed=args.seed,
                          progress=progress_of(args), domain=region_of(args), time_budget=budget)
    if args.plot:
        report.plot(args.plot)
    untried = certified_methods()
    if args.json:
        print(json.dumps({**report.to_dict(), "hint": report.hint(untried), "notes": list(graph.notes)}, indent=2))
    else:
        print(f"model {report.model}, input shape {report.input_shape}")
        for note in graph.notes:
            print(f"note: {note}")
        print(report.table(untried))
    return 0


def certified_methods() -> list[str]:
    """The registered methods that certify an upper bound on their own (not the aggregates), which
    the hint of a loose bracket names when they were not run."""
    return [name for name, spec in METHODS.items() if spec.guarantee.is_upper and not spec.aggregate]
