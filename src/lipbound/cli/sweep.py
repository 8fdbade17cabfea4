"""The options and the call of a data-set sweep for ``lipbound certify`` (certified accuracy
over inputs and labels: :func:`lipbound.sweep.certify_dataset`), and the execution options that
every sweep subcommand shares."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import InvalidInput
from .common import parse_domain, progress_of


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
    """The data-set options of ``lipbound certify``: ``--labels`` (which turns the sweep on),
    ``--radii``, ``--domain``, ``--plot`` and the execution options."""
    p.add_argument("--labels", default=None, metavar="Y.pt|Y.npy|Y.npz",
                   help="true class per input: report certified accuracy over the inputs")
    p.add_argument("--radii", default="0.1,0.25,0.5", help="with --labels: L2 radii of the certified accuracy "
                   "(default 0.1,0.25,0.5)")
    p.add_argument("--domain", default=None, metavar="LOW,HIGH",
                   help="with --labels: input box the Lipschitz bound is for, e.g. 0,1 (default: all of R^n)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="with --labels: draw certified accuracy "
                   "against radius")
    add_execution_options(p)


def load_array(path: str, what: str) -> torch.Tensor:
    """The tensor in ``path``: ``torch.save`` (read with ``weights_only=True``), ``.npy``, or
    ``.npz`` holding one array (or an array named ``what``)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"{what} file not found: {p}")
    try:
        if p.suffix.lower() in (".npy", ".npz"):
            import numpy as np

            data = np.load(p, allow_pickle=False)
            if p.suffix.lower() == ".npz":
                names = list(data.files)
                if what not in names and len(names) != 1:
                    raise InvalidInput(f"{p} holds arrays {names}: name one {what!r} or keep one")
                data = data[what if what in names else names[0]]
            return torch.as_tensor(data)
        value = torch.load(p, map_location="cpu", weights_only=True)
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"could not read {what} {p} as a tensor: {type(exc).__name__}") from None
    if not isinstance(value, torch.Tensor):
        raise InvalidInput(f"{p} must hold one tensor of {what}, got {type(value).__name__}")
    return value


def parse_radii(text: str) -> list[float]:
    try:
        return [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise InvalidInput(f"--radii must be numbers separated by commas, e.g. 0.1,0.25,0.5; got {text!r}") from None


def run_dataset(args: argparse.Namespace, graph, inputs: torch.Tensor, labels: torch.Tensor) -> int:
    """Certified accuracy of ``graph`` on ``inputs`` / ``labels`` with the options of
    :func:`add_sweep_options` (and ``--upper``, ``--local``, ``--time-budget``, ``--seed``,
    ``--json``, ``--quiet`` of ``lipbound certify`` when present); prints the summary."""
    from ..sweep import certify_dataset

    domain = parse_domain(args.domain)
    if isinstance(domain, str):
        raise InvalidInput("--domain with --labels must be a box LOW,HIGH")
    summary = certify_dataset(graph, inputs, labels, parse_radii(args.radii), domain=domain,
                              upper=getattr(args, "upper", None), local=getattr(args, "local", False),
                              workers=args.workers, backend=args.backend, out=args.out, seed=getattr(args, "seed", 0),
                              time_budget=getattr(args, "time_budget", None), progress=progress_of(args),
                              address=args.address)
    if args.plot:
        summary.plot(args.plot)
    print(json.dumps(summary.to_dict(), indent=2) if getattr(args, "json", False) else summary.table())
    return 130 if summary.run is not None and summary.run.interrupted else 0
