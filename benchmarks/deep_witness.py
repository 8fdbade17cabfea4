"""Witnessed lower bounds on GLipSDP's deep nets, where the float64 enclosure of a witness is too
wide and only the exact re-check (:mod:`lipbound.methods.rounding_exact`) confirms it (issue 13).

For each network of ``../shared/realnets/glipsdp_scalability`` (skipped when absent): the value of
``lower`` at its default budget (a witnessed lower bound, L2 -> L2), its wall time and witness form;
the same witness re-checked by the float64 path alone (the baseline, in the same run: the exact
fallback switched off) and by the default path, with the time of that re-check; and the exact
work one pass costs against :data:`~lipbound.methods.rounding_exact.WORK_CAP` (above it the exact
path declines, as the float64 path does).

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/deep_witness.py [--nets mlp_L65_W32 ...]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path


import lipbound
from lipbound.errors import InvalidInput
from lipbound.methods import rounding, rounding_exact
from lipbound.methods.budget import graph_macs

FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "realnets" / "glipsdp_scalability"
NETS = ("mlp_L33_W16", "mlp_L33_W32", "mlp_L65_W16", "mlp_L65_W32", "cnn_C17_CH16")


def _recheck(graph: lipbound.Graph, witness, exact: bool) -> tuple[float, float]:
    """``(value, seconds)`` of ``witness.recheck`` with or without the exact fallback (NaN: declined)."""
    start = time.perf_counter()
    with rounding.exact_fallback(exact):
        try:
            value = witness.recheck(graph)
        except InvalidInput:
            value = math.nan
    return value, time.perf_counter() - start


def row(name: str) -> str:
    graph = lipbound.as_graph(FOLDER / f"{name}.onnx")  # as loaded, as the CLI runs it
    passes = graph_macs(graph)
    if 3 * passes > rounding_exact.WORK_CAP:
        return (f"| {name} | not run | | | | | {passes:,} MACs/pass: a Jacobian re-check (3 passes) is above "
                f"the cap {rounding_exact.WORK_CAP:,}: declined |")
    start = time.perf_counter()
    result = lipbound.lower_bound(graph)
    wall = time.perf_counter() - start
    float_value, _ = _recheck(graph, result.witness, exact=False)
    exact_value, seconds = _recheck(graph, result.witness, exact=True)
    return (f"| {name} | {result.value:.6g} ({result.details.get('form')}) | {wall:.1f} | {float_value:.6g} | "
            f"{exact_value:.6g} | {seconds:.3f} | {passes:,} MACs/pass |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="*", default=list(NETS))
    args = parser.parse_args()
    if not FOLDER.is_dir():
        raise SystemExit(f"{FOLDER} is not present")
    print("| network | lower (form) | lower wall s | float64-only re-check | exact re-check | re-check s | exact work |")
    print("|---|---|---|---|---|---|---|")
    for name in args.nets:
        print(row(name), flush=True)


if __name__ == "__main__":
    main()
