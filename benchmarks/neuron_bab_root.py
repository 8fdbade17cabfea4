"""neuron-bab from the refined root on deep ReLU MLPs (benchmarks/results/local.md, "Session 10").

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/neuron_bab_root.py [--budget 60] [--configs a,b]

Rows: ERAN 9x200 on its 5 ``eran_9x200_*`` boxes and mnistfc 256x6 on ``mnistfc_prop_{0..3}_0.03``.
Configurations, each box in its own process (``OMP_NUM_THREADS=1``), ``--budget`` seconds each:

* ``default``: ``lipbound.estimate(graph, domain=box)`` (the default set, the API's "auto" localization);
* ``nb``: ``estimate(..., methods=["neuron-bab", "lower"])``: neuron-bab's root keeps the bounds of
  the API's localization (CROWN refined by the split tree);
* ``nb-before``: the same with the carried bounds hidden from neuron-bab (its root: plain CROWN, as
  before this session);
* ``direct-crown`` / ``direct-auto``: ``neuron_bab(graph, domain=box, root_bounds=...)`` on the
  unlocalized graph (the choice of ``root_bounds``' default).

Soundness: the upper bound is checked against Jacobian norms sampled in the box and pair quotients
(:func:`local.soundness`, independent of lipbound's methods). Prints one JSON line per row and a
markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ROWS = ([("eran_mnist_relu_9x200", p.stem) for p in sorted((HERE.parent.parent / "shared" / "realnets" / "vnnlib")
                                                            .glob("eran_9x200_*.vnnlib"))]
        + [("mnistfc_256x6", f"mnistfc_prop_{i}_0.03") for i in range(4)])
CONFIGS = ("default", "nb-before", "nb", "direct-crown", "direct-auto")


def run_row(net: str, prop: str, config: str, budget: float, samples: int) -> dict:
    """One configuration on one box, in this process."""
    import lipbound
    import lipbound.methods.carried_bounds as carried
    import lipbound.methods.neuron_bab as nb
    from local import REALNETS, region_of, soundness

    graph = lipbound.load(REALNETS / f"{net}.onnx")
    box = region_of(lipbound, graph, [prop])
    t0 = time.perf_counter()
    if config.startswith("direct-"):
        res = nb.neuron_bab(graph, domain=box, time_budget=budget, root_bounds=config.removeprefix("direct-"))
        lower, upper, witnesses = res.details["lower"], res.details["upper"], [("neuron-bab", res.witness)]
        details = res.details
    else:
        if config == "nb-before":  # neuron-bab sees no carried bounds: its root is plain CROWN, as before
            nb.carried_bounds = carried.carried_bounds = lambda graph, box: {}
        methods = None if config == "default" else ["neuron-bab", "lower"]
        report = lipbound.estimate(graph, methods=methods, domain=box, time_budget=budget, seed=0)
        lower, upper = report.lower, report.upper
        witnesses = [(r.method, r.witness) for r in report.results if r.witness is not None]
        details = next((r.details for r in report.results if r.method == "neuron-bab"), {})
    seconds = time.perf_counter() - t0
    out = {"net": net, "prop": prop, "config": config, "lower": lower, "upper": upper,
           "ratio": upper / lower if lower else None, "seconds": seconds,
           **{k: details.get(k) for k in ("unstable_neurons", "root_upper", "root_bounds", "stopped_by",
                                           "search_nodes") if k in details}}
    out.update(soundness(graph, box, upper, [w for w in witnesses if w[1] is not None], samples))
    return out


def table(rows: list[dict], configs: list[str]) -> list[str]:
    lines = ["| net | box | " + " | ".join(f"{c} lower / upper (ratio)" for c in configs) + " |",
             "|---|---|" + "---|" * len(configs)]
    by = {(r["net"], r["prop"], r["config"]): r for r in rows}
    for net, prop in ROWS:
        cells = []
        for c in configs:
            r = by.get((net, prop, c))
            if r is None or "crash" in r:
                cells.append("-" if r is None else "CRASH")
                continue
            flag = " FLAG" if r.get("flags") else ""
            low = "none" if r["lower"] is None else f"{r['lower']:.4g}"
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3g}"
            cells.append(f"{low} / {r['upper']:.4g} ({ratio}){flag}")
        lines.append(f"| {net.replace('eran_mnist_relu_', 'ERAN ').replace('mnistfc_', 'mnistfc ')} | "
                     f"{prop.replace('eran_9x200_mnist_spec_idx_', '').replace('mnistfc_prop_', '')} | " + " | ".join(cells) + " |")
    for net in dict.fromkeys(n for n, _ in ROWS):
        meds = []
        for c in configs:
            ratios = [by[(n, p, c)].get("ratio") for n, p in ROWS if n == net and (n, p, c) in by]
            ratios = [float("inf") if r is None else r for r in ratios]
            meds.append(f"{statistics.median(ratios):.3g}" if ratios else "-")
        lines.append(f"| {net} | median ratio | " + " | ".join(meds) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--nets", default="eran_mnist_relu_9x200,mnistfc_256x6")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.task:
        t = json.loads(args.task)
        print(json.dumps(run_row(t["net"], t["prop"], t["config"], t["budget"], t["samples"])))
        return 0
    configs = args.configs.split(",")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    for net, prop in ROWS:
        if net not in args.nets.split(","):
            continue
        for config in configs:
            task = {"net": net, "prop": prop, "config": config, "budget": args.budget, "samples": args.samples}
            try:
                proc = subprocess.run([sys.executable, __file__, "--task", json.dumps(task)], capture_output=True,
                                      text=True, env=env, timeout=4 * args.budget + 120)
                lines = proc.stdout.strip().splitlines()
                row = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
                    {**task, "crash": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
            except subprocess.TimeoutExpired:
                row = {**task, "crash": "timeout"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n".join(table(rows, configs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
