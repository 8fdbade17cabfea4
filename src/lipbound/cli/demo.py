"""``lipbound demo``: the default method set on the bundled trained network, a certificate on its
test split, and a picture.

The network is :func:`lipbound.examples.demo_net.demo_net`, a small CNN trained on 8 x 8 digits
(input shape ``(1, 8, 8)``). The demo prints the report of :func:`lipbound.estimate` with the
default method set (its bracket: a witnessed lower and a certified upper bound of the L2 -> L2
constant), then the **certified robust accuracy** at the L2 radius ``--radius``: the share of the
shipped test images that are classified correctly *and* whose certified radius (:func:`lipbound.certify`
with the report's certified upper bound ``U`` and the certified constants ``L_yj`` of the logit
differences: ``max(min_j (f_y - f_j) / L_yj, margin / (sqrt(2) U))``) exceeds the radius, so that no perturbation of L2 norm <= radius changes their class. It writes the
report's plot (:meth:`lipbound.Report.plot`) to ``--plot`` and names the file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path


from .. import api
from ..certify import certify
from ..margins import margin_constants
from ..errors import InvalidInput
from ..examples.demo_net import INPUT_SHAPE, demo_net, load_test_split
from .common import progress_of

# the demo network as a model spec, for scripts and tests that load it like a user's model
DEMO_SPEC = f"{Path(__file__).parents[1] / 'examples' / 'demo_net.py'}:demo_net"
DEMO_SHAPE = ",".join(map(str, INPUT_SHAPE))
DEMO_RADIUS = 0.1  # L2, on pixels in [0, 1] (an 8 x 8 image has norm about 4)
DEMO_BUDGET = 30.0  # seconds: an outer cap; the default set stops on its work caps well before it (same numbers every run)
DEMO_PAIR_BUDGET = 10.0  # seconds for the 45 logit-pair constants (the methods that fit each pair's share)
DEMO_PLOT = "lipbound_demo.png"


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="bound the bundled trained digits CNN, certify its test split, plot")
    demo.add_argument("--radius", type=float, default=DEMO_RADIUS,
                      help=f"L2 radius of the certified robust accuracy (default {DEMO_RADIUS})")
    demo.add_argument("--plot", default=DEMO_PLOT, metavar="OUT.png",
                      help=f"where to draw the bracket and the layer norms (default {DEMO_PLOT})")
    demo.add_argument("--time-budget", type=float, default=DEMO_BUDGET, metavar="SECONDS",
                      help=f"cap on the seconds of the methods (default {DEMO_BUDGET:g})")
    demo.add_argument("--json", action="store_true", help="print the report and the certificate as JSON")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    demo.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.radius) and args.radius > 0):
        raise InvalidInput(f"--radius must be a positive number, got {args.radius}")
    graph = api.as_graph(demo_net(), INPUT_SHAPE)
    report = api.estimate(graph, seed=args.seed, progress=progress_of(args), time_budget=args.time_budget)
    images, labels = load_test_split()
    pairs = margin_constants(graph, seed=args.seed, time_budget=DEMO_PAIR_BUDGET)
    cert = certify(graph, images, report.upper, labels=labels, radii=(args.radius,), pair_constants=pairs,
                   seed=args.seed)
    accuracy, robust = cert.clean_accuracy, cert.certified_accuracy()[args.radius]
    plotted = importlib.util.find_spec("matplotlib") is not None
    if plotted:
        report.plot(args.plot)
    if args.json:
        print(json.dumps({**report.to_dict(), "test_images": len(labels), "accuracy": accuracy,
                          "radius": args.radius, "certified_accuracy": robust,
                          "plot": args.plot if plotted else None}, indent=2))
        return 0
    print(f"demo network: a CNN trained on 8x8 handwritten digits (lipbound.examples.demo_net), "
          f"input shape {report.input_shape}")
    print(report.table())
    print(f"test split: {len(labels)} held-out images, accuracy {accuracy:.1%}")
    print(f"certified robust accuracy at L2 radius {args.radius:g} (pixels in [0, 1]): {robust:.1%} "
          f"(correct, and no L2 perturbation below the radius changes the class: logit-pair constants, "
          f"and U = {report.upper:.6g})")
    print(f"plot: {args.plot}" if plotted else "plot: not drawn (it needs matplotlib: pip install 'lipbound[plot]')")
    return 0
