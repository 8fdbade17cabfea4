"""``lipbound run-instances instances.csv``: the local bracket and the robustness verdict of every
row of a VNN-COMP benchmark, in parallel and resumable (:func:`lipbound.sweep.run_instances`)."""

from __future__ import annotations

import argparse
import json

from ..methods import METHODS
from .common import progress_of
from .sweep import add_execution_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-instances", help="bracket and verdict of every row of a VNN-COMP instances.csv")
    p.add_argument("instances", help="instances.csv: rows onnx,vnnlib,timeout (paths relative to the CSV)")
    p.add_argument("--timeout-scale", type=float, default=1.0, metavar="F",
                   help="time budget of a row = its timeout times F (default 1)")
    p.add_argument("--method", "-m", action="append", dest="methods", metavar="NAME",
                   help=f"method to run (repeatable; default: the estimate's default set): {', '.join(METHODS)}")
    add_execution_options(p)
    p.add_argument("--json", action="store_true", help="print the records as JSON lines")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sweep import instances_table, run_instances

    result = run_instances(args.instances, args.methods, workers=args.workers, backend=args.backend, out=args.out,
                           timeout_scale=args.timeout_scale, seed=args.seed, progress=progress_of(args),
                           address=args.address)
    print("\n".join(json.dumps(r) for r in result.records) if args.json else instances_table(result))
    return 130 if result.interrupted else 0
