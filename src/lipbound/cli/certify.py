"""``lipbound certify MODEL --inputs X.pt``: certified robustness radii of a classifier."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import InvalidInput
from .common import load_graph, progress_of


def register(sub: argparse._SubParsersAction) -> None:
    cert = sub.add_parser("certify", help="certified robustness radii of a classifier at given inputs")
    cert.add_argument("model", help="as for estimate")
    cert.add_argument("--inputs", "-i", required=True, help="tensor (N, *input shape) saved with torch.save")
    cert.add_argument("--input-shape", "-s", default=None, help="input shape without batch axis (default: "
                      "from the inputs)")
    cert.add_argument("--weights", "-w", default=None, help="state dict to load (read with weights_only=True)")
    cert.add_argument("--factory", default=None, metavar="FILE.py:FUNCTION", help="as for estimate")
    cert.add_argument("--upper", type=float, default=None, help="a certified Lipschitz upper bound to use "
                      "(default: computed)")
    cert.add_argument("--local", action="store_true", help="also search the largest L2 ball certified by local "
                      "logit-pair constants (printed beside the global radius)")
    cert.add_argument("--radius", type=float, default=None, help="check this L2 radius around each input with "
                      "local logit-pair constants (certified yes/no per input)")
    cert.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                      help="seconds of the local search per input (default: no cap)")
    cert.add_argument("--json", action="store_true", help="print the certificate as JSON")
    cert.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    cert.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    cert.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..certify import certify

    path = Path(args.inputs)
    if not path.is_file():
        raise InvalidInput(f"inputs file not found: {path}")
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInput(f"could not read inputs {path} as a tensor: {type(exc).__name__}") from None
    if not isinstance(x, torch.Tensor):
        raise InvalidInput(f"{path} must hold one tensor (N, *input shape), got {type(x).__name__}")
    shape_text = args.input_shape or ",".join(map(str, x.shape[1:]))
    graph = load_graph(args, args.model, shape_text, args.weights)
    cert = certify(graph, x, args.upper, seed=args.seed, progress=progress_of(args),
                   local=args.local, radius=args.radius, time_budget=args.time_budget)
    print(json.dumps(cert.to_dict(), indent=2) if args.json else cert.table())
    return 0
