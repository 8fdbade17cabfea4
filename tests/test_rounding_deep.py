"""The float64 enclosure's error bounds (``methods/rounding.enclose``) hold on deep nets, where the
element-wise bound is replaced by the norm-wise one (a bound of ``||error||_2`` carried through each
layer's certified norm): the exact value of the network, computed in rational arithmetic from the
same float64 weights and inputs, lies within ``errors[node]`` of ``values[node]`` at every node."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from lipbound import as_graph
from lipbound.methods.rounding import enclose


def deep_mlp(depth: int, width: int, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width).double()
        with torch.no_grad():  # norm ~1.5 per layer: the values neither vanish nor explode
            lin.weight.copy_(torch.randn(width, width, generator=g, dtype=torch.float64) * 1.5 / width ** 0.5)
            lin.bias.copy_(torch.randn(width, generator=g, dtype=torch.float64) * 0.1)
        layers += [lin, nn.ReLU()]
    out = nn.Linear(width, 3).double()
    return nn.Sequential(*layers, out)


def exact_forward(net: nn.Sequential, x: torch.Tensor) -> list[Fraction]:
    """The network in exact rational arithmetic on the float64 weights and input."""
    h = [Fraction(float(v)) for v in x]
    for m in net:
        if isinstance(m, nn.Linear):
            w = [[Fraction(float(v)) for v in row] for row in m.weight.detach()]
            b = [Fraction(float(v)) for v in m.bias.detach()]
            h = [sum((wi * hi for wi, hi in zip(row, h)), Fraction(0)) + bi for row, bi in zip(w, b)]
        else:
            h = [max(v, Fraction(0)) for v in h]
    return h


@pytest.mark.parametrize("depth, seed", [(8, 0), (24, 1), (40, 2)])
def test_enclosure_contains_the_exact_output(depth, seed):
    width = 6
    net = deep_mlp(depth, width, seed)
    graph = as_graph(net, (width,))
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    enc = enclose(graph, x)
    value, error = enc.values[graph.output], enc.errors[graph.output]
    assert bool(torch.isfinite(error).all())
    for i in range(len(x)):
        exact = exact_forward(net, x[i])
        for j, e in enumerate(exact):
            gap = abs(Fraction(float(value[i, j])) - e)
            assert gap <= Fraction(float(error[i, j])), f"depth {depth}, point {i}, output {j}: {float(gap)} > {float(error[i, j])}"
