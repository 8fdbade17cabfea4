"""The batched ``local-bab`` search's rules for spending its work (:mod:`lipbound.methods.local_bab_batch`):
which parts get the zonotope bound (``zonotope_units``) and the witness of a closed largest part,
checked against independent oracles (Jacobian norms on a grid of the box, numpy; the re-computed
witness quotient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipbound.methods.local_bab_batch import _offer_points, _seek_points
from lipbound.methods.region import Box
from lipbound.methods.relu_boxes import pre_bounds, relu_chain

from test_exact import graph_of, inside, witness_quotient
from test_local_bab import local_bab, relu_jacobian_norms, relu_net, sub_boxes


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("units", [0, 6, 1000])
def test_zonotope_units_keep_the_grid_maximum_inside_the_bracket(seed, units):
    """A deep net (4 hidden layers of 8) whose parts keep many unstable neurons: whether the zonotope
    runs on no part (0), on the parts with at most 6 unstable neurons or on all, the certified upper
    end stays above the largest Jacobian norm on a grid of the box, and the witness re-checks."""
    net = relu_net(seed, 3, widths=(8, 8, 8, 8))
    low, high = -0.5 * np.ones(3), 0.5 * np.ones(3)
    grid = np.stack(np.meshgrid(*[np.linspace(-0.5, 0.5, 15)] * 3), -1).reshape(-1, 3)
    sampled = relu_jacobian_norms(net, grid).max()
    res = local_bab(net, low, high, time_budget=30.0, lower_share=0.0, batch=8, max_parts=80, tol=0.0,
                    full_units=2, zonotope_units=units)
    lower, upper = res.bracket
    assert res.details["stopped_by"] in ("work", "converged")
    assert upper >= sampled * (1 - 1e-12)
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert inside(net, [], x, (low.tolist(), high.tolist()))
    assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_a_closed_largest_part_closes_the_bracket(seed):
    """When the search stops on a largest part whose neurons are all stable, that part's Jacobian
    norm is both its bound and a witnessed value: the bracket closes (up to rounding), and the
    witness's quotient, recomputed with numpy, is the lower end."""
    net = relu_net(seed, 2, widths=(4, 4))
    low, high = -0.2 * np.ones(2), 0.2 * np.ones(2)
    res = local_bab(net, low, high, time_budget=30.0, lower_share=0.0, batch=4, tol=0.0, max_parts=20000)
    lower, upper = res.bracket
    assert res.details["stopped_by"] == "converged"
    assert upper <= lower * (1 + 1e-6)
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)


class _Lower:
    """The part of the search that :func:`_offer_points` uses: the lower end and its witness."""

    def __init__(self, graph, region) -> None:
        self.graph, self.region, self.lower = graph, region, 0.0
        self.generator = torch.Generator().manual_seed(0)

    def offer(self, value, witness, source, checked=False) -> None:
        self.lower = max(self.lower, value)


@pytest.mark.parametrize("seed", range(3))
def test_a_point_that_does_not_recheck_gives_way_to_the_next_largest(seed):
    """Two tiny parts; the region leaves out the centre with the larger Jacobian norm (its witness
    does not re-check there): the lower end is the other centre's norm (numpy), not nothing."""
    net = relu_net(seed, 2, widths=(6, 6))
    graph = graph_of(net)
    centres = np.random.default_rng(seed).uniform(-2, 2, (64, 2))
    norms = relu_jacobian_norms(net, centres)
    first, second = np.argsort(-norms)[:2]
    i = int(np.argmax(np.abs(centres[first] - centres[second])))
    cut = (centres[first][i] + centres[second][i]) / 2
    low, high = -3 * np.ones(2), 3 * np.ones(2)
    (high if centres[first][i] > cut else low)[i] = cut
    search = _Lower(graph, Box(torch.as_tensor(low), torch.as_tensor(high)))
    c = torch.as_tensor(centres[[first, second]])
    _offer_points(relu_chain(graph), search, c - 1e-9, c + 1e-9, (2,), 1)
    assert search.lower == pytest.approx(norms[second], rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_seek_points_turn_on_every_unstable_first_layer_neuron(seed):
    """On boxes of a one-hidden-layer net, every unstable neuron (its pre-activation ``w x + b`` is
    affine: it crosses 0 inside the box) is on (numpy) at some returned point, and every point lies
    in its box."""
    net = relu_net(seed, 3, widths=(10,))
    layers = relu_chain(graph_of(net))
    lows, highs = sub_boxes(seed, 3, 6, 0.8)
    low, high = torch.as_tensor(lows), torch.as_tensor(highs)
    pre = pre_bounds(layers, low, high)
    x = _seek_points(layers, low, high, pre, neurons=10).numpy()
    assert len(x) == int(sum(((l < 0) & (u > 0)).sum() for l, u in pre))
    for b in range(len(lows)):
        mine = x[((x >= lows[b]) & (x <= highs[b])).all(axis=1)]
        corners = np.stack(np.meshgrid(*[[lows[b][i], highs[b][i]] for i in range(3)]), -1).reshape(-1, 3)
        zc = corners @ net.ws[0].T + net.bs[0]
        crossing = (zc.min(axis=0) < 0) & (zc.max(axis=0) > 0)
        on = (mine @ net.ws[0].T + net.bs[0] > 0).any(axis=0)
        assert bool(on[crossing].all()), b


@pytest.mark.parametrize("seed", range(3))
def test_pattern_leaves_keep_the_grid_constant_in_the_bracket_on_a_5_input_box(seed):
    """A 5-input net (two hidden layers of 8), the pattern tree on every top part and its top leaves settled
    by LP: the bracket holds the largest Jacobian norm on a grid of the box
    (numpy), and the witness re-checks in the box with the lower end as its quotient (numpy)."""
    net = relu_net(seed, 5, widths=(8, 8))
    low, high = -0.3 * np.ones(5), 0.3 * np.ones(5)
    grid = np.stack(np.meshgrid(*[np.linspace(-0.3, 0.3, 6)] * 5), -1).reshape(-1, 5)
    sampled = relu_jacobian_norms(net, grid).max()
    options = dict(time_budget=30.0, lower_share=0.0, batch=8, max_parts=400, tol=1e-6, pattern_parts=8,
                   pattern_leaves=64, seek=0, top_samples=1)
    res = local_bab(net, low, high, leaf_lps=4, **options)
    lower, upper = res.bracket
    assert upper >= sampled * (1 - 1e-12)
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert inside(net, [], x, (low.tolist(), high.tolist()))
    assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)


def test_pattern_leaves_same_seed_same_numbers():
    """The batched search with leaf LPs, stopped by its work cap, twice with one seed: the same bracket,
    parts and witness."""
    net = relu_net(1, 5, widths=(8, 8))
    low, high = -0.4 * np.ones(5), 0.4 * np.ones(5)
    a, b = (local_bab(net, low, high, seed=2, time_budget=30.0, lower_share=0.0, batch=8, max_parts=150, tol=0.0,
                      pattern_parts=8, pattern_leaves=32, leaf_lps=4) for _ in range(2))
    assert a.details["stopped_by"] == "work"
    assert a.bracket == b.bracket and a.details["parts"] == b.details["parts"]
    assert torch.equal(a.witness["x"], b.witness["x"])
