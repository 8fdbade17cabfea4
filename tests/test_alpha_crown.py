"""alpha-CROWN (methods/alpha_crown.py, through propagation.alpha_crown_bounds and localize).

Oracles, none of them the code under test: the graph evaluated in float64 at dense samples and
the corners of each box (every pre-activation must lie in its bounds); the activation itself on a
dense grid of each neuron's interval (every optimisable line must stay below / above it); CROWN's
bounds (alpha-CROWN's must lie inside them, and be strictly tighter on deep ReLU nets)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbound.frontends.from_torch import from_torch
from lipbound.graph.ir import Activation
from lipbound.methods.alpha_crown import AlphaOptions, _lines, free_lines
from lipbound.methods.propagation import alpha_crown_bounds, crown_bounds, localize
from lipbound.methods.region import Box
from lipbound.methods.relaxations import relax
from test_propagation import assert_holds, points_of, random_region, widths

PWL = [nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.Hardtanh, nn.ReLU6, lambda: nn.LeakyReLU(-0.5)]
FAST = AlphaOptions(iterations=3, lr=0.3)


class ResConv(nn.Module):
    """A convolution, an activation, a residual add around a second convolution, a dense head."""

    def __init__(self, c: int, a1: nn.Module, a2: nn.Module, a3: nn.Module) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.a1, self.a2, self.a3 = a1, a2, a3
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        h = self.a1(self.c1(x))
        h = self.a2(self.c2(h) + h)
        return self.head(self.a3(h).flatten(1))


def random_net(g: torch.Generator, kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A random ``kind`` net with piecewise-linear activations (and a smooth one now and then)."""
    def act() -> nn.Module:
        if bool(torch.rand((), generator=g) < 0.15):
            return nn.Tanh()
        return PWL[int(torch.randint(len(PWL), (1,), generator=g))]()

    if kind == "mlp":
        w = [int(v) for v in torch.randint(2, 9, (5,), generator=g)]
        layers: list[nn.Module] = []
        for a, b in zip(w, w[1:]):
            layers += [nn.Linear(a, b), act()]
        return nn.Sequential(*layers[:-1]), (w[0],)
    c = int(torch.randint(1, 3, (1,), generator=g))
    return ResConv(c, act(), act(), act()), (c, 4, 4)


@pytest.mark.parametrize("kind,part", [(k, p) for k in ("mlp", "resconv") for p in range(4)])
def test_bounds_hold_at_samples_and_corners_and_lie_inside_crowns(kind, part):
    """4 x 15 random nets and regions (boxes and L2 balls) per kind: every sampled pre-activation
    lies in alpha-CROWN's bounds, and those lie inside CROWN's."""
    g = torch.Generator().manual_seed(10 * part + {"mlp": 1, "resconv": 2}[kind])
    for i in range(15):
        torch.manual_seed(100 * part + i)
        model, shape = random_net(g, kind)
        graph = from_torch(model.eval(), shape)
        region = random_region(g, shape)
        alpha = alpha_crown_bounds(graph, region, options=FAST)
        assert_holds(graph, alpha, points_of(region, 60, g), f"alpha-CROWN {kind} {i}")
        crown = crown_bounds(graph, region)
        for name, (l, u) in alpha.items():
            assert bool((l >= crown[name][0]).all() and (u <= crown[name][1]).all()), f"{kind} {i} {name}"


@pytest.mark.parametrize("make", PWL, ids=["relu", "leaky", "hardtanh", "relu6", "leaky-neg"])
def test_every_free_line_stays_below_or_above_the_activation(make):
    """For random intervals around the breakpoints and random ``alpha`` in [0, 1] (its ends
    included), the lines of :func:`_lines` bound the activation on a dense grid of each interval
    and at its breakpoints."""
    g = torch.Generator().manual_seed(5)
    act = make()
    node = next(n for n in from_torch(nn.Sequential(nn.Linear(1, 64), act).eval(), (1,)) if isinstance(n, Activation))
    center = torch.randn(64, generator=g, dtype=torch.float64) * 4
    half = torch.rand(64, generator=g, dtype=torch.float64) * 5
    l, u = center - half, center + half
    free = free_lines(node, l, u, relax(node, l, u))
    assert free is not None
    alphas = torch.rand((8, 64), generator=g, dtype=torch.float64)
    alphas[0], alphas[1] = 0.0, 1.0
    lines = _lines(free, alphas if free.low else None, alphas if free.up else None)
    grid = torch.linspace(0, 1, 401, dtype=torch.float64).unsqueeze(1)
    kinks = torch.tensor(node.pieces.breakpoints, dtype=torch.float64).unsqueeze(1).expand(-1, 64)
    z = torch.cat([l + grid * (u - l), torch.clamp(kinks, l, u)]).unsqueeze(1)  # (points, 1, 64)
    s = act(z)
    assert bool((lines.a_low * z + lines.b_low <= s).all()), "a lower line is above the activation"
    assert bool((lines.a_up * z + lines.b_up >= s).all()), "an upper line is below the activation"


def test_optimisation_tightens_deep_relu_nets_and_is_deterministic():
    """On deep random ReLU MLPs over a box, alpha-CROWN's total width is strictly below CROWN's
    (by 1 % at least) and the same call gives the same bounds."""
    for seed in range(3):
        torch.manual_seed(seed)
        w = [6, 24, 24, 24, 24, 24, 3]
        layers: list[nn.Module] = []
        for a, b in zip(w, w[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        graph = from_torch(nn.Sequential(*layers[:-1]).eval(), (6,))
        box = Box(torch.full((6,), -0.5, dtype=torch.float64), torch.full((6,), 0.5, dtype=torch.float64))
        crown = crown_bounds(graph, box)
        alpha = alpha_crown_bounds(graph, box, options=AlphaOptions(iterations=15))
        assert widths(alpha) < 0.99 * widths(crown), seed
        again = alpha_crown_bounds(graph, box, options=AlphaOptions(iterations=15))
        assert all(torch.equal(alpha[k][0], again[k][0]) and torch.equal(alpha[k][1], again[k][1]) for k in alpha)


def test_localize_with_alpha_crown_says_what_stopped_it():
    torch.manual_seed(0)
    graph = from_torch(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                                     nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).eval(), (4,))
    box = Box(torch.full((4,), -1.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    local = localize(graph, box, method="alpha-crown")
    assert "alpha-CROWN (20 iterations of Adam, stopped_by: iterations)" in local.notes[-1]
    assert "on 0 of them" not in local.notes[-1]
    assert "stopped_by: time" in localize(graph, box, method="alpha-crown", time_budget=0.0).notes[-1]
    crown = localize(graph, box)
    assert "alpha" not in crown.notes[-1]
    for a, c in zip(local, crown):
        if isinstance(a, Activation):
            assert bool((a.pre[0] >= c.pre[0]).all() and (a.pre[1] <= c.pre[1]).all())


def test_the_work_cap_keeps_crowns_bounds_and_says_so():
    torch.manual_seed(1)
    graph = from_torch(nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                                     nn.Linear(12, 1)).eval(), (3,))
    box = Box(torch.full((3,), -1.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    capped = alpha_crown_bounds(graph, box, options=AlphaOptions(max_work=1.0))
    crown = crown_bounds(graph, box)
    assert all(torch.equal(capped[k][0], crown[k][0]) and torch.equal(capped[k][1], crown[k][1]) for k in crown)
