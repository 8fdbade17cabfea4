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

from . import api
from .errors import InvalidInput, LipboundError
from .loading import load_factory
from .methods import METHODS

DEMO_SPEC = f"{Path(__file__).parent / 'examples' / 'demo_net.py'}:demo_cnn"
DEMO_SHAPE = "1,28,28"


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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", "-m", action="append", dest="methods", metavar="NAME",
                   help=f"method to run (repeatable; default autolip and autolip-power): {', '.join(METHODS)}")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipbound", description="Bracket the Lipschitz constant (L2 -> L2) "
                                     "of a neural network between a certified upper and a witnessed lower bound.")
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimate", help="bound the Lipschitz constant of a model")
    est.add_argument("model", help="path/to/file.py:factory (a function returning an nn.Module)")
    est.add_argument("--input-shape", "-s", required=True, help="input shape without batch axis, e.g. 1,28,28")
    est.add_argument("--weights", "-w", default=None, help="state dict to load (read with weights_only=True)")
    _add_run_options(est)
    demo = sub.add_parser("demo", help="run on the bundled example network")
    _add_run_options(demo)
    sub.add_parser("methods", help="list the methods")
    return parser


def _run(args: argparse.Namespace, model_spec: str, shape_text: str, weights: str | None) -> int:
    shape = parse_shape(shape_text)
    model = load_factory(model_spec, weights)
    methods = args.methods or ["autolip", "autolip-power"]
    progress = not args.quiet and sys.stderr.isatty()
    report = api.estimate(model, shape, methods=methods, device=args.device, seed=args.seed, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"model {report.model}, input shape {report.input_shape}")
        print(report.table())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "methods":
            for name in METHODS:
                print(name)
            return 0
        if args.command == "demo":
            return _run(args, DEMO_SPEC, DEMO_SHAPE, None)
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
