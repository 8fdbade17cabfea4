"""``local-bab`` on the VNN-LIB boxes of ``../shared/realnets`` (issue 10): bracket, ratio, time.

For every chosen network and property file, runs ``local-bab`` with the given budget and prints
one row: lower, upper, ratio, seconds, parts, why it stopped, and where the lower bound came from.
A union of boxes (VNN-LIB ``or``, or the chosen files together with ``--union``) goes through
``lipbound.estimate(..., methods=["local-bab"])``: ``local-bab`` on each distinct part, pairs across
parts bounded from the parts' bounds (:mod:`lipbound.methods.union_bound`), hulls only where needed.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/local_bab.py [--nets acasxu_1_1]
[--props acasxu_prop_3] [--budget 120] [--union] [--option fan=2 axis='"relative"'] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lipbound.api import as_graph, estimate
from lipbound.frontends.vnnlib import load_vnnlib
from lipbound.methods import METHODS
from lipbound.methods.region import BoxUnion

REALNETS = Path(__file__).resolve().parents[1].parent / "shared" / "realnets"


def run(net: str, prop: str, budget: float, options: dict) -> dict:
    """One ``local-bab`` run: a row of the table; ``prop``: a property file's stem, or several
    joined by ``+`` (their union, through ``estimate``: module doc)."""
    graph = as_graph(str(REALNETS / f"{net}.onnx"))
    boxes = [load_vnnlib(REALNETS / "vnnlib" / f"{stem}.vnnlib", graph.input_shape).region for stem in prop.split("+")]
    region = boxes[0] if len(boxes) == 1 else BoxUnion(boxes)
    t0 = time.perf_counter()
    if isinstance(region, BoxUnion):
        report = estimate(graph, methods=["local-bab"], domain=region, time_budget=budget, progress=False,
                          method_options={"local-bab": options})
        res = report.results[0]
        d = res.details
        lower, upper = report.lower or 0.0, report.upper
        parts = [p.result("local-bab").details for p in report.parts]
        return {"net": net, "prop": prop, "lower": lower, "upper": upper,
                "ratio": upper / lower if lower > 0 else float("inf"), "seconds": time.perf_counter() - t0,
                "parts": sum(p["parts"] for p in parts), "parts_bounded": sum(p["parts_bounded"] for p in parts),
                "stopped": f"clusters {d['clusters']}, cross {d['cross']:.4g}, parts' uppers "
                           f"{', '.join(f'{p.upper:.4g}' for p in report.parts)}",
                "lower_from": d["lower_from"], "bound_methods": ["union"]}
    res = METHODS["local-bab"](graph, domain=region, time_budget=budget, **options)
    lower, upper = res.bracket
    d = res.details
    return {"net": net, "prop": prop, "lower": lower, "upper": upper,
            "ratio": upper / lower if lower > 0 else float("inf"), "seconds": time.perf_counter() - t0,
            "parts": d["parts"], "parts_bounded": d["parts_bounded"], "stopped": d["stopped"],
            "lower_from": d["lower_from"], "bound_methods": d["bound_methods"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["acasxu_1_1", "acasxu_2_1", "acasxu_3_3"])
    ap.add_argument("--props", nargs="+", default=[f"acasxu_prop_{i}" for i in range(1, 5)])
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--option", nargs="*", default=[], help="local-bab options as key=value (Python literals)")
    ap.add_argument("--union", action="store_true", help="one row per net: the union of the props")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    options = {k: eval(v) for k, v in (o.split("=", 1) for o in args.option)}  # noqa: S307 (local script)
    rows = []
    print(f"{'net':<12} {'prop':<16} {'lower':>10} {'upper':>10} {'ratio':>8} {'s':>6} {'parts':>6}  stopped")
    props = ["+".join(args.props)] if args.union else args.props
    for net in args.nets:
        for prop in props:
            r = run(net, prop, args.budget, options)
            rows.append(r)
            print(f"{net:<12} {prop:<16} {r['lower']:10.4g} {r['upper']:10.4g} {r['ratio']:8.4f} {r['seconds']:6.1f} "
                  f"{r['parts']:6d}  {r['stopped']} (lower: {r['lower_from']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
