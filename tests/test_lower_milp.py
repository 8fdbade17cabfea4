"""``lower-milp``: its witnesses re-check inside the box and never exceed the true local constant
(oracles: ``exact``'s certified bound and a grid of autograd Jacobians), and its MILP's optimum of
``u^T J(x) v`` matches a brute force over a fine grid of the box."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from lipbound.api import as_graph
from lipbound.errors import InvalidInput, NotApplicable
from lipbound.methods import METHODS
from lipbound.methods import lower_milp as lm
from lipbound.methods.pattern_milp import ChainNet, PatternProgram
from lipbound.methods.piecewise import mlp_layers
from lipbound.methods.propagation import localize
from lipbound.methods.region import Ball, Box
from lipbound.methods.witness import PointWitness

from oracles import seeded_mlp as _net

GRID = 241  # points per axis of the brute-force grid (2 inputs)


def _grid(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    axes = [torch.linspace(float(l), float(h), GRID, dtype=torch.float64) for l, h in zip(low, high)]
    return torch.cartesian_prod(*axes)


def _grid_jacobians(net: torch.nn.Module, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Autograd Jacobians at every grid point (an evaluation path independent of lower-milp)."""
    with torch.no_grad():
        return torch.func.vmap(torch.func.jacrev(net))(_grid(low, high)).detach()


def _weak_start(net: torch.nn.Module, low: torch.Tensor, high: torch.Tensor) -> PointWitness:
    return PointWitness((low + high) / 2, torch.ones_like(low))


CASES = [(0, (2, 8, 8, 2)), (1, (2, 8, 8, 2)), (2, (2, 10, 3)), (3, (3, 6, 6, 2)), (4, (4, 5, 5, 2))]


@pytest.mark.parametrize("seed,widths", CASES)
def test_witness_rechecks_in_box_and_is_below_the_local_constant(seed, widths):
    net = _net(seed, widths)
    g = as_graph(net, (widths[0],))
    low, high = -torch.rand(widths[0], dtype=torch.float64) - 0.2, torch.rand(widths[0], dtype=torch.float64) + 0.2
    start = _weak_start(net, low, high)
    res = METHODS["lower-milp"](g, domain=(low, high), start=start, time_budget=20, seed=seed)
    assert res.kind == "witnessed_lower"
    w = res.witness
    assert bool(((w.x >= low) & (w.x <= high)).all())
    assert w.recheck(g, (low, high)) == pytest.approx(res.value, rel=1e-12)
    start_value = start.recheck(g, (low, high))
    assert res.value >= start_value  # never worse than where it started
    oracle = METHODS["exact"](g, domain=(low, high), time_budget=20)  # certified, another algorithm
    upper = oracle.bracket[1] if oracle.bracket else oracle.value
    assert res.value <= upper * (1 + 1e-9)
    if widths[0] == 2:  # a fine grid sees every region of a 2-D box but slivers
        sampled = torch.linalg.matrix_norm(_grid_jacobians(net, low, high), ord=2).max().item()
        assert res.value <= max(sampled, upper) * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_at_least_lower_at_equal_seed(seed):
    net = _net(seed, (2, 8, 8, 2))
    g = as_graph(net, (2,))
    box = (-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    found = METHODS["lower"](g, domain=box, seed=seed, steps=30, walk_rounds=2, time_budget=10)
    res = METHODS["lower-milp"](g, domain=box, seed=seed, start=found.witness, time_budget=10)
    assert res.value >= found.value
    assert res.details["milp"][0]["status"] == "optimal"  # tiny: every MILP runs to optimality
    assert res.details["stopped_by"] == "converged"


@pytest.mark.parametrize("seed,act", [(0, torch.nn.ReLU), (1, torch.nn.ReLU), (2, lambda: torch.nn.LeakyReLU(0.2))])
def test_milp_optimum_matches_a_grid_for_fixed_directions(seed, act):
    net = _net(seed, (2, 8, 8, 3), act)
    g = as_graph(net, (2,))
    low, high = torch.tensor([-1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64)
    box = Box(low, high)
    layers = mlp_layers(localize(g, box))
    model = ChainNet(layers, [lm._slopes(l) for l in layers[:-1]], box)
    gen = np.random.default_rng(seed)
    u, v = gen.standard_normal(3), gen.standard_normal(2)
    solved = PatternProgram(model).solve(u, v, model.state(((low + high) / 2).numpy()), seed, 10_000,
                                         time.perf_counter() + 20.0)
    assert solved["status"] == "optimal"
    J = _grid_jacobians(net, low, high).numpy()
    brute = float(np.max(np.einsum("i,bij,j->b", u, J, v)))
    assert solved["objective"] >= brute - 1e-9 * abs(brute)  # the MILP sees every pattern the grid meets
    # and no pattern the box lacks: the grid misses at most slivers, whose value a near point shares
    assert solved["objective"] <= brute + 1e-6 * (1 + abs(brute))


def test_refusals():
    net = _net(0, (2, 4, 2))
    g = as_graph(net, (2,))
    with pytest.raises(NotApplicable):
        METHODS["lower-milp"](g, time_budget=5)  # no box
    with pytest.raises(NotApplicable):
        METHODS["lower-milp"](g, domain=Ball(torch.zeros(2), 1.0, 2), time_budget=5)
    with pytest.raises(NotApplicable):
        METHODS["lower-milp"](as_graph(_net(0, (2, 4, 2), torch.nn.Sigmoid), (2,)), domain=(-1.0, 1.0), time_budget=5)
    with pytest.raises(InvalidInput):
        METHODS["lower-milp"](g, domain=(-1.0, 1.0), rounds=0)
    with pytest.raises(InvalidInput):
        METHODS["lower-milp"](g, domain=(-1.0, 1.0), lower_share=math.nan)


def test_the_milp_keeps_the_bounds_a_split_localized_graph_carries():
    """On a graph localized with split-crown (the API's refined bounds), the MILP's binaries are the
    neurons unstable under those bounds (intersected with CROWN's), fewer than under CROWN alone
    (counted here from the two localizations' own bounds); its witness still re-checks by autograd."""
    from lipbound.graph.ir import Activation
    from oracles import jacobian_norms
    net = _net(1, (3, 12, 12, 12, 2))
    box = Box(torch.full((3,), -0.8, dtype=torch.float64), torch.full((3,), 0.8, dtype=torch.float64))
    g = as_graph(net, (3,))
    split, crown = (localize(g, box, method=m, time_budget=5) for m in ("split-crown", "crown"))
    bounds = {m: [n.pre for n in loc.nodes.values() if isinstance(n, Activation)] for m, loc in (("s", split), ("c", crown))}
    both = sum(int(((torch.maximum(ls, lc) < 0) & (torch.minimum(us, uc) > 0)).sum())
               for (ls, us), (lc, uc) in zip(bounds["s"], bounds["c"]))
    alone = sum(int(((l < 0) & (u > 0)).sum()) for l, u in bounds["c"])
    assert both < alone
    start = _weak_start(net, box.low, box.high)
    kept = METHODS["lower-milp"](split, domain=box, time_budget=4, rounds=1, start=start)
    fresh = METHODS["lower-milp"](g, domain=box, time_budget=4, rounds=1, start=start)
    assert kept.details["milp_size"]["binaries"] == both
    assert fresh.details["milp_size"]["binaries"] == alone
    x = kept.witness.x.reshape(1, -1)
    assert jacobian_norms(net, x).item() >= kept.value * (1 - 1e-9)
