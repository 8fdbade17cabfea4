"""The options and the call of a data-set sweep for ``lipbound certify`` (certified accuracy
over inputs and labels: :func:`lipbound.sweep.certify_dataset`), and the execution options that
every sweep subcommand shares."""

from __future__ import annotations

import argparse
import json

import torch

from ..errors import InvalidInput
from .common import parse_domain, parse_radii, progress_of


def add_execution_options(p: argparse.ArgumentParser) -> None:
    """``--workers``, ``--backend``, ``--address``, ``--out``."""
    p.add_argument("--workers", "-j", type=int, default=None, help="worker processes (default: the CPU count)")
    p.add_argument("--backend", default="process", choices=["process", "ray", "serial"],
                   help="process pool (default), Ray (pip install 'lipbound[ray]') or serial")
    p.add_argument("--address", default=None, help="with --backend ray: the address of an existing Ray cluster "
                   "(default: start a local one)")
    p.add_argument("--out", "-o", default=None, metavar="RESULTS.jsonl",
                   help="append one JSON line per finished instance; a rerun skips what it holds")


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    """The data-set options of ``lipbound certify`` beside its own (``--labels``, ``--radii``,
    ``--domain``): ``--plot`` and the execution options; any of them runs the sweep."""
    p.add_argument("--plot", default=None, metavar="OUT.png", help="with --labels: draw certified accuracy "
                   "against radius (runs the data-set sweep)")
    add_execution_options(p)


def wants_sweep(args: argparse.Namespace) -> bool:
    """``lipbound certify`` runs the data-set sweep when an execution option or ``--plot`` is given."""
    return (args.workers is not None or args.out is not None or args.backend != "process"
            or args.address is not None or args.plot is not None)


def run_dataset(args: argparse.Namespace, graph, inputs: torch.Tensor, labels: torch.Tensor) -> int:
    """Certified accuracy of ``graph`` on ``inputs`` / ``labels`` with the options of
    :func:`add_sweep_options` (and ``--upper``, ``--local``, ``--time-budget``, ``--seed``,
    ``--json``, ``--quiet`` of ``lipbound certify`` when present); prints the summary."""
    from ..sweep import certify_dataset

    domain = parse_domain(args.domain)
    if isinstance(domain, str):
        raise InvalidInput("--domain with --labels must be a box LOW,HIGH")
    radii = parse_radii(args.radii) if args.radii else [0.1, 0.25, 0.5]
    summary = certify_dataset(graph, inputs, labels, radii, domain=domain, methods=args.methods,
                              upper=getattr(args, "upper", None), local=getattr(args, "local", False),
                              pair_constants=not getattr(args, "no_pair_constants", False),
                              workers=args.workers, backend=args.backend, out=args.out, seed=getattr(args, "seed", 0),
                              time_budget=getattr(args, "time_budget", None), progress=progress_of(args),
                              address=args.address)
    if args.plot:
        summary.plot(args.plot)
    print(json.dumps(summary.to_dict(), indent=2) if getattr(args, "json", False) else summary.table())
    return 130 if summary.run is not None and summary.run.interrupted else 0
