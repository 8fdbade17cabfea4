"""Fit the constants of the cost model (lipbound.methods.cost.CONSTANTS) on this machine.

Each method runs once on random ReLU MLPs and small CNNs of several sizes, with the settings its
model predicts (LipSDP: ``SDP_USEFUL_ITERATIONS`` L-BFGS iterations; SeqLip: a short pair budget;
``lower``: the first ascent step of its default starts), on one CPU thread. For each constant the fit is the
sum over the nets of (measured seconds - what the model's other terms predict) over the sum of the
work (so the large nets, where the prediction matters, weigh most), the work counted by
``lipbound.methods.cost.work``; the script prints the fitted constants, then predicted against
measured seconds with the constants in the package, so that a drift shows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cost_model.py [--quick]

Timings on a shared machine are noisy, and the default set only needs the
order of magnitude (a method is kept when its predicted time fits the budget).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import lipbound
from lipbound.methods import METHODS
from lipbound.methods.cost import CONSTANTS, SDP_USEFUL_ITERATIONS, graph_sizes, work

#: method -> (constant it calibrates, options that give the predicted run)
RUNS = {
    "autolip": ("autolip", {}),
    "seqlip": ("seqlip", {"pair_budget": 0.05}),
    "eclipse-fast": ("eclipse", {}),
    "lipsdp": ("lipsdp", {"lbfgs_iter": SDP_USEFUL_ITERATIONS, "solver": "first-order"}),
    "lower": ("lower", {"time_budget": 300.0, "steps": 1, "walk_rounds": 0, "pairs": False}),  # its first step
}


def mlp(n_in: int, width: int, depth: int, seed: int) -> lipbound.Graph:
    torch.manual_seed(seed)
    dims = [n_in] + [width] * depth
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return lipbound.as_graph(nn.Sequential(*layers, nn.Linear(width, 10)).eval(), (n_in,))


def cnn(channels: int, size: int, seed: int) -> lipbound.Graph:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, stride=2),
                          nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 1, size, size))
    return lipbound.as_graph(model.eval(), (1, size, size))


def nets(quick: bool) -> list[tuple[str, lipbound.Graph]]:
    shapes = [(64, 32, 2), (64, 64, 4), (784, 64, 2), (784, 128, 4), (784, 32, 8)]
    if not quick:
        shapes += [(784, 256, 2), (784, 128, 8)]
    out = [(f"mlp {i}-{w}x{d}", mlp(i, w, d, k)) for k, (i, w, d) in enumerate(shapes)]
    out += [(f"cnn {c}ch {s}x{s}", cnn(c, s, 9)) for c, s in ([(4, 8)] if quick else [(4, 8), (8, 12)])]
    return out


def measure(graph, method: str, options: dict) -> float | None:
    t0 = time.perf_counter()
    try:
        lipbound.estimate(graph, methods=[method], progress=False, method_options={method: options})
    except (lipbound.errors.NotApplicable, lipbound.errors.UnsupportedOperation):
        return None
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller nets")
    args = parser.parse_args()
    explained: dict[str, list[tuple[float, float]]] = {key: [] for key, _ in RUNS.values()}
    for name, graph in nets(args.quick):
        sizes = graph_sizes(graph)
        w = work(sizes)
        for method, (key, options) in RUNS.items():
            seconds = measure(graph, method, options)
            if seconds is None:
                continue
            predicted = METHODS[method].predicted_seconds(sizes)
            print(f"{name:22s} {method:13s} measured {seconds:8.3f} s  predicted {predicted:8.3f} s", flush=True)
            if w[key] > 0:  # the seconds the other terms of its model do not explain, per unit of this one
                rest = predicted - CONSTANTS[key] * w[key]
                explained[key].append((max(seconds - rest, 0.0), w[key]))
    print("\nfitted constants (total seconds / total work: the large nets weigh most; the package has):")
    for key, pairs in explained.items():
        if pairs:
            fit = sum(t for t, _ in pairs) / sum(w for _, w in pairs)
            print(f"    {key!r}: {fit:.2g},   # package {CONSTANTS[key]:.2g}, from {len(pairs)} nets")


if __name__ == "__main__":
    main()
