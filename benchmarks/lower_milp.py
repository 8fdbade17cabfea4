"""``lower-milp`` on the mnistfc VNN-LIB boxes (issue 10): the lower end before and after the MILPs.

For each network and property, runs ``lower-milp`` with the given budget (``lower`` first on
``lower_share`` of it) and prints one row: ``lower``'s value (the start, from the same run), the
value after the MILPs, the MILP's size (columns, binaries, rows, non-zeros), each round's solve
seconds, HiGHS status and nodes, and what stopped it.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lower_milp.py [--nets mnistfc_256x2]
[--props 0 1 2 3] [--eps 0.03] [--budget 60] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lipbound.api import as_graph
from lipbound.frontends.vnnlib import load_vnnlib
from lipbound.methods import METHODS

REALNETS = Path(__file__).resolve().parents[1].parent / "shared" / "realnets"


def run(net: str, prop: int, eps: float, budget: float) -> dict:
    """One ``lower-milp`` run: a row of the table."""
    graph = as_graph(str(REALNETS / f"{net}.onnx"))
    region = load_vnnlib(REALNETS / "vnnlib" / f"mnistfc_prop_{prop}_{eps}.vnnlib", graph.input_shape).region
    t0 = time.perf_counter()
    res = METHODS["lower-milp"](graph, domain=region, time_budget=budget)
    d = res.details
    return {"net": net, "prop": prop, "eps": eps, "start": d["start_value"], "after": res.value,
            "seconds": time.perf_counter() - t0, "size": d["milp_size"], "stopped_by": d["stopped_by"],
            "rounds": [{k: r.get(k) for k in ("objective", "norm", "seconds", "status", "nodes")} for r in d["milp"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["mnistfc_256x2"])
    ap.add_argument("--props", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not REALNETS.exists():
        raise SystemExit(f"no real networks at {REALNETS}")
    rows = []
    print("| net | prop | lower (start) | lower-milp | s | columns / binaries / rows / nnz | rounds: s, status, nodes | stopped |")
    print("|---|---|---|---|---|---|---|---|")
    for net in args.nets:
        for prop in args.props:
            r = run(net, prop, args.eps, args.budget)
            rows.append(r)
            z = r["size"]
            rounds = "; ".join(f"{x['seconds']:.1f} {x['status']} {x['nodes']}" for x in r["rounds"])
            print(f"| {net} | {prop} | {r['start']:.4g} | {r['after']:.4g} | {r['seconds']:.1f} | {z.get('columns')} / "
                  f"{z.get('binaries')} / {z.get('rows')} / {z.get('nonzeros')} | {rounds} | {r['stopped_by']} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
