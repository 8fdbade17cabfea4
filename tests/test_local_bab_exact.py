"""``exact`` on the parts of the batched ``local-bab`` search (:mod:`lipbound.methods.part_exact`),
against independent oracles: ``test_exact``'s brute force over activation patterns with scipy LPs
(:func:`region_oracle`), the supremum over every slope vertex (``test_local_bab.vertex_sup``: what
exact must improve on by dropping the empty patterns), Jacobian norms on a grid (numpy) and the
witness quotient recomputed with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipbound.methods.part_exact import PartExact
from lipbound.methods.relu_boxes import pre_bounds, relu_chain

from test_exact import graph_of, inside, region_oracle, witness_quotient
from test_local_bab import local_bab, relu_jacobian_norms, relu_net, vertex_sup


def part_of(seed: int, n: int = 2, widths=(5, 5), half: float = 0.5):
    """A random ReLU net, a box, the chain and the box's pre bounds (numpy and torch)."""
    net = relu_net(seed, n, widths=widths)
    centre = np.random.default_rng(seed).normal(size=n)
    low, high = centre - half, centre + half
    graph = graph_of(net).to(dtype=torch.float64)
    chain = relu_chain(graph)
    lo, hi = torch.as_tensor(low), torch.as_tensor(high)
    pre = [(l[0], u[0]) for l, u in pre_bounds(chain, lo[None], hi[None])]
    return net, graph, chain, lo, hi, pre


@pytest.mark.parametrize("seed", range(8))
def test_part_exact_is_the_region_oracles_constant_below_the_slope_vertices(seed):
    """Unseeded, ``exact`` on a part returns its constant: within the oracle's bracket (patterns with
    a scipy LP point), with a witness inside the box whose numpy quotient is its value; never above
    the supremum over every slope vertex, feasible or not."""
    net, graph, chain, lo, hi, pre = part_of(seed)
    found = PartExact(graph, chain, rtol=1e-6, max_nodes=4000).bound(lo, hi, pre, 0.0, math.inf)
    box = (lo.tolist(), hi.tolist())
    truth_low, truth_up = region_oracle(net, box)
    assert found.solved
    assert found.upper >= truth_low * (1 - 1e-9), "certified upper below a region of the box"
    assert found.upper <= truth_up * (1 + 1e-5), "a region the oracle finds empty was counted"
    assert found.upper <= vertex_sup(net, [(l.numpy(), u.numpy()) for l, u in pre]) * (1 + 2e-6)
    x, v, value = found.witness
    assert inside(net, [], x.numpy(), box)
    assert witness_quotient(net, x.numpy(), v.numpy()) == pytest.approx(value, rel=1e-9)
    assert found.upper <= value * (1 + 1e-5), "solved: the bound meets its witness"


def test_part_exact_drops_empty_slope_combinations_somewhere():
    """On some of these parts the slope vertices' supremum is above the constant (empty patterns):
    there exact is strictly tighter than the enumeration of every vertex."""
    gaps = []
    for seed in range(8):
        net, graph, chain, lo, hi, pre = part_of(seed)
        found = PartExact(graph, chain, rtol=1e-6, max_nodes=4000).bound(lo, hi, pre, 0.0, math.inf)
        gaps.append(vertex_sup(net, [(l.numpy(), u.numpy()) for l, u in pre]) / found.upper)
    assert max(gaps) > 1.05, gaps


@pytest.mark.parametrize("seed", range(6))
def test_seeded_part_exact_stays_above_the_constant(seed):
    """Seeded just below the part's constant (nodes under the seed are pruned), the bound still
    covers the constant; seeded far above it, the bound is the seed's (no witness, solved)."""
    net, graph, chain, lo, hi, pre = part_of(seed)
    truth_low, _ = region_oracle(net, (lo.tolist(), hi.tolist()))
    exact = PartExact(graph, chain, rtol=1e-3, max_nodes=4000)
    near = exact.bound(lo, hi, pre, truth_low * (1 - 1e-4), math.inf)
    assert near.upper >= truth_low * (1 - 1e-12)
    far = exact.bound(lo, hi, pre, 2 * truth_low, math.inf)
    assert far.solved and far.witness is None
    assert 2 * truth_low <= far.upper <= 2 * truth_low * (1 + 2e-3)


@pytest.mark.parametrize("seed", range(4))
def test_batched_search_with_exact_on_parts_brackets_the_oracle_and_closes(seed):
    """With exact on every part taken twice (``batch_exact_units`` large) the batched search closes
    within ``tol`` in a few parts; its bracket holds the oracle's constant and the grid's largest
    Jacobian norm, and its witness re-checks (numpy). Without exact (nor the pattern bound, which also
    drops empty patterns), the search needs more parts or stops at the work cap."""
    net = relu_net(seed, 2, widths=(5, 5))
    low, high = -0.6 * np.ones(2), 0.6 * np.ones(2)
    box = (low.tolist(), high.tolist())
    truth_low, truth_up = region_oracle(net, box)
    grid = np.stack(np.meshgrid(*[np.linspace(-0.6, 0.6, 41)] * 2), -1).reshape(-1, 2)
    sampled = relu_jacobian_norms(net, grid).max()
    options = dict(time_budget=60.0, lower_share=0.0, batch=4, max_parts=40, tol=1e-3, seek=0)
    res = local_bab(net, low, high, batch_exact_units=64, exact_nodes=4000, **options)
    lower, upper = res.bracket
    assert res.details["stopped_by"] == "converged" and upper <= lower * (1 + 1e-3)
    assert upper >= max(truth_low, sampled) * (1 - 1e-12) and lower <= truth_up * (1 + 1e-9)
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert inside(net, [], x, box)
    assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)
    plain = local_bab(net, low, high, pattern_leaves=0, **options)
    assert res.details["parts_bounded"] < plain.details["parts_bounded"] or plain.details["stopped_by"] == "work"


def test_batched_search_with_exact_on_parts_same_seed_same_numbers():
    """Stopped by its work cap twice with one seed, exact on parts included: the same numbers."""
    net = relu_net(1, 3, widths=(8, 8, 8))
    low, high = -0.5 * np.ones(3), 0.5 * np.ones(3)
    a, b = (local_bab(net, low, high, seed=2, time_budget=60.0, lower_share=0.0, batch=4, max_parts=30,
                      tol=0.0, batch_exact_units=8, exact_nodes=30) for _ in range(2))
    assert a.details["stopped_by"] == "work"
    assert a.bracket == b.bracket and a.details["parts"] == b.details["parts"]
    assert torch.equal(a.witness["x"], b.witness["x"])
