"""``lipbound demo``: the default job on the bundled example network."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_run_options
from .estimate import run

DEMO_SPEC = f"{Path(__file__).parents[1] / 'examples' / 'demo_net.py'}:demo_cnn"
DEMO_SHAPE = "1,28,28"
DEMO_METHODS = ["autolip", "autolip-power", "seqlip", "lower"]
DEMO_BUDGET = 5.0


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run on the bundled example network")
    add_run_options(demo)
    demo.set_defaults(func=lambda args: run(args, DEMO_SPEC, DEMO_SHAPE, None, DEMO_METHODS, DEMO_BUDGET))
