"""What split-refined pre bounds buy on the deep MLPs (issue 10; ``localize(method="split-crown")``).

Per box: the fraction of unstable ReLUs per layer under CROWN and under the split-refined bounds
(:mod:`lipbound.methods.split_bounds`, ``--leaves`` leaves), the tree's size and seconds, and LipSDP
(certified) on the graph localized with each, ``--budget`` seconds each. Soundness check on the way:
the refined bounds lie inside CROWN's and contain the pre-activations at ``SAMPLES`` uniform points of
the box (an assertion). Boxes: the five ERAN 9x200 ones, the first four mnistfc 256x6 at eps 0.03 and
two mnistfc 256x2 at eps 0.03 (it must not get worse there).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/split_bounds.py [--budget 120] [--leaves 128] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import lipbound
from lipbound.graph.ir import Activation, Graph
from lipbound.methods.propagation import crown_bounds, region_box
from lipbound.methods.region import Box
from lipbound.methods.split_bounds import SplitOptions, split_crown_bounds

from preactivation_gap import _inputs_of
from propagation import REALNETS, input_box, unstable

CASES = [  # (network file, its VNN-LIB files)
    ("eran_mnist_relu_9x200.onnx", [f"eran_9x200_mnist_spec_idx_{i}_eps_0.01500.vnnlib" for i in (225, 2697, 2954, 4424, 8098)]),
    ("mnistfc_256x6.onnx", [f"mnistfc_prop_{i}_0.03.vnnlib" for i in range(4)]),
    ("mnistfc_256x2.onnx", [f"mnistfc_prop_{i}_0.03.vnnlib" for i in range(2)]),
]
SAMPLES = 2000


def _check(graph: Graph, box: Box, crown: dict, refined: dict, gen: torch.Generator) -> None:
    """Refined bounds inside CROWN's, and around the pre-activations at uniform samples of the box."""
    g64 = graph.to(dtype=torch.float64)
    names = [n.name for n in g64 if isinstance(n, Activation)]
    x = box.low + (box.high - box.low) * torch.rand(SAMPLES, *box.low.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        seen = _inputs_of(g64, x, names)
    for k in names:
        (l, u), (cl, cu) = refined[k], crown[k]
        assert bool((cl <= l).all() and (u <= cu).all()), k
        z = seen[k]
        assert bool((l.flatten() <= z.min(0).values).all() and (z.max(0).values <= u.flatten()).all()), k


def _lipsdp(graph: Graph, box: Box, pre: dict, budget: float) -> tuple[float, float]:
    t = time.perf_counter()
    value = lipbound.estimate(graph.localized(box, pre), methods=["lipsdp"], time_budget=budget, seed=0).upper
    return value, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="time budget of each LipSDP call (s)")
    parser.add_argument("--leaves", type=int, default=SplitOptions().max_leaves, help="leaves of the split tree")
    parser.add_argument("--only", nargs="*", default=None, help="networks whose file name contains one of these")
    args = parser.parse_args()
    if not REALNETS.is_dir():
        print(f"{REALNETS} is absent: nothing to do")
        return
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    fmt = lambda fs: " ".join(f"{f:.2f}" for f in fs)  # noqa: E731
    print("| network | property | unstable per layer, CROWN | same, split-refined | leaves / nodes / empty, stopped_by "
          "| CROWN s | split s | LipSDP, CROWN bounds | LipSDP, split-refined | LipSDP s (CROWN / split) |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---|")
    for net, props in CASES:
        if args.only and not any(o in net for o in args.only):
            continue
        graph = lipbound.load(REALNETS / net)
        g64 = graph.to(dtype=torch.float64)
        for prop in props:
            box = input_box(REALNETS / "vnnlib" / prop, tuple(graph.input_shape))
            t0 = time.perf_counter()
            crown = crown_bounds(g64, box)
            t1 = time.perf_counter()
            low, high = region_box(box, g64)
            refined, out = split_crown_bounds(g64, low, high, crown, options=SplitOptions(max_leaves=args.leaves))
            t2 = time.perf_counter()
            _check(graph, box, crown, refined, gen)
            (before, s0), (after, s1) = _lipsdp(graph, box, crown, args.budget), _lipsdp(graph, box, refined, args.budget)
            print(f"| {net} | {prop} | {fmt(unstable(graph, crown))} | {fmt(unstable(graph, refined))} | "
                  f"{len(out.tree.leaves)} / {out.tree.nodes} / {out.tree.empty}, {out.tree.stopped_by} | {t1 - t0:.1f} | {t2 - t1:.1f} | "
                  f"{before:.4g} | {after:.4g} | {s0:.0f} / {s1:.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
