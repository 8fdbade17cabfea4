"""LipSDP at depth: lipbound's lipsdp (value, dual gap, seconds) beside eclipse-fast, AutoLip and
the ``eclipse-nn`` package (ECLipsE-Fast, ECLipsE), same networks, same machine, one run.

    .venv/bin/python benchmarks/sdp_scale.py [--budget 60] [--only NAME ...]
    # prints the table and writes benchmarks/results/sdp_scale.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sdp_scale.py --ipm-alone PATH [--budget 300]
    # the interior point alone on one network (iterations, CPU seconds, 10% point, gap), as JSON

Networks (from ``../shared/realnets``; the script exits when it is absent): every ``mlp_*`` net of
GLipSDP's Scalability study (``glipsdp_scalability/``, LeakyReLU MLPs on MNIST), GLipSDP's
residual FC-R18, ACAS Xu 1_1, mnistfc 256x2 and 256x6. ``lipsdp`` gets ``--budget`` seconds
(its whole call; ``details["sdp_lower"]`` is its dual bound on the SDP optimum, the gap is
``value / sdp_lower - 1``). ``eclipse-nn`` is installed by ``benchmarks/peers.py`` into
``benchmarks/.peers`` (no dependencies); it takes the weights of plain MLPs and assumes slopes in
``[0, 1]``, which holds for ReLU and LeakyReLU(alpha >= 0): its values are unverified estimates of
certified bounds. Every (network, method) runs in a fresh subprocess with one BLAS thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REALNETS = REPO.parent / "shared" / "realnets"
SCALABILITY = REALNETS / "glipsdp_scalability"
OTHERS = ("glipsdp_FC-R18.pt", "acasxu_1_1.onnx", "mnistfc_256x2.onnx", "mnistfc_256x6.onnx")
METHODS = ("lipsdp", "eclipse-fast", "autolip", "eclipse-nn ECLipsE-Fast", "eclipse-nn ECLipsE")


def cases() -> list[str]:
    mlps = sorted(SCALABILITY.glob("mlp_*.onnx"), key=lambda p: (int(p.stem.split("_W")[1]), int(p.stem[5:].split("_")[0])))
    return [str(p) for p in mlps] + [str(REALNETS / name) for name in OTHERS]


def _graph(path: str):
    import lipbound

    sys.path.insert(0, str(REPO / "examples"))
    from realnets import SUITE, load_realnet

    return load_realnet(Path(path)) if Path(path).name in SUITE else lipbound.load(path)


def _chain_weights(graph) -> list:
    """The dense weights of a plain chain affine -> activation -> ... -> affine (else None)."""
    from lipbound.graph.ir import Activation, Affine, Input

    g = graph.fused()
    order = list(g.nodes.values())  # topological order
    kinds = [type(n) for n in order if not isinstance(n, Input) and type(n).__name__ != "Output"]
    if not kinds or any(k not in (Affine, Activation) for k in kinds):
        return None
    if kinds[::2] != [Affine] * len(kinds[::2]) or kinds[1::2] != [Activation] * len(kinds[1::2]) or kinds[-1] is not Affine:
        return None
    return [n.op.to_dense().double() for n in order if isinstance(n, Affine)]


def run_one(path: str, method: str, budget: float) -> dict:
    """One method on one network, in this process."""
    import lipbound

    graph = _graph(path)
    t0 = time.perf_counter()
    if method.startswith("eclipse-nn"):
        sys.path.insert(0, str(HERE / ".peers"))
        from eclipse_nn.LipConstEstimator import LipConstEstimator

        weights = _chain_weights(graph)
        if weights is None:
            return {"value": None, "kind": "n/a", "note": "eclipse-nn takes plain MLPs only"}
        t0 = time.perf_counter()
        value = float(LipConstEstimator(weights=weights).estimate("ECLipsE_Fast" if method.endswith("Fast") else "ECLipsE"))
        return {"value": value, "kind": "estimate (unverified)", "seconds": time.perf_counter() - t0}
    options = {"time_budget": budget} if method == "lipsdp" else {}
    try:
        res = lipbound.methods.METHODS[method](graph, **options)
    except lipbound.LipboundError as exc:
        return {"value": None, "kind": "n/a", "note": str(exc)[:80]}
    out = {"value": res.value, "kind": res.kind, "seconds": time.perf_counter() - t0}
    if method == "lipsdp":
        d = res.details
        out.update(gap=d.get("sdp_gap"), note=f"{d['solver']}, {d['solver_status']}, order {d['lmi_order']}, "
                                               f"dual {d.get('sdp_lower', float('nan')):.6g}")
    return out


def ipm_alone(path: str, budget: float) -> dict:
    """lipsdp's interior point alone (its start and check excluded), as lipsdp calls it: value,
    iterations, process CPU seconds (per iteration), the first iteration within 10% of the value
    reached (``rho <= 1.21 rho_best``) and the CPU seconds to it, the dual gap."""
    import math

    from lipbound.methods.eclipse import balanced, fast_multipliers
    from lipbound.methods.lipsdp_ipm import solve_ipm
    from lipbound.methods.lmi_build import lmi_of_graph
    from lipbound.methods.sdp_verify import solving_margin

    lmi = balanced(lmi_of_graph(_graph(path)))
    red = lmi.reduced()
    interior, _ = fast_multipliers(lmi)
    clock: list[tuple[float, float]] = []
    c0 = time.process_time()
    _, rho, info = solve_ipm(red, t0=interior, time_budget=budget, margin=solving_margin(lmi, interior),
                             on_iterate=lambda y: clock.append((time.process_time() - c0, float(y[0]))))
    cpu = time.process_time() - c0
    at10 = next(i for i, (_, r) in enumerate(clock) if r <= 1.21 * rho)
    value, dual = (lmi.scale * math.sqrt(max(r, 0.0)) for r in (rho, info["dual_rho"]))
    its = info["iterations"]
    return {"value": value, "iterations": its, "cpu": cpu, "per_iteration": cpu / max(its, 1), "at10": at10,
            "cpu_at10": clock[at10][0], "gap": value / dual - 1 if dual > 0 else None, "status": info["solver_status"]}


def child(path: str, method: str, budget: float, timeout: float) -> dict:
    sys.path.insert(0, str(HERE))
    from peers import run_child

    return run_child(Path(__file__), ["--one", path, method, "--budget", str(budget)], timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=60.0, help="lipsdp's time budget (seconds)")
    ap.add_argument("--timeout", type=float, default=120.0, help="kill a peer run after this many seconds")
    ap.add_argument("--only", nargs="*", help="network file names (stems) to run")
    ap.add_argument("--out", default=str(HERE / "results" / "sdp_scale.md"))
    ap.add_argument("--one", nargs=2, metavar=("PATH", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--ipm-alone", metavar="PATH", help="print the interior point's own figures on one network "
                                                         "(ipm_alone) as JSON, in this process, and exit")
    args = ap.parse_args()
    if args.ipm_alone:
        print(json.dumps(ipm_alone(args.ipm_alone, args.budget)))
        return
    if args.one:
        print(json.dumps(run_one(*args.one, args.budget)))
        return
    if not REALNETS.is_dir():
        sys.exit(f"{REALNETS} is absent: nothing to run")
    sys.path.insert(0, str(HERE))
    from peers import cell, install_peer, write_table

    status = install_peer()
    lines = ["# LipSDP at depth (L2 -> L2 certified bounds)", "",
             f"Machine: {os.cpu_count()} CPU cores shared with other jobs (timings are noisy); one BLAS thread per run, "
             f"each run in a fresh process. lipsdp budget {args.budget:.0f} s. gap = lipsdp value / its dual bound on "
             f"the SDP optimum - 1. {status}; its values are unverified.", "",
             "| network | method | value | kind | gap | seconds | note |", "|---|---|---:|---|---:|---:|---|"]
    for path in cases():
        name = Path(path).name.split(".")[0]
        if args.only and name not in args.only:
            continue
        for method in METHODS:
            r = child(path, method, args.budget, args.budget + 60 if method == "lipsdp" else args.timeout)
            print(name, method, r, flush=True)
            gap = cell(r, "gap", ".2f", 100) + ("%" if r.get("gap") is not None else "")
            lines.append(f"| {name} | {method} | {cell(r, 'value', '.6g')} | {r['kind']} | {gap} | "
                         f"{cell(r, 'seconds', '.1f')} | {r.get('note', '')} |")
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
