"""Device check of local bounds: pre-activation bounds and local certified bounds computed on a CUDA
graph against the same on the CPU, and sampled pre-activations/Jacobians on the GPU inside them.

    PYTHONPATH=src python benchmarks/gpu_local_check.py
"""
import time

import torch
from torch import nn

import lipbound
from lipbound.methods.propagation import localize

torch.manual_seed(0)
nets = {
    "mlp": (nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5)), (20,)),
    "cnn": (nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.GELU(),
                          nn.Flatten(), nn.Linear(8 * 7 * 7, 10)), (1, 16, 16)),
}
for name, (net, shape) in nets.items():
    net = net.double().eval()
    x0 = torch.rand(shape, dtype=torch.float64)  # one region per net, the same on both devices
    pts0 = x0 + 0.05 * (2 * torch.rand(512, *shape, dtype=torch.float64) - 1)
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and not torch.cuda.is_available():
            print("no cuda"); continue
        g = lipbound.as_graph(net, shape, device=dev)
        region = lipbound.Ball(x0, 0.05, norm="inf")
        t = time.perf_counter()
        local = localize(g, region)
        dt = time.perf_counter() - t
        # pre-activations sampled inside the region on the same device
        pts = pts0.to(dev)
        bad = 0
        acts = {n.name: n for n in local if n.kind == "activation"}
        vals = {}
        xx = pts
        for node in local:
            vals[node.name] = xx if node.kind == "input" else node.evaluate(*(vals[i] for i in node.inputs))
        for nm, node in acts.items():
            z = vals[node.inputs[0]].cpu()
            l, u = node.pre
            bad += int(((z < l) | (z > u)).sum())
        rep = lipbound.estimate(g, methods=["autolip", "eclipse-fast", "lower"], domain=region, progress=False,
                                time_budget=20)
        print(f"{name} {dev}: localize {dt:.3f}s, samples outside pre {bad}, unstable {len(local.unstable_neurons())}, "
              f"upper {rep.upper:.6g} lower {rep.lower}")
