"""Certified accuracy against L2 radius: the bundled demo digits CNN on its 360 test images
(``--net demo``, the default), or mnistfc_256x2 on the 10 MNIST test images of the mnistfc
VNN-LIB files (``--net mnistfc``).

    python benchmarks/certified_accuracy.py [--net demo|mnistfc] [--workers 2]

The demo net: ``certify_dataset`` with the default set's certified methods and the logit-pair
constants, on the pixel box ``[0, 1]^64``, at radii 0.1, 0.25, 0.5; writes
``benchmarks/results/certified_accuracy_demo.md`` and ``.png``.

Each ``mnistfc_prop_<i>_0.03.vnnlib`` holds an MNIST test image as the box
``[max(x - eps, 0), min(x + eps, 1)]`` and its label; the image is read back from the box (a pixel
clipped at 0 is ``high - eps``, at 1 ``low + eps``, else the box's centre). The classifier is
``mnistfc_256x2.onnx``; the certified bound ``U`` is computed on the pixel box ``[0, 1]^784``
(certificates then cover perturbations that stay valid images), and each input also gets the
largest ball certified by local logit-pair constants (``local=True``, 30 s per input). Writes
``benchmarks/results/certified_accuracy.md`` and ``.png``. Skipped when ../shared/realnets is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REALNETS = HERE.parent.parent / "shared" / "realnets"
EPS = 0.03
RADII = [0.02, 0.05, 0.1]
METHODS = ["autolip", "seqlip", "lipsdp"]  # certified; LipSDP is the tightest here
BUDGET = 30.0  # seconds: for U, then for the local search of each input


def images(graph) -> tuple[torch.Tensor, torch.Tensor]:
    import lipbound

    xs, ys = [], []
    for i in range(10):
        prop = lipbound.load_vnnlib(REALNETS / "vnnlib" / f"mnistfc_prop_{i}_{EPS}.vnnlib", graph.input_shape)
        low, high = prop.region.low, prop.region.high
        x = torch.where(low <= 0, high - EPS, torch.where(high >= 1, low + EPS, (low + high) / 2)).clamp(0, 1)
        xs.append(x.to(torch.float32))
        ys.append(prop.label)
    return torch.stack(xs), torch.tensor(ys)


DEMO_RADII = [0.1, 0.25, 0.5]


def demo(workers: int) -> int:
    """Certified accuracy of the demo net on its shipped test split (module doc)."""
    import time

    from lipbound.examples.demo_net import demo_net, load_test_split
    from lipbound.sweep import certify_dataset

    x, y = load_test_split()
    t0 = time.perf_counter()
    summary = certify_dataset(demo_net(), x, y, DEMO_RADII, domain=(0, 1), workers=workers)
    seconds = time.perf_counter() - t0
    out = HERE / "results" / "certified_accuracy_demo"
    summary.plot(str(out.with_suffix(".png")))
    text = ["# Certified accuracy: the demo digits CNN on its 360 test images", "",
            "`python benchmarks/certified_accuracy.py --net demo`: `lipbound.certify_dataset(demo_net(), x, y, "
            f"radii={DEMO_RADII}, domain=(0, 1), workers={workers})` (default certified methods and logit-pair "
            f"constants, computed once); {seconds:.0f} s wall; plot: `certified_accuracy_demo.png`.", "", "```",
            summary.table(), "```", ""]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=["demo", "mnistfc"], default="demo")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.net == "demo":
        return demo(args.workers)
    if not REALNETS.is_dir():
        print("skipped: ../shared/realnets is absent")
        return 0
    import lipbound
    from lipbound.sweep import certify_dataset

    graph = lipbound.load(REALNETS / "mnistfc_256x2.onnx")
    x, y = images(graph)
    summary = certify_dataset(graph, x, y, RADII, domain=(0, 1), methods=METHODS, local=True, time_budget=BUDGET,
                              workers=args.workers)
    out = HERE / "results" / "certified_accuracy"
    summary.plot(str(out.with_suffix(".png")))
    text = ["# Certified accuracy: mnistfc_256x2 on the 10 MNIST images of the mnistfc VNN-LIB files", "",
            "`python benchmarks/certified_accuracy.py`: `lipbound.sweep.certify_dataset(graph, x, y, "
            f"radii={RADII}, domain=(0, 1), methods={METHODS}, local=True, time_budget={BUDGET:g}, workers=2)`; "
            "plot: `certified_accuracy.png`. Shared, loaded cores: the time budgets make these numbers "
            "depend on the load.", "", "```", summary.table(), "```", ""]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
