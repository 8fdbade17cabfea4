"""Bound propagation on real networks: IBP, CROWN and alpha-CROWN on VNN-LIB input boxes.

For each network of ../shared/realnets with its VNN-LIB properties (skipped when absent): the
fraction of unstable ReLUs (``l < 0 < u``) per activation layer under IBP, CROWN and alpha-CROWN
(``localize``'s default; ``--budget`` caps it as the API's localize share does), the mean width
of the last activation layer's input bounds, and the seconds of each. Fewer unstable neurons mean
tighter local slope intervals. The seconds are noisy when the machine's cores are shared.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/propagation.py [--props 1] [--budget 120] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

import lipbound
from lipbound.graph.ir import Activation, Graph
from lipbound.methods.propagation import alpha_crown_bounds, crown_bounds, interval_bounds
from lipbound.methods.region import Box

REALNETS = Path(__file__).resolve().parents[2] / "shared" / "realnets"
CASES = [  # (network file, glob of its VNN-LIB properties)
    ("acasxu_1_1.onnx", "acasxu_prop_*.vnnlib"),
    ("mnistfc_256x2.onnx", "mnistfc_prop_*.vnnlib"),
    ("mnistfc_256x6.onnx", "mnistfc_prop_*.vnnlib"),
    ("eran_mnist_relu_9x200.onnx", "eran_9x200_*.vnnlib"),
    ("cifar10_resnet_2b.onnx", "cifar10_resnet2b_prop_*.vnnlib"),
    ("eran_mnist_sigmoid_6x200.onnx", "eran_9x200_*.vnnlib"),  # smooth: no unstable count, see the widths
]
_BOUND = re.compile(r"\(assert\s+\((<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\)\)")


def input_box(path: Path, shape: tuple[int, ...]) -> Box:
    """The input box of a VNN-LIB file: through lipbound's parser when it is there and reads it
    (its API is being written in parallel), else from the ``(assert (<= X_i v))`` / ``(>= X_i v)`` lines."""
    try:
        from lipbound.frontends.vnnlib import load_vnnlib
        spec = load_vnnlib(path)
        region = getattr(spec, "region", spec)
        return Box(region.low.reshape(shape).double(), region.high.reshape(shape).double())
    except (ImportError, TypeError, AttributeError, ValueError):
        pass
    n = 1
    for s in shape:
        n *= s
    low, high = torch.full((n,), -float("inf"), dtype=torch.float64), torch.full((n,), float("inf"), dtype=torch.float64)
    for op, i, v in _BOUND.findall(path.read_text()):
        if op == "<=":
            high[int(i)] = min(float(high[int(i)]), float(v))
        else:
            low[int(i)] = max(float(low[int(i)]), float(v))
    return Box(low.reshape(shape), high.reshape(shape))


def unstable(graph, pre: dict) -> list[float]:
    """Per ReLU-family layer, the fraction of neurons with a breakpoint strictly inside ``(l, u)``."""
    out = []
    for node in graph:
        if isinstance(node, Activation) and node.pieces is not None and node.name in pre:
            l, u = pre[node.name]
            mask = torch.zeros_like(l, dtype=torch.bool)
            for b in node.pieces.breakpoints:
                mask |= (l < b) & (b < u)
            out.append(float(mask.double().mean()))
    return out


def arguments(doc: str, budget: float, budget_help: str) -> argparse.Namespace | None:
    """The command line shared by the scripts over ``CASES``-like lists (``--props``, ``--budget``,
    ``--only``), or None when ../shared/realnets is absent (said on stdout); one torch thread."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--props", type=int, default=1, help="properties per network")
    parser.add_argument("--budget", type=float, default=budget, help=budget_help)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    if not REALNETS.is_dir():
        print(f"{REALNETS} is absent: nothing to do")
        return None
    torch.set_num_threads(1)
    return args


def boxes(cases: list[tuple[str, str]], args: argparse.Namespace) -> Iterator[tuple[str, Graph, Path, Box]]:
    """Each network of ``cases`` (``(file, glob of its VNN-LIB files)``, filtered by ``--only``), loaded,
    with its first ``--props`` properties and their input boxes."""
    for net, pattern in cases:
        if args.only and not any(o in net for o in args.only):
            continue
        graph = lipbound.load(REALNETS / net)
        for prop in sorted((REALNETS / "vnnlib").glob(pattern))[: args.props]:
            yield net, graph, prop, input_box(prop, tuple(graph.input_shape))


def main() -> None:
    args = arguments(__doc__, 15.0, "time budget of each CROWN / alpha-CROWN call (s)")
    if args is None:
        return
    print("| network | property | unstable ReLUs per layer, IBP | same, CROWN | same, alpha-CROWN "
          "| last layer's mean width, IBP -> CROWN -> alpha-CROWN | IBP s | CROWN s | alpha-CROWN s |")
    print("|---|---|---|---|---|---|---:|---:|---:|")
    for net, graph, prop, box in boxes(CASES, args):
        t0 = time.perf_counter()
        ibp = interval_bounds(graph, box)
        t1 = time.perf_counter()
        crown = crown_bounds(graph, box, time_budget=args.budget)
        t2 = time.perf_counter()
        alpha = alpha_crown_bounds(graph, box, time_budget=args.budget)
        t3 = time.perf_counter()
        fmt = lambda fs: " ".join(f"{f:.2f}" for f in fs)  # noqa: E731
        last = list(ibp)[-1]
        width = lambda pre: float((pre[last][1] - pre[last][0]).mean())  # noqa: E731
        print(f"| {net} | {prop.name} | {fmt(unstable(graph, ibp))} | {fmt(unstable(graph, crown))} | "
              f"{fmt(unstable(graph, alpha))} | {width(ibp):.4g} -> {width(crown):.4g} -> {width(alpha):.4g} | "
              f"{t1 - t0:.2f} | {t2 - t1:.2f} | {t3 - t2:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
