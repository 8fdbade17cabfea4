"""LipSDP on CNNs (``solver="blocks"``, :mod:`lipbound.methods.lipsdp_conv`) beside AutoLip:
certified values, ratio to AutoLip, seconds, dual bound and gap; same machine, one run.

    .venv/bin/python benchmarks/sdp_cnn.py [--budget 280] [--only NAME ...]
    # prints the table and writes benchmarks/results/sdp_cnn.md

Networks: the random-weight paper CNN (:func:`lipbound.examples.paper_cnn.random_mnist4`), and from
``../shared/realnets`` (the script exits when it is absent) GLipSDP's LeNet5ReLU and 2C2F, ERAN
ConvSmall, OVAL21 base and wide, ResNet-2B (loaded through ``examples/realnets.py``, on the model's
own input: normalisation outside the model not included) and the ``cnn_*`` nets of GLipSDP's
Scalability study.
``lipsdp`` gets ``--budget`` seconds for its whole call (a chain whose start and check alone would
not fit is refused, and AutoLip's bound stands: the row says so). Every (network, method) runs in a
fresh subprocess with one BLAS thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REALNETS = REPO.parent / "shared" / "realnets"
PAPER_CNN = "paper CNN (random weights)"
NETS = (PAPER_CNN, "glipsdp_LeNet5ReLU.pt", "glipsdp_2C2F.pt", "abcrown_eran_mnist_conv_small_nat.pth",
        "oval21_cifar_base_kw.onnx", "oval21_cifar_wide_kw.onnx", "cifar10_resnet_2b.onnx",
        "glipsdp_scalability/cnn_C3_CH8.onnx",
        "glipsdp_scalability/cnn_C5_CH8.onnx", "glipsdp_scalability/cnn_C3_CH16.onnx",
        "glipsdp_scalability/cnn_C17_CH16.onnx")


def _run_one(path: str, method: str, budget: float) -> dict:
    """Run one method on one network in this process; returns a JSON-able row."""
    import lipbound
    from lipbound.errors import LipboundError
    from lipbound.methods.autolip import autolip
    from lipbound.methods.lipsdp import lipsdp

    sys.path.insert(0, str(REPO / "examples"))
    from realnets import SUITE, load_realnet

    if path == PAPER_CNN:
        from lipbound.examples.paper_cnn import random_mnist4
        graph = lipbound.from_torch(random_mnist4().eval(), (1, 28, 28))
    else:
        graph = load_realnet(Path(path)) if Path(path).name in SUITE else lipbound.load(path)
    start = time.perf_counter()
    try:
        res = autolip(graph) if method == "autolip" else lipsdp(graph, solver="blocks", time_budget=budget)
    except LipboundError as exc:
        return {"value": None, "kind": "refused", "seconds": time.perf_counter() - start, "reason": str(exc)}
    d = res.details
    return {"value": res.value, "kind": res.kind, "seconds": time.perf_counter() - start,
            "gap": d.get("sdp_gap"), "sdp_lower": d.get("sdp_lower"), "start": d.get("start_value"), "stopped_by": d.get("stopped_by"),
            "iterations": d.get("iterations")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=280.0)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: PATH METHOD
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_run_one(args.one[0], args.one[1], args.budget)))
        return
    if not REALNETS.exists():
        sys.exit(f"{REALNETS} is absent: nothing to benchmark")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    lines = ["| network | AutoLip | lipsdp (blocks) | ratio | seconds | start (ECLipsE-Fast) | SDP dual bound | gap "
             "| stopped by |", "|---|---|---|---|---|---|---|---|---|"]
    for name in NETS:
        if args.only and not any(o in name for o in args.only):
            continue
        path = name if name == PAPER_CNN else str(REALNETS / name)
        rows = {}
        for method in ("autolip", "lipsdp"):
            out = subprocess.run([sys.executable, __file__, "--budget", str(args.budget), "--one", path, method],
                                 capture_output=True, text=True, env=env)
            rows[method] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                {"value": None, "kind": "error", "seconds": 0.0, "reason": out.stderr.strip().splitlines()[-1:]}
        a, s = rows["autolip"], rows["lipsdp"]
        if s["value"] is None:
            line = f"| {Path(name).stem} | {a['value']:.4g} | refused: {s.get('reason')} | | {s['seconds']:.0f} | | | | |"
        else:
            line = (f"| {Path(name).stem} | {a['value']:.4g} | {s['value']:.4g} ({s['kind']}) "
                    f"| {s['value'] / a['value']:.3f} | {s['seconds']:.0f} | {s['start']:.4g} | {s['sdp_lower']:.4g} "
                    f"| {s['gap']:.2f} | {s['stopped_by']} ({s['iterations']} L-BFGS iterations) |")
        print(line, flush=True)
        lines.append(line)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "sdp_cnn.md").write_text(
        f"# LipSDP on CNN chains (budget {args.budget:.0f} s per call, one BLAS thread, 2-core CPU shared "
        "with other jobs: seconds are noisy)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
