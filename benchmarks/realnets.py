"""The real-network suite: every network of ../shared/realnets (tests/data when it is absent),
loaded through lipbound.load / the loaders of examples/realnets.py, and the **default run** on it.

For each network: load time, the default run (``lipbound.estimate(graph)``: the methods the cost
model of :mod:`lipbound.methods.selection` chose for the network within the default time budget),
its certified upper bound, witnessed lower bound and **ratio** upper / lower, its wall time, which
method gave the upper bound, and each method's seconds. On the MLPs the upper bound is compared
with a **reference**: the least certified bound of ``REFERENCE_METHODS``, each run alone with a
generous budget (cached in ``benchmarks/results/realnets_reference.json``; ``--refresh`` recomputes
it). Bounds are L2 -> L2 on the model's own input and output: in-graph normalisation included,
external normalisation not (the table gives the constant for raw inputs separately when the
manifest documents an external std), a final softmax removed.

    .venv/bin/python benchmarks/realnets.py [--timeout 120] [--only NAME ...] [--refresh]
    # prints the table and writes benchmarks/results/realnets.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import lipbound  # noqa: E402
from lipbound.methods import METHODS  # noqa: E402
from realnets import REALNETS, SUITE, load_realnet  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "realnets.md"
CACHE = ROOT / "benchmarks" / "results" / "realnets_reference.json"
#: GLipSDP's trained MNIST MLPs of the Scalability folder that the suite runs (ONNX, external data)
SCALABILITY = [f"glipsdp_scalability/mlp_L{d}_W{w}.onnx" for d in (3, 5, 9, 17) for w in (16, 32)]
#: the certified methods run alone for the reference bound of an MLP, each with this time budget
#: (None: the method's own limits); SeqLip's pair search is far from the others on these nets
REFERENCE_METHODS = {"autolip": None, "eclipse-fast": None, "seqlip": 30.0, "lipsdp": 120.0}


def load(path: Path):
    """The Graph of one file: the suite's loader, or lipbound.load for the Scalability ONNX files."""
    return load_realnet(path) if path.name in SUITE else lipbound.load(path)


def is_mlp(graph) -> bool:
    """Affine layers and activations in one chain, no convolution (the nets the cost model's
    MLP rules are about)."""
    from lipbound.methods.cost import graph_sizes

    return graph_sizes(graph).kind == "mlp"


def _child(path: Path, methods, time_budget, queue) -> None:
    graph = load(path)
    t0 = time.perf_counter()
    try:
        rep = lipbound.estimate(graph, methods=methods, progress=False, time_budget=time_budget)
        queue.put(("ok", {"upper": rep.upper, "lower": rep.lower, "seconds": time.perf_counter() - t0,
                          "skipped": dict(rep.skipped),
                          "results": [{"method": r.method, "value": r.value, "kind": str(r.kind),
                                       "seconds": r.seconds, "share": r.details.get("time_share"),
                                       "stopped_by": r.details.get("stopped_by")} for r in rep.results]}))
    except lipbound.LipboundError as exc:
        queue.put(("refused", str(exc).splitlines()[0][:80]))
    except Exception as exc:  # a bug in a method: reported, the benchmark goes on
        queue.put(("error", f"{type(exc).__name__}: {exc}"[:80]))


