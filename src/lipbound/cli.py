"""Command line: ``lipbound estimate MODEL ...`` and ``lipbound demo``.

Bad input (missing file, bad shape, unsupported layer, NaN weights, failing factory) exits with
status 2 and one line on stderr; an internal error exits with status 1 and one line (set
``LIPBOUND_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import api
from .errors import InvalidInput, LipboundError
from .graph.input_scale import parse_scale, with_input_scale
from .frontends.loading import load, load_factory
from .methods import METHODS

DEMO_SPEC = f"{Path(__file__).parent / 'examples' / 'demo_net.py'}:demo_cnn"
DEMO_SHAPE = "1,28,28"
DEMO_METHODS = ["autolip", "autolip-power", "seqlip", "lower"]
DEMO_BUDGET = 5.0


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)`` (also accepts ``x`` or spaces as separators)."""
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InvalidInput(f"--input-shape must be integers separated by commas, e.g. 1,28,28; got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise InvalidInput(f"--input-shape must be positive integers without the batch axis, got {text!r}")
    return shape


def parse_domain(text: str | None) -> tuple[float, float] | str | None:
    """``"0,1"`` -> ``(0.0, 1.0)``; a ``.vnnlib`` path stays a path (read by
    :func:`lipbound.load_vnnlib` against the model's input shape); None stays None (all of R^n)."""
    if text is None:
        return None
    if text.lower().endswith(".vnnlib"):
        if not Path(text).is_file():
            raise InvalidInput(f"--domain: VNN-LIB file not found: {text}")
        return text
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise InvalidInput(f"--domain must be LOW,HIGH (two numbers) or a .vnnlib file, got {text!r}") from None
    return low, high


def load_center(path: str) -> torch.Tensor:
    """The tensor in ``path``: saved with ``torch.save`` (read with ``weights_only=True``) or a
    NumPy ``.npy`` file."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"--center file not found: {p}")
    try:
        if p.suffix.lower() == ".npy":
            import numpy as np

            return torch.as_tensor(np.load(p, allow_pickle=False))
        x = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInput(f"could not read --center {p} as a tensor: {type(exc).__name__}") from None
    if not isinstance(x, torch.Tensor):
        raise InvalidInput(f"--center {p} must hold one tensor, got {type(x).__name__}")
    return x


def region_of(args: argparse.Namespace):
    """The ``domain`` of the command line: ``--domain`` (a box or a VNN-LIB file), or the ball
    ``--center`` / ``--radius`` / ``--norm``; None for all of R^n."""
    ball = (args.center, args.radius)
    if args.domain is not None and any(v is not None for v in ball):
        raise InvalidInput("give --domain or --center/--radius, not both")
    if all(v is None for v in ball):
        return parse_domain(args.domain)
    if None in ball:
        raise InvalidInput("--center and --radius go together")
    return api.Ball(load_center(args.center), args.radius, args.norm)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", "-m", action="append", dest="methods", metavar="NAME",
                   help="method to run (repeatable; default: a set sized for the model; 'all': every method "
                   f"that applies): {', '.join(METHODS)}")
    p.add_argument("--domain", default=None, metavar="LOW,HIGH|PROP.vnnlib",
                   help="input region: a box, e.g. 0,1, or a VNN-LIB property file (default: all of R^n)")
    p.add_argument("--center", default=None, metavar="X.pt|X.npy",
                   help="center of a ball region (a tensor of the input shape, torch.save or .npy); with --radius")
    p.add_argument("--radius", type=float, default=None, help="radius of the ball region around --center")
    p.add_argument("--norm", default="2", choices=["2", "inf"], help="norm of the ball region (default 2)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="total seconds for the run, shared by the methods that can run long "
                   "(default: each method's own limit)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="draw the bracket and the layer norms")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipbound", description="Bracket the Lipschitz constant (L2 -> L2) "
                                     "of a neural network between a certified upper and a witnessed lower bound.")
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimate", help="bound the Lipschitz constant of a model")
    est.add_argument("model", help="model.onnx, path/to/file.py:factory (a function returning an nn.Module), "
                     "or a weights file with --factory")
    est.add_argument("--input-shape", "-s", default=None, help="input shape without batch axis, e.g. 1,28,28 "
                     "(required for PyTorch models and ONNX models with dynamic shapes)")
    est.add_argument("--weights", "-w", default=None, help="state dict to load (read with weights_only=True)")
    est.add_argument("--factory", default=None, metavar="FILE.py:FUNCTION",
                     help="architecture for a weights file given as MODEL (see lipbound.load)")
    est.add_argument("--trust-pickle", action="store_true",
                     help="allow a pickled full model (torch.save(model)): unpickling executes code from the file")
    est.add_argument("--input-scale", default=None, metavar="STD",
                     help="std of an input normalisation outside the model, one value or one per channel "
                     "(e.g. 0.2471,0.2435,0.2616): bound f(x / std), the constant for raw inputs")
    _add_run_options(est)
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
    demo = sub.add_parser("demo", help="run on the bundled example network")
    _add_run_options(demo)
    sub.add_parser("methods", help="list the methods")
    return parser


def _load_graph(args: argparse.Namespace, model_spec: str, shape_text: str | None, weights: str | None):
    """The graph of the model named on the command line (with its input scale applied)."""
    shape = parse_shape(shape_text) if shape_text is not None else None
    factory = getattr(args, "factory", None)
    if weights is not None and factory is not None:
        raise InvalidInput("give --weights (with MODEL as file.py:factory) or --factory (with MODEL as the "
                           "weights file), not both")
    if weights is not None:
        graph = load_factory(model_spec, weights, shape)
    else:
        graph = load(model_spec, shape, factory=factory, trust_pickle=getattr(args, "trust_pickle", False))
    scale = getattr(args, "input_scale", None)
    if scale is not None:
        graph = with_input_scale(graph, parse_scale(scale))
    return graph


def _run(args: argparse.Namespace, model_spec: str, shape_text: str | None, weights: str | None) -> int:
    graph = _load_graph(args, model_spec, shape_text, weights)
    methods = args.methods or (DEMO_METHODS if args.command == "demo" else None)
    progress = not args.quiet and sys.stderr.isatty()
    budget = args.time_budget if args.time_budget is not None else (DEMO_BUDGET if args.command == "demo" else None)
    report = api.estimate(graph, methods=methods, device=args.device, seed=args.seed, progress=progress,
                          domain=region_of(args), time_budget=budget)
    if args.plot:
        report.plot(args.plot)
    if args.json:
        print(json.dumps({**report.to_dict(), "notes": list(graph.notes)}, indent=2))
    else:
        print(f"model {report.model}, input shape {report.input_shape}")
        for note in graph.notes:
            print(f"note: {note}")
        print(report.table())
    return 0


def _certify(args: argparse.Namespace) -> int:
    from .certify import certify

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
    graph = _load_graph(args, args.model, shape_text, args.weights)
    cert = certify(graph, x, args.upper, seed=args.seed, progress=not args.quiet and sys.stderr.isatty(),
                   local=args.local, radius=args.radius, time_budget=args.time_budget)
    print(json.dumps(cert.to_dict(), indent=2) if args.json else cert.table())
    return 0


def methods_table() -> str:
    """One block per registered method: name, guarantee, what it computes, what it applies to, cost."""
    blocks = []
    for spec in METHODS.values():
        tags = [t for t, on in (("region", spec.takes_domain), ("time budget", spec.budgeted),
                                ("in best", spec.in_best), ("default", spec.in_default is not False)) if on]
        blocks.append(f"{spec.name}  [{spec.guarantee.value}]{'  (' + ', '.join(tags) + ')' if tags else ''}\n"
                      f"    {spec.summary}\n    applies to: {spec.applies_to}\n    cost: {spec.cost}")
    return "\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "methods":
            print(methods_table())
            return 0
        if args.command == "demo":
            return _run(args, DEMO_SPEC, DEMO_SHAPE, None)
        if args.command == "certify":
            return _certify(args)
        return _run(args, args.model, args.input_shape, args.weights)
    except (LipboundError, ValueError) as exc:
        _fail(exc, 2)
        return 2
    except (OSError, MemoryError) as exc:
        _fail(exc, 2)
        return 2
    except KeyboardInterrupt:
        print("lipbound: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, unless debugging
        if os.environ.get("LIPBOUND_DEBUG"):
            raise
        print(f"lipbound: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _fail(exc: BaseException, code: int) -> None:
    if os.environ.get("LIPBOUND_DEBUG"):
        raise exc
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"lipbound: error: {msg}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
