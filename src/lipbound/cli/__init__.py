"""Command line: ``lipbound estimate | certify | demo | methods | run-instances``, one module per
subcommand.

Bad input (missing file, bad shape, unsupported layer, NaN weights, failing factory) exits with
status 2 and one line on stderr; an internal error exits with status 1 and one line (set
``LIPBOUND_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import LipboundError
from . import certify, demo, estimate, methods, run_instances

SUBCOMMANDS = (estimate, certify, demo, methods, run_instances)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipbound", description="Bracket the Lipschitz constant (L2 -> L2) "
                                     "of a neural network between a certified upper and a witnessed lower bound.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (LipboundError, ValueError, OSError, MemoryError) as exc:
        _fail(exc)
        return 2
    except KeyboardInterrupt:
        print("lipbound: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, unless debugging
        if os.environ.get("LIPBOUND_DEBUG"):
            raise
        print(f"lipbound: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _fail(exc: BaseException) -> None:
    if os.environ.get("LIPBOUND_DEBUG"):
        raise exc
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"lipbound: error: {msg}", file=sys.stderr)
