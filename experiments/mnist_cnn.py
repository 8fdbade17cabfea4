"""(c) The paper's 4- and 5-layer MNIST CNNs (PAPER_NOTES §6c) with random weights.

4 layers (``lipbound.examples.paper_cnn.mnist4``): conv(1->32, k5, s2) -
ReLU - conv(32->64, k3, s2) - ReLU - conv(64->128, k3, s2) - ReLU - conv(128->10, k2).
5 layers: the same with conv(64->64, k3, s1, p1) - ReLU inserted after the second convolution.
Weights: PyTorch's default initialisation from fixed seeds (the paper's nets were trained on
MNIST; no data is downloaded here). The whole network is one SeqLip chain.

Columns: certified AutoLip and the paper's AutoLip estimate (power-method norms), SeqLip top-k
(k = 200 singular triplets per layer from the block power method, then the greedy: the paper's
MNIST setting), greedy SeqLip on the full spectra (dense SVDs of the materialised convolutions),
certified SeqLip (each pair exact, bounded within a time budget, or its AutoLip factor) and a
witnessed lower bound (Jacobian norms at random inputs of [-1, 1]^784, gradient ascent from the
best of them, which stalls on ReLU nets whose Jacobian is piecewise constant, and the package's
``lower`` method over R^n with a 30 s budget).

    .venv/bin/python experiments/mnist_cnn.py [--quick] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import time

import matplotlib
import torch
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from _common import RESULTS, ascent, jacobian_norms, machine, save, table  # noqa: E402

import lipbound  # noqa: E402
from lipbound.examples.paper_cnn import mnist4  # noqa: E402

PAPER = {4: (174, 86, 2.0, 25.5), 5: (790.1, 335, 2.4, 22.2)}


def mnist5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, stride=2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2), nn.ReLU(),
        nn.Conv2d(128, 10, 2), nn.Flatten(),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one seed, no full-spectrum greedy")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--topk", type=int, default=200)
    parser.add_argument("--budget", type=float, default=60.0, help="certified SeqLip: seconds per pair")
    args = parser.parse_args()
    seeds = range(1 if args.quick else args.seeds)
    t_start = time.perf_counter()
    rows, ratio_rows, pair_rows = [], [], []
    for name, layers, factory in (("mnist_4", 4, lambda: nn.Sequential(*mnist4())), ("mnist_5", 5, mnist5)):
        for seed in seeds:
            torch.manual_seed(seed)
            model = factory().eval()
            g = lipbound.as_graph(model, (1, 28, 28))
            t0 = time.perf_counter()
            auto = lipbound.autolip(g)
            power = lipbound.autolip(g, certified=False)
            topk = lipbound.seqlip(g, solver="topk", topk=args.topk)
            greedy = None if args.quick else lipbound.seqlip(g, solver="greedy")
            cert = lipbound.seqlip(g, pair_budget=args.budget, time_budget=10 * args.budget)
            gen = torch.Generator().manual_seed(seed)
            xs = 2 * torch.rand(512, 1, 28, 28, generator=gen, dtype=torch.float64) - 1
            jn = jacobian_norms(model, xs)
            lb_rand = jn.max().item()
            lb_ascent, _ = ascent(model, xs[torch.topk(jn, 8).indices], steps=60, lr=0.02, box=(-1.0, 1.0))
            try:  # the package's own witnessed lower bound (ascent on a smoothed net, region walk, pairs)
                lb_method = lipbound.estimate(g, methods=("lower",), progress=False, seed=seed,
                                              method_options={"lower": {"time_budget": 30.0}}).lower or 0.0
            except Exception as exc:  # noqa: BLE001 - another module, still optional here
                print(f"lower failed: {exc}")
                lb_method = 0.0
            lower = max(lb_rand, lb_ascent, lb_method)
            st = cert.details["pairs"]
            rows.append([name, seed, auto.value, power.value, topk.value, greedy.value if greedy else "-", cert.value,
                         f"{st['exact']}/{st['bounded']}/{st['fallback']}", lb_rand, lb_ascent, lb_method,
                         time.perf_counter() - t0])
            best_est = greedy.value if greedy else topk.value
            p = PAPER[layers]
            ratio_rows.append([name, seed, power.value / topk.value, power.value / best_est, auto.value / cert.value,
                               p[2], cert.value / lower, p[1] / p[3]])
            for res in [r for r in (topk, greedy, cert) if r is not None]:
                for i, pr in enumerate(res.details["chains"][0]["pairs"]):
                    pair_rows.append([name, seed, res.method, i + 1, pr["neurons"], pr["status"], pr["value"],
                                      pr["autolip_factor"], pr["autolip_factor"] / pr["value"], pr["seconds"]])
            print(table([], [rows[-1]]).splitlines()[-1], flush=True)
    headers = ["net", "seed", "AutoLip (certified)", "AutoLip (power)", f"SeqLip top-{args.topk}", "greedy SeqLip (full)",
               "SeqLip (certified)", "pairs exact/bounded/fallback", "LB random", "LB ascent", "LB `lower`", "seconds"]
    rheaders = ["net", "seed", "AutoLip(power) / top-k", "AutoLip(power) / greedy", "certified AutoLip / certified SeqLip",
                "paper AutoLip / greedy", "certified SeqLip / LB", "paper greedy / LB (annealing)"]
    pheaders = ["net", "seed", "method", "pair", "neurons", "status", "value", "AutoLip factor", "gain", "seconds"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r[0]} s{r[1]}" for r in rows]
    x = torch.arange(len(rows)).float()
    for k, (col, label) in enumerate(((2, "AutoLip (certified)"), (4, f"SeqLip top-{args.topk}"),
                                      (6, "SeqLip (certified)"), (10, "lower (`lower` method)"))):
        ax.bar(x + 0.2 * k - 0.3, [r[col] for r in rows], width=0.2, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.legend(fontsize=8)
    ax.set_title("MNIST CNNs with random weights")
    fig.tight_layout()
    png = RESULTS / "mnist_cnn.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    text = (f"# (c) MNIST CNNs (random weights)\n\n{machine()}; {time.perf_counter() - t_start:.0f} s in all; "
            f"certified SeqLip with {args.budget} s per pair.\n\n" + table(headers, rows)
            + "\n\n## Ratios (the paper's nets were trained)\n\n" + table(rheaders, ratio_rows)
            + "\n\n## Pairs\n\n" + table(pheaders, pair_rows) + "\n")
    print(f"wrote {save('mnist_cnn.md', text)} and {png}")


if __name__ == "__main__":
    main()
