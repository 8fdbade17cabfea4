"""AutoLip speed: our layer norms (Lanczos, ``tol=1e-4``) against the reference power method (fixed 500 iterations, one
vector, no stopping: the 2018 implementation's behaviour), per convolution and per network.

Networks: the CNNs of ../shared/realnets that the torch frontend builds (skipped when absent) and
an AlexNet-shaped net with random weights at 3x224x224. For every affine node holding a
convolution: time and value of the reference and of ours, the relative error of each against the
best known value of the norm (the exact SVD when the layer is small enough to materialise, else
the largest lower value found, including a long float64 run), and the certified bound. Then the
whole network: certified AutoLip and the power-method estimate, against the reference product.

    .venv/bin/python benchmarks/autolip_speed.py [--quick]      # writes benchmarks/results/autolip_speed.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import lipbound  # noqa: E402
from alexnet_shaped import alexnet  # noqa: E402
from lipbound.linalg.lanczos import lanczos_norm  # noqa: E402
from lipbound.linalg.spectral import DENSE_LIMIT, certified_norm, power_method  # noqa: E402
from realnets import REALNETS, eran_conv_small, glipsdp_2c2f, glipsdp_lenet5_relu  # noqa: E402


def networks(quick: bool):
    for file, loader in [("glipsdp_LeNet5ReLU.pt", glipsdp_lenet5_relu), ("glipsdp_2C2F.pt", glipsdp_2c2f),
                         ("abcrown_eran_mnist_conv_small_nat.pth", eran_conv_small)]:
        if (REALNETS / file).is_file():
            model, shape = loader(REALNETS / file)
            yield file, model, shape
    if not quick:
        yield "AlexNet-shaped (random)", alexnet(), (3, 224, 224)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def best_known(op, values: list[float]) -> tuple[float, str]:
    """The exact norm (SVD) when the layer can be materialised; else the best lower value found,
    with a long float64 block power run added for layers of moderate size, a 250-step Lanczos run
    at ImageNet size (the certified column brackets the norm from above)."""
    if op.in_numel * op.out_numel <= DENSE_LIMIT:
        return torch.linalg.matrix_norm(op.to(dtype=torch.float64).to_dense(), ord=2).item(), "SVD"
    if op.in_numel > 20000:  # Lanczos run to 250 steps (no stopping rule)
        long = lanczos_norm(op, tol=0.0, max_iter=250, generator=torch.Generator().manual_seed(7)).sigma
        return max(values + [long]), "best lower (+250 Lanczos steps)"
    long = power_method(op.to(dtype=torch.float64), k=8, tol=1e-10, max_iter=3000,
                        generator=torch.Generator().manual_seed(7)).sigma
    return max(values + [long]), "best lower (+long run)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the AlexNet-shaped net")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, nets = [], []
    for name, model, shape in networks(args.quick):
        graph = lipbound.as_graph(model, shape)
        # whole network first (fresh operators, nothing cached)
        cert, t_cert = timed(lambda: lipbound.autolip(graph, certified=True))
        power, t_power = timed(lambda: lipbound.autolip(lipbound.as_graph(model, shape), certified=False))
        ref_total, ref_product = 0.0, 1.0
        ops = [n.op for n in lipbound.as_graph(model, shape).fused().affine_nodes()]
        for op in ops:
            ref, t_ref = timed(lambda: power_method(op, k=1, tol=0.0, max_iter=500,
                                                    generator=torch.Generator().manual_seed(0)).sigma)
            ref_total += t_ref
            ref_product *= ref
            if "Conv" not in op.label:
                continue
            op._lipbound_norms = {}
            ours, t_ours = timed(lambda: lanczos_norm(op, tol=1e-4, generator=torch.Generator().manual_seed(0)))
            truth, how = best_known(op, [ref, ours.sigma])
            bound, t_bound = timed(lambda: certified_norm(op, dense_limit=0).value)
            rows.append((name, op.label, str(op.in_shape), ref, t_ref, (truth - ref) / truth, ours.sigma, t_ours,
                         ours.iterations, (truth - ours.sigma) / truth, t_ref / t_ours, truth, how, bound, t_bound))
        nets.append((name, cert.value, t_cert, power.value, t_power, ref_product, ref_total))

    lines = ["# AutoLip speed", "", f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU. The machine's 2 "
             "cores were shared with other jobs during this run: seconds are noisy (each row's columns were measured "
             "back to back).", "",
             "## Convolution layers: reference power method (500 iterations, k=1) vs ours (Lanczos, tol 1e-4)",
             "", "| network | layer | input | ref value | ref s | ref rel.err | ours value | ours s | iters | ours rel.err "
             "| speed-up | best known | how | certified (structural) | s |", "|" + "---|" * 15]
    for r in rows:
        lines.append("| {} | {} | {} | {:.6g} | {:.3f} | {:.1e} | {:.6g} | {:.3f} | {} | {:.1e} | {:.1f}x | {:.6g} | {} | "
                     "{:.6g} | {:.3f} |".format(*r))
    lines += ["", "## Whole networks", "", "| network | certified AutoLip | s | AutoLip (power) | s | reference: product of layer "
              "norms, 500 it., max-pool counted as 1 (the 2018 convention) | reference s |", "|---|---|---|---|---|---|---|"]
    for n in nets:
        lines.append("| {} | {:.6g} | {:.2f} | {:.6g} | {:.2f} | {:.6g} | {:.2f} |".format(*n))
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results" / "autolip_speed.md"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
