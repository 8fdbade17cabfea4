"""The bracket [witnessed lower, certified upper] on real MLPs and random ReLU nets.

Real networks: the MLPs of ../shared/realnets that the torch frontend loads (skipped when absent),
with the sampled lower bound of the manifest (MANIFEST.md, "LB (sampled)"; published numbers for
FC-R18) to beat. For each: our ``lower`` (global, all of R^n, and on the box [0, 1]^n of the
images), the certified upper bounds of the cheap methods that apply, ``exact`` when the net has at
most 64 ReLUs, and the ratio of the best upper to the best lower bound.

Random nets: small ReLU MLPs with 20 to 48 ReLUs and low input dimension, where ``exact`` should
finish (kind ``exact``) within its 60 s budget.

    .venv/bin/python benchmarks/bracket.py [--quick]      # writes benchmarks/results/bracket.md
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import lipbound  # noqa: E402
from lipbound.methods import METHODS  # noqa: E402
from lipbound.methods.piecewise import count_two_slope_neurons  # noqa: E402
from realnets import REALNETS, glipsdp_fc_r18, lipsdp_mat, sequential_mlp_pth  # noqa: E402

UPPER = [m for m in ("autolip", "seqlip", "eclipse-fast") if m in METHODS]
REAL = [  # file, loader, manifest's sampled lower bound
    ("lipsdp_random_weights.mat", lipsdp_mat, 36.482),
    ("lipsdp_mnist_weights.mat", lipsdp_mat, 24.0265),
    ("lirpa_mnist_spectral_nor_mlp_b.pth", sequential_mlp_pth, 0.7941),
    ("abcrown_eran_mnist_6x100_nat.pth", sequential_mlp_pth, 41.048),
    ("glipsdp_FC-R18.pt", glipsdp_fc_r18, 12.514),
]
RANDOM = [(2, 10, 10, 1), (2, 20, 20, 1), (2, 20, 20, 2), (3, 12, 12, 12, 2), (4, 10, 10, 3), (2, 16, 16, 16, 1)]


def random_mlp(arch: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(arch) - 1):
        layers.append(nn.Linear(arch[i], arch[i + 1]))
        if i < len(arch) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _run(graph, method: str, **options):
    t0 = time.perf_counter()
    try:
        res = METHODS[method](graph, seed=0, **options)
    except (lipbound.NotApplicable, lipbound.UnsupportedOperation) as exc:
        return None, str(exc), time.perf_counter() - t0
    return res, None, time.perf_counter() - t0


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.5g}"


def bracket_row(name: str, graph, target: float | None, budget: float, box: bool) -> tuple[str, dict]:
    n_relu = count_two_slope_neurons(graph)
    cells = {}
    lo, _, t_lo = _run(graph, "lower", time_budget=budget, rounds=1000)
    cells["lower"] = (lo.value, t_lo)
    if box:
        lob, _, t_lob = _run(graph, "lower", time_budget=budget, rounds=1000, domain=(0.0, 1.0))
        cells["lower [0,1]"] = (lob.value, t_lob)
    uppers = {}
    for m in UPPER:
        res, why, t = _run(graph, m)
        uppers[m] = (None if res is None or res.kind not in ("certified_upper", "exact") else res.value, t)
    ex_kind = "-"
    best_lo = cells["lower"][0]
    if n_relu is not None and n_relu <= 64:
        ex, _, t_ex = _run(graph, "exact", time_budget=60.0)
        if ex is not None:
            uppers["exact"] = (ex.value, t_ex)
            ex_kind = ex.kind
            best_lo = max(best_lo, ex.details.get("lower") or 0.0)
    best_up = min((v for v, _ in uppers.values() if v is not None), default=math.inf)
    row = {"net": name, "relus": n_relu, "target": target, "lower": cells, "upper": uppers, "exact_kind": ex_kind,
           "ratio": best_up / best_lo if best_lo > 0 else math.inf,
           "beats": None if target is None else lo.value >= target}
    return name, row


def render(rows: list[dict], title: str) -> list[str]:
    up_names = UPPER + ["exact"]
    has_box = any("lower [0,1]" in r["lower"] for r in rows)
    head = ["net", "ReLUs", "manifest LB", "lower (s)"] + (["lower [0,1] (s)"] if has_box else []) + \
        [f"{m} (s)" for m in up_names] + ["exact kind", "ratio"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lv, lt = r["lower"]["lower"]
        cells = [r["net"], "-" if r["relus"] is None else str(r["relus"]), _fmt(r["target"]), f"{_fmt(lv)} ({lt:.1f})"]
        if has_box:
            v = r["lower"].get("lower [0,1]")
            cells.append("-" if v is None else f"{_fmt(v[0])} ({v[1]:.1f})")
        for m in up_names:
            v = r["upper"].get(m)
            cells.append("-" if v is None or v[0] is None else f"{_fmt(v[0])} ({v[1]:.1f})")
        cells += [r["exact_kind"], _fmt(r["ratio"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 s budgets, no random nets")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one thread is faster than two contended ones
    budget = 10.0 if args.quick else 50.0
    real_rows, rand_rows = [], []
    for file, loader, target in REAL:
        if not (REALNETS / file).is_file():
            continue
        model, shape = loader(REALNETS / file)
        _, row = bracket_row(file, lipbound.as_graph(model, shape), target, budget, box=len(shape) == 3)
        real_rows.append(row)
        print(render([row], file)[-1], flush=True)
    if not args.quick:
        for i, arch in enumerate(RANDOM):
            name = "random " + "-".join(map(str, arch))
            _, row = bracket_row(name, lipbound.as_graph(random_mlp(arch, i), (arch[0],)), None, 10.0, box=False)
            rand_rows.append(row)
            print(render([row], name)[-1], flush=True)
    out = ["# Bracket benchmark", "",
           f"Generated by `benchmarks/bracket.py{' --quick' if args.quick else ''}` on a shared, loaded 2-core CPU "
           f"machine (one torch thread); timings are indicative only. `lower` budget {budget:.0f} s "
           "(10 s on the random nets; repeated rounds of fresh starts until the budget is used; the float64 "
           "refinement may add up to 10%), `exact` budget 60 s. Values: Lipschitz constant L2 -> L2; "
           "`lower` is the `lower` method's witnessed lower bound, the other columns certified upper "
           "bounds (or exact), ratio = best upper / best lower over all methods (exact's lower included).", ""]
    out += render(real_rows, "Real networks (../shared/realnets)") + [""]
    if real_rows:
        beaten = sum(bool(r["beats"]) for r in real_rows)
        out += [f"Our global lower bound >= the manifest's sampled lower bound on {beaten}/{len(real_rows)} nets.", ""]
    if rand_rows:
        out += render(rand_rows, "Random ReLU MLPs (exact within 60 s?)") + [""]
    text = "\n".join(out)
    print(text)
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "bracket.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
