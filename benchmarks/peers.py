"""lipbound's certified bounds against the peers, same networks, same machine, one run.

    .venv/bin/python benchmarks/peers.py [--quick] [--out benchmarks/results/peers.md]

Networks: random ReLU MLPs (PyTorch default initialisation, seed 0; input = width, 10 outputs)
of depth (number of linear layers) {2, 5, 10, 20, 50} x width {20, 80, 200}; the LipSDP files
``lipsdp_random_weights.mat`` and ``lipsdp_mnist_weights.mat``; GLipSDP's residual
``glipsdp_FC-R18.pt`` (from ``../shared/realnets``, skipped when absent); an MNIST-sized
784-500-200-50-10 MLP with random weights.

Methods: ours (``autolip``, ``eclipse-fast``, ``lipsdp``) and the PyPI package ``eclipse-nn``
(ECLipsE-Fast and ECLipsE, Xu & Sivaranjani 2024), installed by this script into its own folder
``benchmarks/.peers`` with ``pip install --no-deps`` (so it cannot replace torch; its own
dependencies numpy, torch, cvxpy, scipy come from the running environment), plus the published
numbers of LipSDP (Fazlyab et al. 2019, MATLAB + MOSEK) and GLipSDP (Pauli et al. 2024).

Every (network, method) runs in a fresh subprocess with one BLAS thread (the machine is shared),
which reports its wall time and its peak resident memory (``ru_maxrss``, including about 0.3 GB
for importing torch and numpy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REALNETS = REPO.parent / "shared" / "realnets"
PEERS = HERE / ".peers"
DEPTHS = (2, 5, 10, 20, 50)
WIDTHS = (20, 80, 200)
PUBLISHED = {
    "lipsdp_random_weights": [("LipSDP-Neuron (published, MOSEK)", 36.482), ("LipSDP-Layer (published)", 39.839)],
    "lipsdp_mnist_weights": [("LipSDP-Network-dec-vars (published)", 24.365),
                             ("LipSDP-Network-rand (published)", 24.320)],
    "glipsdp_FC-R18": [("GLipSDP (published, 70 s MOSEK; its blocks omit the ReLU after the sum)", 20.956), ("per-block LipSDP (published)", 53.90),
                       ("product bound (published)", 56.23)],
    "mnist_784-500-200-50-10": [("LipSDP-Neuron, MOSEK (third-party, other weights)", None)],
}
TIMEOUT = {"lipsdp": 330, "eclipse-nn ECLipsE": 90}


# ---- networks -------------------------------------------------------------------------------------
def build(case: str):
    """``(nn.Module, input_shape)`` of a case name."""
    sys.path.insert(0, str(REPO / "examples"))
    import realnets

    if case.startswith("mlp_d"):
        depth, width = (int(p[1:]) for p in case[4:].split("_"))
        return _mlp([width] * depth + [10]), (width,)  # depth linear layers
    if case == "mnist_784-500-200-50-10":
        return _mlp([784, 500, 200, 50, 10]), (784,)
    if case.startswith("lipsdp_"):
        return realnets.lipsdp_mat(REALNETS / f"{case}.mat")
    if case == "glipsdp_FC-R18":
        return realnets.glipsdp_fc_r18(REALNETS / "glipsdp_FC-R18.pt")
    raise ValueError(case)


def _mlp(widths):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def run_one(case: str, method: str) -> dict:
    """Run one method on one network in this process; returns value, kind, seconds, notes."""
    import torch

    model, shape = build(case)
    if method.startswith("eclipse-nn"):
        sys.path.insert(0, str(PEERS))
        from eclipse_nn.LipConstEstimator import LipConstEstimator

        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if len(linears) != sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) + 1 or case == "glipsdp_FC-R18":
            return {"value": None, "kind": "n/a", "note": "eclipse-nn takes plain MLPs only"}
        weights = [m.weight.detach().double() for m in linears]
        t0 = time.perf_counter()
        est = LipConstEstimator(weights=weights)
        value = float(est.estimate("ECLipsE_Fast" if method.endswith("Fast") else "ECLipsE"))
        return {"value": value, "kind": "estimate (unverified)", "seconds": time.perf_counter() - t0}
    import lipbound

    graph = lipbound.as_graph(model, shape)
    options = {"time_budget": 250.0 if case in ("mnist_784-500-200-50-10", "glipsdp_FC-R18") else 30.0} \
        if method == "lipsdp" else {}
    t0 = time.perf_counter()
    try:
        res = lipbound.methods.METHODS[method](graph, **options)
    except lipbound.LipboundError as exc:
        return {"value": None, "kind": "n/a", "note": str(exc)[:80]}
    seconds = time.perf_counter() - t0
    note = ""
    if method == "lipsdp":
        d = res.details
        note = f"{d['solver']}, {d['solver_status']}, order {d['lmi_order']}, check {d['verify_seconds']:.1f}s"
    return {"value": res.value, "kind": res.kind, "seconds": seconds, "note": note}


# ---- driver ---------------------------------------------------------------------------------------
def install_peer() -> str:
    """Install eclipse-nn into ``benchmarks/.peers`` (no dependencies); returns a status line."""
    if (PEERS / "eclipse_nn").is_dir():
        return "eclipse-nn present in benchmarks/.peers"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(PEERS), "eclipse-nn"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"eclipse-nn could not be installed: {proc.stderr.strip().splitlines()[-1:]}"
    return "eclipse-nn installed into benchmarks/.peers with --no-deps"


def child(case: str, method: str) -> dict:
    return run_child(Path(__file__), ["--one", case, method], TIMEOUT.get(method, 150))


def run_child(script: Path, args: list[str], timeout: float) -> dict:
    """``script args`` in a fresh process (one BLAS thread, this checkout's ``src`` first on the
    path): the JSON of its last output line, or a ``timeout`` / ``failed`` row with the reason."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"value": None, "kind": "timeout", "seconds": time.perf_counter() - t0,
                "note": f"killed after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"value": None, "kind": "failed", "seconds": time.perf_counter() - t0, "note": tail[:90]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only depth <= 10, width <= 80 and the .mat files")
    ap.add_argument("--out", default=str(HERE / "results" / "peers.md"))
    ap.add_argument("--one", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        out = run_one(*args.one)
        out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    status = install_peer()
    cases = [f"mlp_d{d}_w{w}" for d in DEPTHS for w in WIDTHS if not args.quick or (d <= 10 and w <= 80)]
    if REALNETS.is_dir():
        cases += ["lipsdp_random_weights", "lipsdp_mnist_weights"] + ([] if args.quick else ["glipsdp_FC-R18"])
    if not args.quick:
        cases.append("mnist_784-500-200-50-10")
    methods = ["autolip", "eclipse-fast", "lipsdp", "eclipse-nn ECLipsE-Fast", "eclipse-nn ECLipsE"]
    lines = ["# lipbound vs peers: certified Lipschitz bounds (L2 -> L2)", "",
             f"Machine: {os.cpu_count()} CPU cores, shared with other jobs (timings are from a loaded machine); "
             "one BLAS thread per run; each run in a fresh process. Peak memory = the process's peak RSS "
             f"(includes ~0.3 GB for torch/numpy). {status}.", "",
             "| network | method | value | kind | seconds | peak MB | note |", "|---|---|---:|---|---:|---:|---|"]
    for case in cases:
        rows = []
        for method in methods:
            if method == "eclipse-nn ECLipsE" and case.startswith("mlp_d") and (
                    int(case.split("_w")[1]) > 80 or int(case.split("_")[1][1:]) * int(case.split("_w")[1]) > 800):
                rows.append((method, {"value": None, "kind": "skipped", "note": "too slow (cvxpy per layer)"}))
                continue
            rows.append((method, child(case, method)))
            print(case, method, rows[-1], flush=True)
        for label, value in PUBLISHED.get(case, []):
            rows.append((label, {"value": value, "kind": "published", "note": "" if value else "811 s, 587 GB for Network"}))
        for method, r in rows:
            lines.append(f"| {case} | {method} | {cell(r, 'value', '.6g')} | {r['kind']} | {cell(r, 'seconds', '.2f')} "
                         f"| {cell(r, 'rss_mb', '.0f')} | {r.get('note', '')} |")
    write_table(lines, args.out)


def cell(row: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """``row[key] * scale`` formatted with ``spec``, or ``-`` when it is missing."""
    return "-" if row.get(key) is None else format(scale * row[key], spec)


def write_table(lines: list[str], out: str | Path) -> None:
    """Write the markdown ``lines`` to ``out`` (its folder created) and print them."""
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
