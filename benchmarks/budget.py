"""Does ``lipbound estimate MODEL --method all --time-budget 20`` keep its budget? (issue 11)

Runs the CLI in a subprocess on three models and prints, for each, the wall time of the whole
command and each method's time, share of the budget (``options.time_budget``) and value:

* the paper's random-weight CNN (:mod:`lipbound.examples.paper_cnn`);
* :func:`mnist_cnn`: a 3-conv MNIST CNN with BatchNorm and max pooling, random weights, input
  ``1 x 28 x 28``, saved as a state dict in a temporary file and loaded through ``--factory``;
* ``oval21_cifar_base_kw.onnx`` from ``../shared/realnets`` (skipped when absent).

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/budget.py [--budget 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
REALNETS = ROOT.parent / "shared" / "realnets"
CLI = "import sys; from lipbound.cli import main; sys.exit(main())"


def mnist_cnn() -> tuple[nn.Module, tuple[int, ...]]:
    """Three conv-BatchNorm-ReLU blocks, two max pools, a linear head: ``(module, input shape)``."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    for m in model:
        if isinstance(m, nn.BatchNorm2d):  # statistics as after training, not the identity
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval(), (1, 28, 28)


def run(label: str, args: list[str], budget: float) -> dict:
    """One CLI run: wall seconds, exit code and each method's (time, share, kind, value)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI, "estimate", *args, "--method", "all", "--time-budget",
                           str(budget), "--json", "--quiet"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    row = {"model": label, "wall_s": wall, "rc": proc.returncode, "methods": []}
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
        return row
    for r in json.loads(proc.stdout)["results"]:
        options = r.get("options") or {}
        row["methods"].append({"name": r["method"], "time_s": r["seconds"], "share_s": options.get("time_budget"),
                               "kind": r["kind"], "value": r["value"]})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0)
    budget = parser.parse_args().budget
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "mnist_cnn.pt"
        torch.save(mnist_cnn()[0].state_dict(), weights)
        runs = [("paper CNN (random weights)", [f"{ROOT / 'src/lipbound/examples/paper_cnn.py'}:random_mnist4", "--input-shape", "1,28,28"]),
                ("3-conv MNIST CNN (BN, max-pool)", [str(weights), "--factory", f"{Path(__file__).resolve()}:mnist_cnn"])]
        oval = REALNETS / "oval21_cifar_base_kw.onnx"
        if oval.is_file():
            runs.append(("oval21_cifar_base_kw.onnx", [str(oval)]))
        for label, args in runs:
            row = run(label, args, budget)
            print(f"## {label}: wall {row['wall_s']:.1f} s (budget {budget:g} s), exit {row['rc']} {row.get('error', '')}")
            for m in row["methods"]:
                share = "-" if m["share_s"] is None else f"{m['share_s']:.1f}"
                time_s = "-" if m["time_s"] is None else f"{m['time_s']:.2f}"
                print(f"  {m['name']:<16} {time_s:>7} s  share {share:>6} s  {m['kind']:<16} {m['value']}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
