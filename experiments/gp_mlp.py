"""(b) MLPs trained on a 2-D Gaussian-process sample (PAPER_NOTES §6b).

Data: one sample of a GP with kernel ``exp(-||x - y||^2 / 2)`` (sklearn's default prior
``1.0 * RBF(1.0)``) at 2000 training and 500 test inputs ``x = 2 N(0, I_2)`` (the reference
code's commented call), drawn with numpy: Cholesky of the kernel matrix. MLPs 2 -> [w] * (K - 1)
-> 1 with ReLU, K = 4, 5, 7, 10 layers, trained with MSE and Adam (lr 1e-3, batch 128). The
paper's widths are unknown; ``w = 16`` keeps exact SeqLip cheap (``2^16`` patterns per pair).

Columns: product of Frobenius norms, certified AutoLip, exact SeqLip (every pair solved exactly
by enumeration: certified), greedy SeqLip (the paper's estimate), and witnessed lower bounds:
the largest Jacobian norm over the training data, over random inputs of the data's box, on a
200 x 200 grid of that box, and after gradient ascent from the best of those points.

    .venv/bin/python experiments/gp_mlp.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import matplotlib
import numpy as np
import torch
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from _common import RESULTS, ascent, jacobian_norms, machine, save, table  # noqa: E402

import lipbound  # noqa: E402

PAPER = {4: (648.2, 33.04, 21.47, 21.47, 6.56), 5: (4283.1, 134.4, 72.87, 72.87, 7.1),
         7: (22341, 294.6, 130.2, 130.2, 6.51), 10: (7343800, 19248.2, 2463.44, 2463.36, 17.1)}


def gp_sample(n: int, scale: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, 2))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    K = np.exp(-d2 / 2) + 1e-8 * np.eye(n)
    y = np.linalg.cholesky(K) @ rng.standard_normal(n)
    return x, y


def mlp(depth: int, width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    dims = [2] + [width] * (depth - 1) + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = ((model(x[idx])[:, 0] - y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return ((model(x)[:, 0] - y) ** 2).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer epochs, depths 4 and 5 only")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    depths = (4, 5) if args.quick else (4, 5, 7, 10)
    epochs = 30 if args.quick else args.epochs
    t_start = time.perf_counter()
    xs, ys = gp_sample(2500)
    x, y = torch.tensor(xs[:2000], dtype=torch.float32), torch.tensor(ys[:2000], dtype=torch.float32)
    xt, yt = torch.tensor(xs[2000:], dtype=torch.float32), torch.tensor(ys[2000:], dtype=torch.float32)
    lo, hi = x.min(0).values.double(), x.max(0).values.double()
    rows, ratio_rows, plot = [], [], []
    for depth in depths:
        model = mlp(depth, args.width, seed=depth)
        t0 = time.perf_counter()
        mse = train(model, x, y, epochs, seed=depth)
        with torch.no_grad():
            test_mse = ((model(xt)[:, 0] - yt) ** 2).mean().item()
        t_train = time.perf_counter() - t0
        model = model.double().eval()
        g = lipbound.as_graph(model, (2,))
        frob = float(np.prod([m.weight.norm().item() for m in model if isinstance(m, nn.Linear)]))
        auto = lipbound.autolip(g)
        exact = lipbound.seqlip(g, enumerate_max=args.width)
        greedy = lipbound.seqlip(g, solver="greedy")
        assert exact.details["pairs"]["exact"] == depth - 1, exact.details["pairs"]
        gen = torch.Generator().manual_seed(0)
        lb_data = jacobian_norms(model, x.double()).max().item()
        rnd = lo + (hi - lo) * torch.rand(4000, 2, generator=gen, dtype=torch.float64)
        lb_rand = jacobian_norms(model, rnd).max().item()
        u, v = torch.meshgrid(torch.linspace(lo[0], hi[0], 200, dtype=torch.float64),
                              torch.linspace(lo[1], hi[1], 200, dtype=torch.float64), indexing="ij")
        grid = torch.stack([u.reshape(-1), v.reshape(-1)], 1)
        jg = jacobian_norms(model, grid)
        lb_grid = jg.max().item()
        starts = torch.cat([grid[torch.topk(jg, 16).indices], x.double()[:16]])
        lb_ascent, _ = ascent(model, starts, steps=100, lr=0.02, box=None)
        lower = max(lb_data, lb_rand, lb_grid, lb_ascent)
        t_all = time.perf_counter() - t0
        rows.append([depth, args.width, mse, test_mse, frob, auto.value, exact.value, greedy.value,
                     lb_data, lb_rand, lb_grid, lb_ascent, exact.seconds, t_all - t_train])
        p = PAPER[depth]
        ratio_rows.append([depth, auto.value / exact.value, p[1] / p[2], exact.value / greedy.value, p[2] / p[3],
                           exact.value / lower, p[2] / p[4]])
        plot.append((depth, frob, auto.value, exact.value, greedy.value, lower))
        print(table([], [rows[-1]]).splitlines()[-1], flush=True)
    headers = ["layers K", "width", "train MSE", "test MSE", "Frob.", "AutoLip", "SeqLip (exact)", "greedy SeqLip",
               "LB data", "LB random", "LB grid", "LB ascent", "SeqLip s", "bounds s"]
    rheaders = ["layers K", "AutoLip / SeqLip (ours)", "(paper)", "SeqLip / greedy (ours)", "(paper)",
                "SeqLip / best LB (ours)", "(paper, grid LB)"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sc = axes[0].scatter(xs[:2000, 0], xs[:2000, 1], c=ys[:2000], s=6, cmap="viridis")
    fig.colorbar(sc, ax=axes[0])
    axes[0].set_title("GP sample (training inputs, colour = target)")
    ks = [r[0] for r in plot]
    for k, (label, mk) in enumerate(zip(["Frobenius", "AutoLip", "SeqLip (exact)", "greedy SeqLip", "best lower"],
                                        ["v-", "o-", "s-", "x--", "^-"])):
        axes[1].semilogy(ks, [r[k + 1] for r in plot], mk, label=label)
    axes[1].set_xlabel("layers K")
    axes[1].set_title("bounds on the Lipschitz constant")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    png = RESULTS / "gp_mlp.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    text = (f"# (b) MLPs trained on a GP sample\n\n{machine()}; {epochs} epochs; {time.perf_counter() - t_start:.0f} s "
            "in all.\n\n" + table(headers, rows) + "\n\n## Ratios against the paper's table\n\n"
            + table(rheaders, ratio_rows) + "\n")
    print(f"wrote {save('gp_mlp.md', text)} and {png}")


if __name__ == "__main__":
    main()
