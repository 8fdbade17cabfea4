"""(d) An AlexNet-shaped network with random weights at 3 x 224 x 224 (PAPER_NOTES §6d).

The torchvision layout, defined in ``examples/alexnet_shaped.py`` (no torchvision): five convolutions with ReLU and three
3x3/stride-2 max poolings, adaptive average pooling to 6x6 (the identity at 224), three linear
layers; dropout vanishes in eval mode. PyTorch's default initialisation from a fixed seed (the
paper used the 2018 pretrained weights, which are not downloaded here).

Chains: conv1 and conv2 are alone (a max pooling follows each), conv3-conv4-conv5 is a chain of
three, and avgpool+flatten+fc1-fc2-fc3 another. Only those two chains' four pairs change between
AutoLip and SeqLip, so the ratio AutoLip / SeqLip does not depend on the max-pooling convention
(our AutoLip counts each overlapping 3x3/2 pooling as 2, the paper's code as 1).

Methods: certified AutoLip, the paper's AutoLip estimate (power-method norms) and SeqLip top-k
(``k`` singular triplets per layer of a chain by the block power method on the operator at its
true input size, float32, then the greedy; ``"sweep"`` passes for the conv layers' 43k-65k
neurons). The paper's committed ``alex.py`` used one singular triplet; it had computed 200.

    .venv/bin/python experiments/alexnet.py [--topk K] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from _common import machine, save, table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from alexnet_shaped import alexnet  # noqa: E402  (one definition, shared with benchmarks/autolip_speed.py)

import lipbound  # noqa: E402

PAPER = (3.62e7, 5.45e6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topk", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--iters", type=int, default=60, help="block power iterations for the top-k triplets")
    parser.add_argument("--quick", action="store_true", help="k = 1 only")
    args = parser.parse_args()
    ks = [1] if args.quick else args.topk
    t_start = time.perf_counter()
    model = alexnet()
    g = lipbound.as_graph(model, (3, 224, 224))
    auto = lipbound.autolip(g, progress=True)
    power = lipbound.autolip(g, certified=False)
    rows = [["AutoLip (certified)", auto.value, "-", "-", auto.seconds], ["AutoLip (power)", power.value, "-", "-", power.seconds]]
    pair_rows = []
    for k in ks:
        res = lipbound.seqlip(g, solver="topk", topk=k, topk_iter=args.iters, topk_dtype=torch.float32, progress=True)
        rows.append([f"SeqLip top-{k}", res.value, power.value / res.value, auto.value / res.value, res.seconds])
        # the paper's alex.py paired convolutions across max poolings, failed, and kept their AutoLip
        # factors: only the linear chain (fc1-fc2-fc3) was optimised
        fc = [c for c in res.details["chains"] if c["affines"][-1] == g.fused().output][0]
        gain = fc["autolip"] / fc["constant"]
        rows.append([f"SeqLip top-{k}, linear chain only (paper's code)", power.value / gain, gain, gain, "-"])
        for c in res.details["chains"]:
            for pr in c["pairs"]:
                pair_rows.append([k, " -> ".join(pr["between"]), pr["neurons"], pr["value"], pr["autolip_factor"],
                                  pr["autolip_factor"] / pr["value"], pr["info"].get("strategy"),
                                  pr["info"].get("rounds"), pr["info"].get("flips"), pr["seconds"]])
        print(table([], [rows[-1]]).splitlines()[-1], flush=True)
    rows.append(["paper: AutoLip / greedy SeqLip (k = 1, linear chain only)", f"{PAPER[0]:.3g} / {PAPER[1]:.3g}",
                 PAPER[0] / PAPER[1], "-", "-"])
    text = (f"# (d) AlexNet-shaped network, random weights, 3x224x224\n\n{machine()}; "
            f"{time.perf_counter() - t_start:.0f} s in all; top-k triplets from {args.iters} block power iterations "
            "(float32).\n\n" + table(["method", "value", "AutoLip(power) / value", "AutoLip(certified) / value",
                                      "seconds"], rows)
            + "\n\n## Pairs\n\n" + table(["k", "pair", "neurons", "value", "AutoLip factor", "gain", "greedy",
                                          "rounds", "flips", "seconds"], pair_rows) + "\n")
    print(f"wrote {save('alexnet.md', text)}")


if __name__ == "__main__":
    main()
