"""Wall time against the time budget, per model, with and without load (issue 13, item 4).

For each model and case (a method set, ``default`` for ``methods=None`` or ``all``, and a budget),
runs ``lipbound.estimate(graph, methods=..., time_budget=B)`` in a fresh subprocess (its
``PYTHONPATH`` is ``--src``, so the same script measures another copy of the code: the baseline)
and prints one row: the wall time of the call (loading the model excluded), its ratio to the
budget, the slowest method with its seconds and ``stopped_by``, and the bracket; with ``--focus M``
instead method ``M``'s own seconds against its share of the budget (its ``time_budget``), its
``stopped_by`` and value (e.g. ``--cases lower:5.4 default:30 --focus lower``). ``--load N``
starts ``N`` busy-looping processes for the measurement (killed afterwards, by their own ids),
to imitate a loaded machine.

Models: the bundled demo CNN (:mod:`lipbound.examples.demo_net`), the paper's random-weight CNN
(:func:`lipbound.examples.paper_cnn.random_mnist4`) and, when ``../shared/realnets`` is present,
``oval21_cifar_base_kw.onnx`` and ``cifar10_resnet_2b.onnx``.

    OMP_NUM_THREADS=1 python benchmarks/budget_load.py [--cases default:30 all:60] [--load 0 3]
        [--src /tmp/base/src src] [--only oval21 ...] [--focus lower] [--markdown out.md]

Wall times on a shared machine are noisy: compare rows measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
REALNETS = ROOT.parent / "shared" / "realnets"

MODELS = {
    "demo": "from lipbound.examples.demo_net import demo_net, INPUT_SHAPE as s; g = lipbound.as_graph(demo_net(), s)",
    "paper_cnn": ("from lipbound.examples.paper_cnn import random_mnist4; "
                  "g = lipbound.as_graph(random_mnist4(), (1, 28, 28))"),
    "oval21": f"g = lipbound.load({str(REALNETS / 'oval21_cifar_base_kw.onnx')!r})",
    "resnet2b": f"g = lipbound.load({str(REALNETS / 'cifar10_resnet_2b.onnx')!r})",
}
NEEDS_REALNETS = ("oval21", "resnet2b")

DRIVER = """
import json, sys, time, lipbound
{load}
methods = None if sys.argv[1] == 'default' else sys.argv[1]
t0 = time.perf_counter()
rep = lipbound.estimate(g, methods=methods, time_budget=float(sys.argv[2]))
wall = time.perf_counter() - t0
rows = [(r.method, r.seconds, r.kind, r.value, (r.details or {{}}).get('stopped_by'),
         (r.details or {{}}).get('time_budget')) for r in rep.results]
print(json.dumps({{"wall": wall, "rows": rows, "skipped": list(rep.skipped)}}))
"""


@contextmanager
def load(n: int) -> Iterator[None]:
    """``n`` busy-looping processes for the duration of the block, killed by their ids."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run(src: str, model: str, method_set: str, budget: float) -> dict:
    """One measured call in a fresh interpreter on the code under ``src``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(load=MODELS[model]), method_set, str(budget)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "process": time.perf_counter() - t0}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(src_label: str, load_n: int, model: str, method_set: str, budget: float, out: dict) -> str:
    """A markdown table row of one measured call."""
    if "error" in out:
        return f"| {src_label} | {load_n} | {model} | {method_set} | {budget:g} | error: {out['error']} |||||"
    rows = out["rows"]
    slow = max(rows, key=lambda r: r[1] or 0.0) if rows else ("-", 0.0, "-", 0.0, "-")
    upper = min((r[3] for r in rows if r[2] in ("certified_upper", "exact")), default=float("nan"))
    lower = max((r[3] for r in rows if r[2] in ("witnessed_lower", "exact")), default=float("nan"))
    return (f"| {src_label} | {load_n} | {model} | {method_set} | {budget:g} | {out['wall']:.1f} | "
            f"{out['wall'] / budget:.2f} | {slow[0]} {slow[1]:.1f} s ({slow[4]}) | {upper:.4g} | {lower:.4g} |")


def focus_row(src_label: str, load_n: int, model: str, method_set: str, budget: float, out: dict,
              method: str) -> str:
    """A markdown table row of one measured call, for ``method`` only (:data:`FOCUS_HEADER`)."""
    head = f"| {src_label} | {load_n} | {model} | {method_set} | {budget:g} |"
    found = [r for r in out.get("rows", []) if r[0] == method]
    if "error" in out or not found:
        return f"{head} {out.get('error', method + ' did not run')} ||||||"
    _, seconds, _, value, stopped, share = found[0]
    share = share or float("nan")
    return (f"{head} {out['wall']:.1f} | {seconds:.2f} | {share:.2f} | {seconds / share:.2f} | "
            f"{seconds - (1.1 * share + 0.5):+.2f} | {stopped} | {value:.4g} |")


FOCUS_HEADER = ("| code | load | model | set | budget s | wall s | method s | its share s | method / share | "
                "method - (1.1 share + 0.5) s | stopped_by | value |\n" + "|---" * 12 + "|")

HEADER = ("| code | load | model | set | budget s | wall s | wall / budget | slowest method (stopped_by) | "
          "certified upper | witnessed lower |\n|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["default:10", "default:30", "default:60", "all:60"],
                        help="SET:BUDGET, SET being default or all")
    parser.add_argument("--load", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--src", nargs="+", default=[str(ROOT / "src")],
                        help="copies of lipbound's src to compare (e.g. a baseline first)")
    parser.add_argument("--only", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    parser.add_argument("--focus", help="report this method's seconds against its share instead")
    args = parser.parse_args()
    models = [m for m in args.only if m not in NEEDS_REALNETS or REALNETS.is_dir()]
    lines = [HEADER if args.focus is None else FOCUS_HEADER]
    print(lines[0], flush=True)
    for load_n in args.load:
        with load(load_n):
            for model in models:
                for case in args.cases:
                    method_set, budget = case.split(":")
                    for src in args.src:
                        label = "this" if Path(src).resolve() == (ROOT / "src").resolve() else "baseline"
                        out = run(src, model, method_set, float(budget))
                        lines.append(row(label, load_n, model, method_set, float(budget), out) if args.focus is None
                                     else focus_row(label, load_n, model, method_set, float(budget), out, args.focus))
                        print(lines[-1], flush=True)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
