"""Witnessed lower bound ``lower`` on CNNs within its time budget (issue 13, items 3-4).

For each network: the value of ``lower`` (a witnessed lower bound, L2 -> L2), the wall time of the
call against its ``time_budget``, the ascent steps completed and the witness form. Networks: the
random-weight paper CNN (:mod:`lipbound.examples.paper_cnn`), and from ``../shared/realnets`` (skipped when
absent) ``oval21_cifar_base_kw.onnx``, ``cifar10_resnet_2b.onnx`` and ``glipsdp_LeNet5ReLU.pt``
(GLipSDP's published sampled lower bound for it: 9.519).

To compare with another version of the code, run this file with ``PYTHONPATH`` pointing at that
version's ``src`` (the table names the imported package's folder).

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/cnn_lower.py [--budget 10] [--lenet-budget 30]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

import lipbound
from lipbound.examples.paper_cnn import random_mnist4
from lipbound.methods.lower import lower

ROOT = Path(__file__).resolve().parents[1]
REALNETS = ROOT.parent / "shared" / "realnets"


def _realnet(name: str) -> lipbound.Graph:
    spec = importlib.util.spec_from_file_location("lipbound_examples_realnets", ROOT / "examples" / "realnets.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    return ex.load_realnet(REALNETS / name)


def networks(budget: float, lenet_budget: float) -> list[tuple[str, float, object]]:
    """``(name, budget, graph loader)`` for each network that is present."""
    nets = [("paper CNN (random weights)", budget, lambda: lipbound.as_graph(random_mnist4(), (1, 28, 28)))]
    for name, b in (("oval21_cifar_base_kw.onnx", budget), ("cifar10_resnet_2b.onnx", budget),
                    ("glipsdp_LeNet5ReLU.pt", lenet_budget)):
        if (REALNETS / name).is_file():
            nets.append((name, b, lambda n=name: _realnet(n)))
    return nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--lenet-budget", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"lipbound from {Path(lipbound.__file__).parent}")
    print("| network | budget s | wall s | lower | ascent steps | form |")
    print("|---|---|---|---|---|---|")
    for name, budget, load in networks(args.budget, args.lenet_budget):
        graph = load()
        t0 = time.perf_counter()
        res = lower(graph, time_budget=budget, seed=args.seed)
        wall = time.perf_counter() - t0
        d = res.details
        print(f"| {name} | {budget:g} | {wall:.1f} | {res.value:.4g} | {d.get('steps_done')} | {d.get('form')} |",
              flush=True)


if __name__ == "__main__":
    main()
