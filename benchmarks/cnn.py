"""CNN layer norms and certified AutoLip (issue 13): per convolution, the Gram-iteration and
shifted-Cholesky bounds, the DFT/SVD bound (the reference: exact norm of the circular layer), the
SVD norm of the layer's materialised matrix where it fits, the Lanczos value (a lower bound) and
the seconds of each; then certified AutoLip per network with SVDs everywhere (per frequency for
convolutions, of the weight or the materialised matrix for dense maps: the path before issue 13)
and with ``method="auto"`` (what runs now), with every affine layer's certified norm in both runs.

Networks: the CNNs of ../shared/realnets (skipped when absent), the AlexNet-shaped net (random
weights, 3x224x224) and one 256-channel 3x3 convolution at 32x32.

    .venv/bin/python benchmarks/cnn.py [--quick]      # writes benchmarks/results/cnn.md
    .venv/bin/python benchmarks/cnn.py --wide 5       # only the 256-channel conv's certified norm, 5 times

``--wide N`` prints the CPU seconds (``time.process_time``, one thread) of ``N`` calls of
``Conv.structural_bound()`` on the 256-channel conv and its value; run it with another checkout's
``src`` on ``PYTHONPATH`` for a before/after pair (it uses only the public operator API).
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
from lipbound.linalg.lanczos import lanczos_norm  # noqa: E402
from lipbound.linalg.operators import Dense  # noqa: E402
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
    """``fn()`` timed, with ``Conv.method`` and ``Dense.method`` set to ``method`` (``"gram"``:
    dense maps keep ``"auto"``)."""
    old = Conv.method, Dense.method
    Conv.method, Dense.method = method, method if method in ("svd", "cholesky") else "auto"
    try:
        return timed(fn)
    finally:
        Conv.method, Dense.method = old


MATERIALISE = 1 << 22  # the layer's SVD norm (materialised matrix) up to this many entries


def conv_row(name: str, conv: Conv) -> tuple:
    conv = conv.to(dtype=torch.float64)
    gram, t_gram = with_method("gram", conv.structural_bound)
    chol, t_chol = with_method("cholesky", conv.structural_bound)
    svd, t_dft = with_method("svd", conv.structural_bound)
    power, t_pow = timed(lambda: lanczos_norm(conv, tol=1e-5, generator=torch.Generator().manual_seed(0)).sigma)
    exact = (torch.linalg.matrix_norm(conv.to_dense(), ord=2).item()
             if conv.in_numel * conv.out_numel <= MATERIALISE else float("nan"))
    return (name, conv.label, str(conv.in_shape), gram.value, t_gram, chol.value, t_chol, svd.value, t_dft,
            exact, min(gram.value, chol.value) / exact - 1, max(gram.value, chol.value) / svd.value - 1,
            power, t_pow, chol.value / power - 1)


def wide_conv_seconds(repeats: int) -> None:
    """The 256-channel conv's certified norm, ``repeats`` times: value and CPU seconds of each."""
    torch.manual_seed(0)
    wide = nn.Conv2d(256, 256, 3, padding=1, bias=False)
    node = next(iter(lipbound.as_graph(wide, (256, 32, 32)).fused().affine_nodes()))
    conv = next(o for o in getattr(node.op, "ops", [node.op]) if isinstance(o, Conv)).to(dtype=torch.float64)
    seconds = []
    for _ in range(repeats):
        t0 = time.process_time()
        value = conv.structural_bound().value
        seconds.append(time.process_time() - t0)
    print(f"value {value:.10f} CPU s " + " ".join(f"{t:.3f}" for t in seconds)
          + f" min {min(seconds):.3f} median {sorted(seconds)[len(seconds) // 2]:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the AlexNet-shaped net")
    parser.add_argument("--wide", type=int, default=0, metavar="N",
                        help="only time the 256-channel conv's certified norm N times")
    args = parser.parse_args()
    if args.wide:
        wide_conv_seconds(args.wide)
        return
    rows, nets, layers = [], [], []
    for name, build in graphs(args.quick):
        before, t_before = with_method("svd", lambda: lipbound.autolip(build(), certified=True))
        after, t_after = with_method("auto", lambda: lipbound.autolip(build(), certified=True))
        nets.append((name, before.value, t_before, after.value, t_after, t_before / t_after, after.value / before.value - 1))
        print(nets[-1], flush=True)
        for b, a in zip(before.layers, after.layers):
            if b.certified is not None:
                layers.append((name, b.name, b.type, b.certified, b.certified_how, a.certified, a.certified_how,
                               a.certified / b.certified - 1))
        for node in build().fused().affine_nodes():
            for conv in [o for o in getattr(node.op, "ops", [node.op]) if isinstance(o, Conv)]:
                rows.append(conv_row(name, conv))
                print(rows[-1], flush=True)
    lines = ["# CNN layer norms and certified AutoLip", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU. The machine's 2 cores were shared "
             "with other jobs during this run: seconds are noisy (compare columns of one row, measured back to back).", "",
             "## Convolutions: certified bounds (Gram iteration, shifted Cholesky, DFT/SVD), the exact norm where the "
             "matrix fits, Lanczos lower value (tol 1e-5)", "",
             "| network | layer | input | Gram | s | Cholesky | s | DFT/SVD | s | SVD of the matrix | min(Gram, Chol)/SVD - 1 "
             "| max(Gram, Chol)/(DFT/SVD) - 1 | Lanczos | s | Chol/Lanczos - 1 |", "|" + "---|" * 15]
    lines += ["| {} | {} | {} | {:.6g} | {:.3f} | {:.6g} | {:.3f} | {:.6g} | {:.3f} | {:.6g} | {:.1e} | {:.1e} | {:.6g} "
              "| {:.3f} | {:.1e} |".format(*r) for r in rows]
    lines += ["", "## Certified AutoLip: SVDs everywhere (before issue 13) vs method='auto' (same run, fresh graphs)", "",
              "| network | AutoLip (SVD) | s | AutoLip (auto) | s | speed-up | auto/SVD - 1 |", "|---|---|---|---|---|---|---|"]
    lines += ["| {} | {:.6g} | {:.2f} | {:.6g} | {:.2f} | {:.1f}x | {:.1e} |".format(*n) for n in nets]
    lines += ["", "## Every affine layer's certified norm in both runs", "",
              "| network | node | type | SVD path | how | auto | how | auto/SVD - 1 |", "|---|---|---|---|---|---|---|---|"]
    lines += ["| {} | {} | {} | {:.6g} | {} | {:.6g} | {} | {:.1e} |".format(*r) for r in layers]
    text = "\n".join(lines)
    print(text)
    (ROOT / "benchmarks" / "results" / "cnn.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
