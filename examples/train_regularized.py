"""Train the same small CNN with and without the Lipschitz regulariser, then certify each.

Data: scikit-learn's 8x8 digits (shipped inside the package: no download; ``pip install
scikit-learn``, or ``pip install -e .[examples]``). For each regularisation strength ``lam`` the
loss is ``cross_entropy + lam * log L_AutoLip`` (``lipbound.regularizer``: persistent power
vectors, one power step per batch). After training, lipbound certifies each model from scratch:

* certified upper bound ``U`` (best of AutoLip and SeqLip when available) and witnessed lower bound;
* certified accuracy at L2 radius ``eps``: the share of test digits classified correctly whose
  certified radius ``margin / (sqrt(2) U)`` (``lipbound.certify``) is at least ``eps``.

Prints a table and saves a plot of accuracy against the certified bound.

    .venv/bin/python examples/train_regularized.py [--epochs 40] [--eps 0.1] [--out examples/results]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lipbound

STRENGTHS = (0.0, 0.01, 0.03, 0.1, 0.2)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels in [0, 1]
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def train(lam: float, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = cnn()
    reg = lipbound.regularizer(model, (1, 8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if lam:
                loss = loss + lam * reg()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eps", type=float, default=0.1, help="L2 radius for the certified accuracy")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    xtr, ytr, xte, yte = digits()
    uppers = [m for m in ("autolip", "seqlip") if m in lipbound.METHODS]
    rows = []
    for lam in STRENGTHS:
        t0 = time.perf_counter()
        model = train(lam, xtr, ytr, args.epochs)
        t_train = time.perf_counter() - t0
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        report = lipbound.estimate(model, (1, 8, 8), methods=(*uppers, "lower"), progress=False,
                                   method_options={"lower": {"data": xtr, "time_budget": 10.0}})
        cert = lipbound.certify(model, xte, upper=report.upper, labels=yte, radii=(args.eps,))
        certified = cert.certified_accuracy()[args.eps]
        rows.append((lam, acc, report.upper, report.lower, report.ratio, certified, t_train))
        print(f"lam={lam:<5} acc={acc:.3f} upper={report.upper:.4g} lower={report.lower:.4g} "
              f"certified@{args.eps}={certified:.3f} ({t_train:.0f} s training)", flush=True)

    lines = [f"| lambda | test accuracy | certified upper U | witnessed lower | ratio | certified acc. @ L2 {args.eps} "
             "| training s |", "|---|---|---|---|---|---|---|"]
    lines += ["| {} | {:.3f} | {:.4g} | {:.4g} | {:.3g} | {:.3f} | {:.0f} |".format(*r) for r in rows]
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_regularized.md").write_text(table + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx([r[2] for r in rows], [r[1] for r in rows], "o-", label="test accuracy")
    ax.semilogx([r[2] for r in rows], [r[5] for r in rows], "s--", label=f"certified accuracy (L2 radius {args.eps})")
    for r in rows:
        ax.annotate(f"λ={r[0]}", (r[2], r[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("certified Lipschitz upper bound U (log)")
    ax.set_ylabel("accuracy")
    ax.set_title("digits CNN: accuracy vs certified Lipschitz bound")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "train_regularized.png", dpi=120)
    print(f"plot: {args.out / 'train_regularized.png'}")


if __name__ == "__main__":
    main()
