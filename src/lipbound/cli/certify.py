"""``lipbound certify MODEL --inputs X.pt [--labels Y.pt|PROP.vnnlib] [--radii 0.1,0.25]``: certified
robustness radii of a classifier, its clean and certified accuracy."""

from __future__ import annotations

import argparse
import json

import torch

from ..errors import InvalidInput
from ..methods import METHODS
from .sweep import add_sweep_options, run_dataset, wants_sweep
from .common import (add_method_options, add_model_options, load_graph, load_tensor, parse_domain, parse_radii,
                     progress_of)


def register(sub: argparse._SubParsersAction) -> None:
    cert = sub.add_parser("certify", help="certified robustness radii and accuracy of a classifier at given inputs")
    add_model_options(cert, "input shape without batch axis (default: from the inputs)")
    cert.add_argument("--inputs", "-i", required=True, help="tensor (N, *input shape) saved with torch.save (or .npy)")
    cert.add_argument("--labels", "-y", default=None, metavar="Y.pt|PROP.vnnlib",
                      help="true classes: a tensor of N integers (torch.save or .npy), or a VNN-LIB robustness "
                      "property whose class is every input's label; gives clean and certified accuracy")
    cert.add_argument("--radii", default=None, metavar="R1,R2,...",
                      help="L2 radii at which to report the certified accuracy, e.g. 0.1,0.25")
    add_method_options(cert, "certified method for U and the pair constants (repeatable; default: the default "
                       "set's certified methods): "
                       + ", ".join(n for n, s in METHODS.items() if s.guarantee.is_upper))
    cert.add_argument("--upper", type=float, default=None, help="a certified Lipschitz upper bound to use "
                      "(default: computed)")
    cert.add_argument("--no-pair-constants", action="store_true",
                      help="only the global radius margin / (sqrt(2) U), without the logit-pair constants")
    cert.add_argument("--local", action="store_true", help="search the largest L2 ball certified by local "
                      "logit-pair constants (the global radius beside it)")
    cert.add_argument("--radius", type=float, default=None, help="check this L2 radius around each input with "
                      "local logit-pair constants (certified yes/no per input)")
    cert.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                      help="seconds of the local search per input (default: no cap)")
    add_sweep_options(cert)
    cert.set_defaults(func=run)


def load_labels(path: str, input_shape: tuple[int, ...]) -> torch.Tensor | int:
    """The labels of ``--labels``: a tensor file, or the class of a VNN-LIB robustness property."""
    if path.lower().endswith(".vnnlib"):
        from ..frontends.vnnlib import load_vnnlib

        prop = load_vnnlib(path, input_shape)
        if prop.label is None:
            raise InvalidInput(f"--labels {path}: not a robustness property of one class (no label to read)")
        return prop.label
    return load_tensor(path, "--labels")


def run(args: argparse.Namespace) -> int:
    from ..certify import certify

    x = load_tensor(args.inputs, "--inputs")
    if x.dim() < 2:
        raise InvalidInput(f"--inputs must hold a tensor (N, *input shape), got shape {tuple(x.shape)}")
    shape_text = args.input_shape or ",".join(map(str, x.shape[1:]))
    graph = load_graph(args, args.model, shape_text, args.weights)
    labels = None if args.labels is None else load_labels(args.labels, graph.input_shape)
    if wants_sweep(args):
        if labels is None:
            raise InvalidInput("--workers, --backend, --address, --out and --plot need --labels (a data-set sweep)")
        if isinstance(labels, int):
            labels = torch.full((len(x),), labels, dtype=torch.int64)
        return run_dataset(args, graph, x, labels)
    cert = certify(graph, x, args.upper, labels=labels, radii=parse_radii(args.radii),
                   pair_constants=not args.no_pair_constants, methods=args.methods, domain=parse_domain(args.domain),
                   device=args.device, seed=args.seed, progress=progress_of(args), local=args.local,
                   radius=args.radius, time_budget=args.time_budget)
    print(json.dumps({**cert.to_dict(), "notes": list(graph.notes)}, indent=2) if args.json else cert.table())
    return 0