def run(path: Path, methods, time_budget: float | None, timeout: float) -> dict:
    """``estimate(methods=..., time_budget=...)`` in a fresh process (spawned: a forked child can
    deadlock in torch's thread pool) that loads the network again, killed after ``timeout`` s."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(path, methods, time_budget, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"status": "timeout", "seconds": time.perf_counter() - t0}
    if queue.empty():
        return {"status": "error", "detail": f"exit code {proc.exitcode}"}
    status, payload = queue.get()
    return {"status": status, **payload} if status == "ok" else {"status": status, "detail": payload}


def reference(path: Path, refresh: bool) -> dict:
    """``{method: certified value or status}`` of REFERENCE_METHODS alone on ``path`` (cached)."""
    cache = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    out = {} if refresh else dict(cache.get(path.name, {}))
    for m in REFERENCE_METHODS:
        if m in out:
            continue
        budget = REFERENCE_METHODS[m]
        r = run(path, [m], budget, (budget or 120.0) + 60)
        ok = r["status"] == "ok" and r["results"] and r["results"][0]["kind"] in ("certified_upper", "exact")
        out[m] = {"value": r["results"][0]["value"], "seconds": r["results"][0]["seconds"]} if ok else \
            {"status": r["status"] if r["status"] != "ok" else "not certified"}
        print(f"  reference {path.name} {m}: {out[m]}", file=sys.stderr, flush=True)
        cache = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
        cache[path.name] = out
        CACHE.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return out


def bench(path: Path, timeout: float, refresh: bool) -> dict:
    t0 = time.perf_counter()
    graph = load(path)
    load_s = time.perf_counter() - t0
    row = {"name": path.name, "shape": graph.input_shape, "load": load_s,
           "units": sum(math.prod(n.shape) for n in graph if n.kind == "activation"), "mlp": is_mlp(graph)}
    row["default"] = run(path, None, None, timeout)
    if row["mlp"]:
        ref = reference(path, refresh)
        values = {m: v["value"] for m, v in ref.items() if "value" in v}
        if values:
            row["ref_method"] = min(values, key=values.get)
            row["ref"] = values[row["ref_method"]]
    return row


def _g(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.5g}"


def table(rows: list[dict]) -> str:
    head = ("| network | input | act. units | default: upper | lower | ratio | s | upper from | "
            "MLP reference (method) | upper / reference | s per method (share) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        d = r["default"]
        if d["status"] != "ok":
            lines.append(f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['units']} | {d['status']} | | | | | | | |")
            continue
        certified = [x for x in d["results"] if x["kind"] in ("certified_upper", "exact")]
        src = min(certified, key=lambda x: x["value"])["method"] if certified else "-"
        ratio = d["upper"] / d["lower"] if d["lower"] and math.isfinite(d["upper"]) else None
        ref = f"{_g(r['ref'])} ({r['ref_method']})" if "ref" in r else ""
        rel = f"{d['upper'] / r['ref']:.3f}" if "ref" in r and math.isfinite(d["upper"]) else ""
        per = ", ".join(f"{x['method']} {x['seconds']:.1f}" + (f" ({x['share']:.0f})" if x["share"] else "")
                        + (" cut" if x["stopped_by"] == "time" else "") for x in d["results"])
        lines.append(f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['units']} | {_g(d['upper'])} | "
                     f"{_g(d['lower'])} | {'**%.3g**' % ratio if ratio else '-'} | {d['seconds']:.1f} | {src} | "
                     f"{ref} | {rel} | {per} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per default run (default 120)")
    parser.add_argument("--only", nargs="*", default=None, help="file names to run (default: the whole suite)")
    parser.add_argument("--refresh", action="store_true", help="recompute the cached MLP references")
    parser.add_argument("--reference-only", action="store_true", help="only fill the reference cache of the MLPs")
    args = parser.parse_args()
    folder = REALNETS if REALNETS.is_dir() else ROOT / "tests" / "data"
    names = [n for n in [*SUITE, *SCALABILITY] if (folder / n).is_file()
             and (args.only is None or n in args.only or Path(n).name in args.only)]
    if args.reference_only:
        for name in names:
            if is_mlp(load(folder / name)):
                reference(folder / name, args.refresh)
        return
    rows = []
    for name in names:
        row = bench(folder / name, args.timeout, args.refresh)
        rows.append(row)
        print(f"{name}: {row['default'].get('upper')} / {row['default'].get('lower')}", file=sys.stderr, flush=True)
    budget = lipbound.methods.selection.DEFAULT_TIME_BUDGET
    text = (f"# Real-network suite: the default run\n\nNetworks from `shared/realnets`; L2 -> L2 on the model's "
            f"input (in-graph normalisation included, external not; final softmax removed). Each row is one "
            f"default run, `lipbound.estimate(graph)` (no method named, no time budget: the default budget of "
            f"{budget:.0f} s), in its own process with a {args.timeout:.0f} s limit. `upper` = best certified, "
            f"`lower` = best witnessed, ratio = upper / lower. On the MLPs, `reference` = the least certified "
            f"bound of {', '.join(f'{m} ({b:.0f} s)' if b else m for m, b in REFERENCE_METHODS.items())}, "
            f"each run alone with that budget (`realnets_reference.json`). Timings on a shared, loaded 2-core CPU machine (other jobs "
            f"running, OMP_NUM_THREADS=1): compare orders of magnitude only.\n\n{table(rows)}\n")
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
