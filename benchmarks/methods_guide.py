"""Typical time of every registered method on the demo network, for ``lipbound methods``.

Runs each method of :data:`lipbound.METHODS` alone on the demo network (whatever
:data:`lipbound.cli.demo.DEMO_SPEC` / ``DEMO_SHAPE`` name today), on all of ``R^n``, with seed 0
and a time budget per method (``--cap``, default 20 s), and writes what it saw to
:data:`lipbound.cli.methods.TIMES_FILE` (``src/lipbound/cli/methods_times.json``): per method its
seconds, value, kind and what stopped it, or why it does not apply. ``lipbound methods`` reads that
file. Rerun this script whenever the demo network or a method changes.

Times depend on the machine and on its load; the file records the torch version and the thread
count they were measured with.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/methods_guide.py [--cap 20] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import lipbound
from lipbound.cli.common import parse_shape
from lipbound.cli.demo import DEMO_SHAPE, DEMO_SPEC
from lipbound.cli.methods import TIMES_FILE
from lipbound.errors import InvalidInput, NotApplicable, UnsupportedOperation
from lipbound.report_format import stopped_by_time


def measure(name: str, graph: lipbound.Graph, cap: float) -> dict:
    """One method alone on ``graph``: its time, value, kind and stop, or why it does not apply."""
    t0 = time.perf_counter()
    try:
        report = lipbound.estimate(graph, methods=[name], seed=0, progress=False, time_budget=cap)
    except (NotApplicable, UnsupportedOperation, InvalidInput) as exc:  # e.g. local-bab needs a region
        return {"not_applicable": str(exc).splitlines()[0], "seconds": round(time.perf_counter() - t0, 3)}
    r = report.result(name)
    stop = "time" if stopped_by_time(r) else r.details.get("stopped_by")
    return {"seconds": round(r.seconds, 3), "value": r.value, "kind": r.kind.value, "stopped_by": stop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=float, default=20.0, help="time budget of each method, seconds (default 20)")
    ap.add_argument("--out", type=Path, default=TIMES_FILE, help=f"where to write (default {TIMES_FILE})")
    args = ap.parse_args()
    graph = lipbound.load(DEMO_SPEC, parse_shape(DEMO_SHAPE))
    rows = {}
    for name in lipbound.METHODS:
        rows[name] = measure(name, graph, args.cap)
        print(f"{name:<14} {rows[name]}", flush=True)
    data = {"model": DEMO_SPEC.rsplit("/", 1)[-1], "input_shape": list(graph.input_shape), "cap_seconds": args.cap,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine(),
            "measured": time.strftime("%Y-%m-%d"), "methods": rows}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
