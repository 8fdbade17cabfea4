"""How much of a local bracket is lost to loose pre-activation bounds? (issue 10, diagnostic)

For each network of ../shared/realnets and its first VNN-LIB boxes (skipped when absent):

* the fraction of unstable ReLUs per layer under CROWN (sound bounds, :func:`crown_bounds`) and under
  **sampled ranges**: the smallest and largest pre-activation of every neuron seen at uniform samples of
  the box and at the ends of projected sign-gradient ascent of that neuron's pre-activation (one ascent
  per neuron and direction). Sampled ranges lie *inside* the true ranges: they show how many neurons
  really switch, never a bound;
* LipSDP (``lipsdp``) on the graph localized with CROWN's bounds (a certified local upper bound) and on
  the graph localized with the sampled ranges (**not certified**: an estimate of what near-exact pre
  bounds could give; as the ranges grow to the true ones it can only grow);
* the witnessed lower bound of ``lower`` on the box, for the ratio.

A large gap between the two LipSDP columns says the bracket is limited by the bound propagation, not by
LipSDP nor by the lower-bound search.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/preactivation_gap.py [--props 1] [--budget 60] [--only NAME ...]
"""

from __future__ import annotations

import sys
import time

import torch

import lipbound
from lipbound.graph.ir import Graph, Input
from lipbound.methods.propagation import crown_bounds
from lipbound.methods.region import Box

from propagation import arguments, boxes, unstable

CASES = [  # (network file, glob of its VNN-LIB properties): the deep MLPs whose local brackets stay wide
    ("eran_mnist_relu_9x200.onnx", "eran_9x200_*.vnnlib"),
    ("mnistfc_256x6.onnx", "mnistfc_prop_*.vnnlib"),
    ("mnistfc_256x2.onnx", "mnistfc_prop_*.vnnlib"),
]
SAMPLES = 4000  # uniform points of the box
ASCENT_STEPS = 25  # projected sign-gradient steps per neuron and direction


def _inputs_of(graph: Graph, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The input of each activation node ``names`` at the batch ``x``, flattened per point."""
    env: dict[str, torch.Tensor] = {}
    for node in graph:
        env[node.name] = x if isinstance(node, Input) else node.evaluate(*(env[i] for i in node.inputs))
    return {k: env[graph.nodes[k].inputs[0]].flatten(1) for k in names}


def sampled_ranges(graph: Graph, box: Box, names: list[str], gen: torch.Generator) -> dict[str, tuple]:
    """Per activation node, the smallest and largest input value of each neuron met at samples and at
    the ends of one ascent per neuron and sign (inside the true range: an inner estimate)."""
    g64 = graph.to(dtype=torch.float64)
    lo, hi = box.low.double(), box.high.double()
    with torch.no_grad():
        seen = _inputs_of(g64, lo + (hi - lo) * torch.rand(SAMPLES, *lo.shape, generator=gen, dtype=torch.float64), names)
    out = {k: [v.min(0).values, v.max(0).values] for k, v in seen.items()}
    for k in names:
        n = out[k][0].numel()
        for sign in (1.0, -1.0):
            x = lo + (hi - lo) * torch.rand(n, *lo.shape, generator=gen, dtype=torch.float64)
            for step in range(ASCENT_STEPS):
                x.requires_grad_(True)
                z = _inputs_of(g64, x, [k])[k].diagonal()
                (grad,) = torch.autograd.grad((sign * z).sum(), x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(x + (hi - lo) / 8 * 0.85 ** step * grad.sign(), lo), hi)
            with torch.no_grad():
                z = _inputs_of(g64, x, [k])[k].diagonal()
            out[k] = [torch.minimum(out[k][0], z), torch.maximum(out[k][1], z)]
    return {k: (lu[0], lu[1]) for k, lu in out.items()}


def _lipsdp(graph: Graph, box: Box, pre: dict, budget: float) -> float:
    localized = graph.localized(box, pre)
    return lipbound.estimate(localized, methods=["lipsdp"], time_budget=budget, seed=0).upper


def main() -> None:
    args = arguments(__doc__, 60.0, "time budget of each LipSDP and lower call (s)")
    if args is None:
        return
    gen = torch.Generator().manual_seed(0)
    print("| network | property | unstable per layer, CROWN | same, sampled ranges | lower | LipSDP, CROWN bounds "
          "(certified) | LipSDP, sampled ranges (not certified) | ratio CROWN / sampled | s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for net, graph, prop, box in boxes(CASES, args):
        t0 = time.perf_counter()
        crown = crown_bounds(graph, box)
        seen = sampled_ranges(graph, box, list(crown), gen)
        for k, (l, u) in crown.items():  # an inner estimate must lie inside the sound bounds
            assert bool((l.flatten() <= seen[k][0] + 1e-9).all() and (seen[k][1] <= u.flatten() + 1e-9).all()), k
        sampled = {k: (seen[k][0].reshape(l.shape), seen[k][1].reshape(l.shape)) for k, (l, _) in crown.items()}
        lower = lipbound.estimate(graph, domain=box, methods=["lower"], time_budget=args.budget, seed=0).lower
        sound, guess = _lipsdp(graph, box, crown, args.budget), _lipsdp(graph, box, sampled, args.budget)
        fmt = lambda fs: " ".join(f"{f:.2f}" for f in fs)  # noqa: E731
        print(f"| {net} | {prop.name} | {fmt(unstable(graph, crown))} | {fmt(unstable(graph, sampled))} | "
              f"{lower:.4g} | {sound:.4g} | {guess:.4g} | {sound / guess:.3g} | {time.perf_counter() - t0:.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
