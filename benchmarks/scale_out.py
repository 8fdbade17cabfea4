"""Scale-out of ``run-instances`` on the 20 mnistfc boxes of VNN-COMP 2021 (instances_mnistfc.csv).

    python benchmarks/scale_out.py [--limit N] [--out benchmarks/results/scale_out.md]

Runs the same instances with the process pool on 1 and on 2 workers and on a local Ray with 2
workers, in that order and in the same run, and writes the throughput (instances per second of
wall time, pool or Ray start-up included) and whether the three runs gave identical brackets and
verdicts. The methods stop on iteration counts and solver tolerances, and the CSV's timeout (600 s) is
large enough that no time cap (the CROWN localization gets a quarter of it) cuts one short, so
the numbers do not depend on scheduling; SeqLip is left out, its per-pair time cap (2 s) makes
its value depend on the load. Skipped when ../shared/realnets is absent.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSV = HERE / "instances_mnistfc.csv"
METHODS = ["autolip", "lipsdp", "lower"]
OPTIONS = {"lower": {"starts": 8, "steps": 30, "walk_rounds": 2}}
CONFIGS = [("process", 1), ("process", 2), ("ray", 2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows")
    ap.add_argument("--out", default=str(HERE / "results" / "scale_out.md"))
    args = ap.parse_args()
    from lipbound.sweep import run_instances
    from lipbound.sweep.instances import read_instances

    rows = read_instances(CSV)
    if not Path(rows[0].onnx).is_file():
        print(f"skipped: {rows[0].onnx} is absent (../shared/realnets)")
        return 0
    csv = CSV
    if args.limit:
        tmp = Path(tempfile.mkdtemp()) / "instances.csv"
        tmp.write_text("".join(f"{r.onnx},{r.vnnlib},{r.timeout}\n" for r in rows[:args.limit]))
        csv = tmp
    runs = {}
    for backend, workers in CONFIGS:
        t0 = time.perf_counter()
        run = run_instances(csv, METHODS, workers=workers, backend=backend, method_options=OPTIONS)
        wall = time.perf_counter() - t0
        runs[(backend, workers)] = (run, wall)
        print(f"{backend} x{workers}: {len(run.records)} instances in {wall:.1f} s", flush=True)
    ray_start = _warm_ray(csv, runs)
    ref = _answers(runs[CONFIGS[0]][0])
    base = len(ref) / runs[CONFIGS[0]][1]
    load = os.getloadavg()  # the run itself loads the cores: a 1-minute average above ~2.5 says others did too
    lines = ["# Scale-out of run-instances (mnistfc, VNN-COMP 2021)", "",
             f"`python benchmarks/scale_out.py` on {len(ref)} rows of `benchmarks/instances_mnistfc.csv` "
             f"(mnistfc_256x2, L-inf boxes eps 0.03 and 0.05), methods {', '.join(METHODS)} "
             f"(lower: {OPTIONS['lower']}), seed 0. {os.cpu_count()} CPUs, Python {platform.python_version()}; "
             f"load average after the run {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.", "",
             "The configurations ran one after the other in the same run; wall time includes starting the pool "
             "or Ray, except in the last row, where a local Ray was started beforehand (as an existing cluster "
             f"would be; its start took {ray_start:.1f} s, not counted).", "",
             "| backend | workers | wall s | instances/s | vs 1 worker | brackets and verdicts = 1 worker |",
             "|---|---:|---:|---:|---:|---|"]
    for (backend, workers), (run, wall) in runs.items():
        rate = len(run.records) / wall
        lines.append(f"| {backend} | {workers} | {wall:.1f} | {rate:.3f} | {rate / base:.2f}x | "
                     f"{'yes' if _answers(run) == ref else 'NO'} |")
    verdicts = [r.get('verdict') for r in runs[CONFIGS[0]][0].records]
    lines += ["", f"Verdicts (1 worker): {verdicts.count('certified')} certified, {verdicts.count('unknown')} unknown, "
              f"{verdicts.count('violated')} violated, {sum(r['status'] != 'ok' for r in runs[CONFIGS[0]][0].records)} "
              "errors. Wall time includes starting the pool (fork server, imports) or Ray.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _warm_ray(csv, runs: dict) -> float:
    """Run the Ray configuration once more on a local Ray started beforehand (``ray.init`` reused by
    the backend, as an existing cluster is); records it as ``("ray, started before", 2)`` and returns
    the seconds the start took."""
    import ray

    from lipbound.sweep import run_instances

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        run = run_instances(csv, METHODS, workers=2, backend="ray", method_options=OPTIONS)
        runs[("ray, started before", 2)] = (run, time.perf_counter() - t0)
    finally:
        ray.shutdown()
    return start


def _answers(run) -> list[tuple]:
    return [(r["instance"], r["status"], r.get("lower"), r.get("upper"), r.get("verdict")) for r in run.records]


if __name__ == "__main__":
    sys.exit(main())
