"""CNN layer norms and certified AutoLip (issue 13): per convolution, the Gram-iteration bound,
the DFT/SVD bound (the reference: exact norm of the circular layer), the power-method value (a
lower bound) and the seconds of each; then certified AutoLip per network with the per-frequency
SVD (the path before issue 13, on the half spectrum) and with ``method="auto"`` (what runs now).

Networks: the CNNs of ../shared/realnets (skipped when absent), the AlexNet-shaped net (random
weights, 3x224x224) and one 256-channel 3x3 convolution at 32x32.

    .venv/bin/python benchmarks/cnn.py [--quick]      # writes benchmarks/results/cnn.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import lipbound  # noqa: E402
from alexnet_shaped import alexnet  # noqa: E402
from lipbound.linalg.conv import Conv  # noqa: E402
from lipbound.linalg.spectral import power_method  # noqa: E402
from realnets import REALNETS, load_realnet  # noqa: E402

CNN_FILES = ["glipsdp_LeNet5ReLU.pt", "glipsdp_2C2F.pt", "abcrown_eran_mnist_conv_small_nat.pth",
             "abcrown_cifar10_resnet2b.pth", "oval21_cifar_base_kw.onnx", "oval21_cifar_wide_kw.onnx"]


def graphs(quick: bool):
    for name in CNN_FILES:
        if (REALNETS / name).is_file():
            yield name, lambda name=name: load_realnet(REALNETS / name)
    torch.manual_seed(0)
    wide = nn.Conv2d(256, 256, 3, padding=1, bias=False)
    yield "Conv2d 256->256 3x3 at 32x32", lambda: lipbound.as_graph(wide, (256, 32, 32))
    if not quick:
        torch.manual_seed(0)
        net = alexnet()
        yield "AlexNet-shaped (random)", lambda: lipbound.as_graph(net, (3, 224, 224))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def with_method(method: str, fn):
    old = Conv.method
    Conv.method = method
    try:
        return timed(fn)
    finally:
        Conv.method = old


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the AlexNet-shaped net")
    args = parser.parse_args()
    rows, nets = [], []
    for name, build in graphs(args.quick):
        svd_auto, t_svd = with_method("svd", lambda: lipbound.autolip(build(), certified=True).value)
        auto, t_auto = with_method("auto", lambda: lipbound.autolip(build(), certified=True).value)
        nets.append((name, svd_auto, t_svd, auto, t_auto))
        print(nets[-1], flush=True)
        for node in build().fused().affine_nodes():
            convs = [o for o in getattr(node.op, "ops", [node.op]) if isinstance(o, Conv)]
            for conv in convs:
                conv = conv.to(dtype=torch.float64)
                gram, t_gram = with_method("gram", conv.structural_bound)
                svd, t_dft = with_method("svd", conv.structural_bound)
                power, t_pow = timed(lambda: power_method(conv, k=1, tol=1e-5, max_iter=500,
                                                          generator=torch.Generator().manual_seed(0)).sigma)
                rows.append((name, conv.label, str(conv.in_shape), gram.value, t_gram, svd.value, t_dft,
                             gram.value / svd.value - 1, power, t_pow, svd.value / power - 1))
                print(rows[-1], flush=True)
    lines = ["# CNN layer norms and certified AutoLip", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", "",
             "## Convolutions: Gram iteration vs DFT/SVD (both certified), power method (lower bound, k=1, tol 1e-5, at most 500 steps)", "",
             "| network | layer | input | Gram bound | Gram s | DFT/SVD bound | SVD s | Gram/SVD - 1 | power | power s "
             "| SVD/power - 1 |", "|" + "---|" * 11]
    lines += ["| {} | {} | {} | {:.6g} | {:.3f} | {:.6g} | {:.3f} | {:.1e} | {:.6g} | {:.3f} | {:.1e} |".format(*r)
              for r in rows]
    lines += ["", "## Certified AutoLip: per-frequency SVD vs method='auto' (same run, fresh graphs)", "",
              "| network | AutoLip (SVD) | s | AutoLip (auto) | s |", "|---|---|---|---|---|"]
    lines += ["| {} | {:.6g} | {:.2f} | {:.6g} | {:.2f} |".format(*n) for n in nets]
    text = "\n".join(lines)
    print(text)
    (ROOT / "benchmarks" / "results" / "cnn.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
