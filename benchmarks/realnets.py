"""The real-network suite: every network of ../shared/realnets (tests/data when it is absent),
loaded through lipbound.load / the loaders of examples/realnets.py, and the main methods on it.

For each network: load time, AutoLip certified and its power-method estimate, SeqLip and the
lower bound (when those methods are registered; a method that refuses a network or runs past the
time limit is reported as such), the **ratio** best certified upper / best witnessed lower, and
the seconds of each method. Bounds are L2 -> L2 on the model's own input and output: in-graph
normalisation included, external normalisation not (the table gives the constant for raw inputs
separately when the manifest documents an external std), a final softmax removed.

    .venv/bin/python benchmarks/realnets.py [--timeout 120] [--only NAME ...]
    # prints the table and writes benchmarks/results/realnets.md
"""

from __future__ import annotations

import argparse
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

UPPER = ("autolip", "seqlip")  # certified upper bounds, in table order
OUT = ROOT / "benchmarks" / "results" / "realnets.md"


def _child(path: Path, method: str, queue) -> None:
    graph = load_realnet(path)
    t0 = time.perf_counter()
    try:
        r = lipbound.estimate(graph, methods=[method], progress=False).results[0]
        queue.put(("ok", r.value, r.kind, time.perf_counter() - t0))
    except lipbound.LipboundError as exc:
        queue.put(("refused", str(exc).splitlines()[0][:80], None, time.perf_counter() - t0))
    except Exception as exc:  # a bug in a method: reported, the benchmark goes on
        queue.put(("error", f"{type(exc).__name__}: {exc}"[:80], None, time.perf_counter() - t0))


def run_method(path: Path, method: str, timeout: float) -> dict:
    """One method in a fresh process (spawned: a forked child can deadlock in torch's thread
    pool) that loads the network again, killed after ``timeout`` seconds (start-up included);
    the seconds reported are those of the method alone."""
    if method not in METHODS:
        return {"status": "absent"}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(path, method, queue))
    proc.start()
    proc.join(timeout)
    seconds = time.perf_counter() - t0
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"status": "timeout", "seconds": seconds}
    if queue.empty():
        return {"status": "error", "detail": f"exit code {proc.exitcode}", "seconds": seconds}
    status, value, kind, seconds = queue.get()
    out = {"status": status, "seconds": seconds}
    if status == "ok":
        out.update(value=value, kind=kind)
    else:
        out["detail"] = value
    return out


def fmt(r: dict) -> str:
    if r["status"] == "ok":
        return f"{r['value']:.5g}"
    return {"absent": "-", "timeout": "timeout", "refused": "refused", "error": "error"}[r["status"]]


def secs(r: dict) -> str:
    return f"{r['seconds']:.1f}" if "seconds" in r else "-"


def bench(path: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    graph = load_realnet(path)
    load_s = time.perf_counter() - t0
    row = {"name": path.name, "shape": graph.input_shape, "load": load_s,
           "relus": sum(math.prod(n.shape) for n in graph if n.kind == "activation")}
    for m in ("autolip", "autolip-power", "seqlip", "lower"):
        row[m] = run_method(path, m, timeout)
    uppers = [row[m]["value"] for m in UPPER if row[m]["status"] == "ok" and row[m]["kind"] in ("certified_upper", "exact")]
    low = row["lower"]
    row["upper"] = min(uppers) if uppers else math.inf
    ok = low["status"] == "ok" and low["value"] > 0 and row["upper"] < math.inf
    row["ratio"] = row["upper"] / low["value"] if ok else None
    std = SUITE[path.name][1]
    if std is not None and row["upper"] < math.inf:
        # f o diag(1/std) for raw pixels: at most upper / min(std) (exact when std is one number)
        row["raw"] = row["upper"] / min(std)
    return row


def table(rows: list[dict]) -> str:
    head = ("| network | input | act. units | load s | AutoLip (cert.) | AutoLip (power est.) | SeqLip | lower | "
            "ratio upper/lower | s: AutoLip / SeqLip / lower | raw-pixel upper |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ratio = f"**{r['ratio']:.3g}**" if r["ratio"] is not None else "-"
        raw = f"{r['raw']:.4g}" if "raw" in r else ""
        lines.append(f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['relus']} | {r['load']:.2f} | "
                     f"{fmt(r['autolip'])} | {fmt(r['autolip-power'])} | {fmt(r['seqlip'])} | {fmt(r['lower'])} | "
                     f"{ratio} | {secs(r['autolip'])} / {secs(r['seqlip'])} / {secs(r['lower'])} | {raw} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per method (default 120)")
    parser.add_argument("--only", nargs="*", default=None, help="file names to run (default: the whole suite)")
    args = parser.parse_args()
    folder = REALNETS if REALNETS.is_dir() else ROOT / "tests" / "data"
    names = [n for n in SUITE if (folder / n).is_file() and (args.only is None or n in args.only)]
    rows = []
    for name in names:
        row = bench(folder / name, args.timeout)
        rows.append(row)
        print(f"{name}: upper {row['upper']:.5g}, ratio {row['ratio']}", file=sys.stderr, flush=True)
    notes = []
    for r in rows:
        for m in ("autolip", "seqlip", "lower"):
            if r[m]["status"] in ("refused", "error"):
                notes.append(f"- {r['name']}, {m}: {r[m]['status']}: {r[m].get('detail', '')}")
    text = (f"# Real-network suite\n\nNetworks from `{folder.relative_to(ROOT.parent) if folder.is_relative_to(ROOT.parent) else folder}`; "
            f"L2 -> L2 on the model's input (in-graph normalisation included, external not; final softmax removed). "
            f"`upper` = best certified (AutoLip, SeqLip), `lower` = witnessed lower bound, ratio = upper / lower "
            f"(1 = the constant is known). Each method ran in its own process with a {args.timeout:.0f} s limit. "
            f"Timings on a shared, loaded 2-core CPU machine (other jobs running): compare orders of magnitude only. "
            f"`raw-pixel upper` = upper / min(std) for the nets whose normalisation (x - mean) / std lives outside "
            f"the model.\n\n{table(rows)}\n")
    if notes:
        text += "\nRefusals and errors:\n" + "\n".join(notes) + "\n"
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
