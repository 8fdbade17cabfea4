"""Witnessed lower bound ``lower`` on CNNs within its time budget (issue 13, item 3).

For each network and each version of the code (``--src``, one child process per pair, run one after
the other in the same run so that both see the same machine load): the value of ``lower`` (a
witnessed lower bound, L2 -> L2, over all of ``R^n``), the wall time of the call against its
``time_budget``, the ascent steps completed, the witness form, and an **independent float64
re-check** of the witness: ``||f(x) - f(y)|| / ||x - y||`` for a pair, ``||J(x) v|| / ||v||`` with the
dense autograd Jacobian for a point, both evaluated on the ``nn.Module`` when there is one (the
GLipSDP ``.pt`` file; ``cifar10_resnet_2b.onnx`` through its tensor-identical α,β-CROWN ``.pth``, the
paper CNN's module), on the float64 lipbound graph's plain forward otherwise (OVAL21).

Networks: the random-weight paper CNN (:mod:`lipbound.examples.paper_cnn`, the issue's "bundled demo
CNN"), and from ``../shared/realnets`` (skipped when absent) ``oval21_cifar_base_kw.onnx``,
``cifar10_resnet_2b.onnx`` and ``glipsdp_LeNet5ReLU.pt`` (GLipSDP's published sampled lower bound for
it: 9.519). ``--data`` passes the VNN-LIB box centres of ``../shared/realnets/vnnlib`` (real test
images: ``cifar10_resnet2b_*`` for the CIFAR nets, ``mnistfc_*`` for the MNIST ones) as ``data=``.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/cnn_lower.py --src /tmp/base13/src --src src [--budget 30]``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALNETS = ROOT.parent / "shared" / "realnets"
NETWORKS = {  # name: (file in REALNETS or None, torch oracle file or None, VNN-LIB pattern for --data)
    "paper CNN (random weights)": (None, None, "mnistfc_*"),
    "oval21_cifar_base_kw.onnx": ("oval21_cifar_base_kw.onnx", None, "cifar10_resnet2b_*"),
    "cifar10_resnet_2b.onnx": ("cifar10_resnet_2b.onnx", "abcrown_cifar10_resnet2b.pth", "cifar10_resnet2b_*"),
    "glipsdp_LeNet5ReLU.pt": ("glipsdp_LeNet5ReLU.pt", "glipsdp_LeNet5ReLU.pt", "mnistfc_*"),
}


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(name: str):
    """``(graph, oracle)``: the lipbound graph and a float64 function of a batch for the re-check."""
    import lipbound
    import torch

    file, oracle_file, _ = NETWORKS[name]
    if file is None:
        net = _module(ROOT / "src" / "lipbound" / "examples" / "paper_cnn.py", "paper_cnn").random_mnist4().eval()
        return lipbound.as_graph(net, (1, 28, 28)), net.double()
    ex = _module(ROOT / "examples" / "realnets.py", "lipbound_examples_realnets")
    graph = ex.load_realnet(REALNETS / file)
    if oracle_file is not None:
        loader, _ = ex.SUITE[oracle_file]
        return graph, loader(REALNETS / oracle_file)[0].double().eval()
    return graph, graph.to(device="cpu", dtype=torch.float64).forward


def _recheck(oracle, w: dict) -> float:
    """What the witness claims, evaluated in float64 by ``oracle`` alone (module doc)."""
    import torch

    x = torch.as_tensor(w["x"], dtype=torch.float64)
    if w["form"] == "pair":
        y = torch.as_tensor(w["y"], dtype=torch.float64)
        with torch.no_grad():
            return float((oracle(x[None]) - oracle(y[None])).norm() / (x - y).norm())
    v = torch.as_tensor(w["v"], dtype=torch.float64)
    j = torch.autograd.functional.jacobian(lambda z: oracle(z[None]).reshape(-1), x)
    return float((j.reshape(j.shape[0], -1) @ v.reshape(-1)).norm() / v.norm())


def child(name: str, budget: float, seed: int, data: bool) -> dict:
    """Run ``lower`` on one network with the imported ``lipbound`` and re-check its witness."""
    import lipbound
    import torch
    from lipbound.methods.lower import lower

    torch.set_num_threads(1)
    graph, oracle = _load(name)
    kw = {}
    if data:
        from lipbound.frontends.vnnlib import load_vnnlib

        paths = sorted(glob.glob(str(REALNETS / "vnnlib" / NETWORKS[name][2])))
        kw["data"] = torch.stack([load_vnnlib(p, graph.input_shape).region.center for p in paths])
    t0 = time.perf_counter()
    res = lower(graph, time_budget=budget, seed=seed, **kw)
    wall = time.perf_counter() - t0
    w = res.witness
    return {"src": str(Path(lipbound.__file__).parents[1]), "value": res.value, "wall": wall,
            "steps": res.details.get("steps_done"), "form": res.details.get("form"),
            "stopped_by": res.details.get("stopped_by"), "recheck": None if w is None else _recheck(oracle, w)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a lipbound src folder (repeat to compare; default: src)")
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", action="store_true", help="VNN-LIB box centres as data= starts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.budget, args.seed, args.data)))
        return
    srcs = args.src or [str(ROOT / "src")]
    present = [n for n, (f, _, _) in NETWORKS.items() if f is None or (REALNETS / f).is_file()]
    print(f"time_budget {args.budget:g} s, seed {args.seed}, data starts: {args.data}")
    print("| network | src | lower | float64 re-check | form | wall s | ascent steps | stopped by |")
    print("|---|---|---|---|---|---|---|---|")
    for name in present:
        for src in srcs:
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="1")
            cmd = [sys.executable, __file__, "--child", name, "--budget", str(args.budget), "--seed", str(args.seed)]
            out = subprocess.run(cmd + (["--data"] if args.data else []), env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {name} | {src} | failed: {out.stderr.strip().splitlines()[-1]} | | | | | |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {src} | {r['value']:.4g} | {r['recheck']:.6g} | {r['form']} | {r['wall']:.1f} | "
                  f"{r['steps']} | {r['stopped_by']} |", flush=True)


if __name__ == "__main__":
    main()
