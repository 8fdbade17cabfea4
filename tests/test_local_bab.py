"""``local-bab`` and its part bound, the slope-box bound (issue 10), against independent oracles.

* The exact local constant on a box: ``test_exact``'s brute force over activation patterns with an
  LP per partial pattern (scipy's ``linprog``), witnesses re-checked in exact arithmetic.
* The slope box of a localized graph: ``pre`` bounds from ``test_exact_local``'s float64 interval
  arithmetic (relative margin 1e-9), and the supremum over the slope box by brute force over its
  vertices, ``max ||W_K D_{K-1} ... D_1 W_1||`` with numpy's SVD.
* Jacobian norms sampled inside the region by autograd (float64).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

import lipbound
from lipbound.graph.ir import Activation
from lipbound.methods import METHODS
from lipbound.methods.propagation import crown_bounds
from lipbound.errors import InvalidInput
from lipbound.methods.local_bab_batch import _grid
from lipbound.methods.relu_boxes import bound_boxes, relu_chain
from lipbound.methods.relu_crown import crown_layer
from lipbound.methods.slope_box import slope_box_bound

from test_exact import Net, graph_of, inside, region_oracle, witness_quotient
from test_exact_local import box_of, interval_pre, jacobian_norms, localized, random_net


def local_bab(net, low, high, **options):
    options.setdefault("time_budget", 3.0)
    return METHODS["local-bab"](graph_of(net), domain=box_of(low, high), **options)


def samples(low, high, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return low + (high - low) * rng.random((n, len(low)))


def vertex_sup(net, pre) -> float:
    """``max ||W_K D_{K-1} ... D_1 W_1||_2`` over the vertices of the slope box of ``pre`` (ReLU:
    slope 1 above, 0 below, {0, 1} across 0)."""
    choices = []
    for l, u in pre:
        choices += [(1.0,) if a >= 0 else (0.0,) if b <= 0 else (0.0, 1.0) for a, b in zip(l, u)]
    best = 0.0
    for d in itertools.product(*choices):
        j, start = net.ws[0], 0
        for k in range(len(net.acts)):
            width = net.ws[k].shape[0]
            j = net.ws[k + 1] @ (np.array(d[start:start + width])[:, None] * j)
            start += width
        best = max(best, np.linalg.norm(j, 2))
    return best


# ---- the slope-box bound ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("half", [0.05, 0.4, 3.0])
def test_slope_box_meets_the_vertex_brute_force(seed, half):
    net = random_net(3 * seed, widths=(4, 3), n=2)  # seed % 3 == 0: ReLU
    centre = np.random.default_rng(seed).normal(size=2)
    low, high = centre - half, centre + half
    pre = interval_pre(net, low, high)
    g = localized(net, box_of(low, high), pre)
    sup = vertex_sup(net, pre)
    tight = slope_box_bound(g, vertex_units=7)
    assert tight.tight and sup <= tight.value <= sup * (1 + 1e-8)  # every unstable neuron enumerated
    loose = slope_box_bound(g, vertex_units=0)  # interval Jacobian alone: above the supremum
    assert loose.value >= sup * (1 - 1e-12)
    assert loose.value >= tight.value * (1 - 1e-8)  # both within rounding of their values
    sampled = jacobian_norms(net, samples(low, high, 32, seed)).max()
    assert tight.value >= sampled * (1 - 1e-12)
    assert tight.value <= slope_box_bound(graph_of(net), vertex_units=7).value * (1 + 1e-12)  # <= global


def test_slope_box_is_the_jacobian_norm_when_every_neuron_is_stable():
    net = random_net(0, widths=(6, 6), n=3)
    low = np.array([0.1, -0.2, 0.3])
    pre = interval_pre(net, low, low + 1e-4)
    assert all(((l > 0) | (u < 0)).all() for l, u in pre)
    g = localized(net, box_of(low, low + 1e-4), pre)
    res = slope_box_bound(g, vertex_units=0)
    norm = jacobian_norms(net, low[None] + 5e-5)[0]
    assert res.unstable == 0 and norm <= res.value <= norm * (1 + 1e-8)
    global_value = slope_box_bound(graph_of(net), vertex_units=0).value
    assert res.value < 0.5 * global_value  # (c): strictly tighter with stable neurons


# ---- local-bab --------------------------------------------------------------------------------------
SPLITTING = {"exact_units": 0, "vertex_units": 1, "lower_share": 0.0}  # many parts, lower from centres


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("options", [{}, SPLITTING], ids=["default", "splitting"])
def test_bracket_contains_the_exact_local_constant(seed, options):
    n = 2 + seed % 2
    net = random_net(seed, widths=(4, 4), n=n)
    centre = np.random.default_rng(seed).normal(size=n)
    low, high = centre - 0.6, centre + 0.6
    res = local_bab(net, low, high, time_budget=1.0, **options)
    if options:
        assert res.details["parts_bounded"] > 1 or res.details["stopped"] == "bracket within tol"
    lower, upper = res.bracket
    truth_low, truth_up = region_oracle(net, (low.tolist(), high.tolist()))
    assert upper >= truth_low * (1 - 1e-9), "certified upper below a region of the box"
    assert lower <= truth_up * (1 + 1e-9), "witnessed lower above every region of the box"
    assert upper >= jacobian_norms(net, samples(low, high, 48, seed)).max() * (1 - 1e-12)
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert inside(net, [], x, (low.tolist(), high.tolist())), "witness outside the box"
    assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)


def test_flat_box_witness_fixes_the_input_and_rechecks_on_the_network():
    net = random_net(4, widths=(5, 5), n=3)
    low, high = np.array([-0.5, 0.2, -1.0]), np.array([0.5, 0.2, 1.0])  # input 1 fixed
    res = local_bab(net, low, high, time_budget=2.0)
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert x[1] == 0.2 and v[1] == 0.0
    assert witness_quotient(net, x, v) == pytest.approx(res.bracket[0], rel=1e-9)
    # the constant on the flat box is the one of the net with input 1 folded into the first bias
    folded = Net([np.delete(net.ws[0], 1, axis=1), *net.ws[1:]],
                 [net.bs[0] + 0.2 * net.ws[0][:, 1], *net.bs[1:]], net.acts)
    truth_low, truth_up = region_oracle(folded, ([-0.5, -1.0], [0.5, 1.0]))
    assert res.bracket[1] >= truth_low * (1 - 1e-9) and res.bracket[0] <= truth_up * (1 + 1e-9)


def test_time_budget_is_honoured():
    net = random_net(5, widths=(40, 40, 40), n=4)
    low, high = -np.ones(4) * 2, np.ones(4) * 2
    t0 = time.perf_counter()
    res = local_bab(net, low, high, time_budget=1.0, exact_units=0)
    elapsed = time.perf_counter() - t0
    assert res.details["stopped"] == "time budget"
    assert elapsed <= 1.1 + 0.3, elapsed  # 10%, plus one part's bound


def test_same_seed_same_numbers():
    net = random_net(6, widths=(4, 4), n=2)
    low, high = np.array([-0.5, -0.5]), np.array([0.5, 0.5])
    # no time-budgeted lower search, and a stop by the bracket: else the numbers depend on the clock
    a, b = (local_bab(net, low, high, seed=3, time_budget=5.0, lower_share=0.0) for _ in range(2))
    assert a.details["stopped"] != "time budget"
    assert a.bracket == b.bracket and a.details["parts"] == b.details["parts"]
    assert torch.equal(a.witness["x"], b.witness["x"])


@pytest.mark.parametrize("seed", range(3))
def test_all_stable_part_is_closed_with_its_exact_value(seed):
    """A box on which every neuron is stable: the root part is closed at once (never split, no
    ``exact`` run, no ``lower`` run), and the bracket is the constant Jacobian's norm (numpy oracle)."""
    net = random_net(3 * seed, widths=(6, 5), n=3)
    centre = np.random.default_rng(seed).normal(size=3)
    low, high = centre - 1e-4, centre + 1e-4
    pre = interval_pre(net, low, high)
    assert all(((l > 0) | (u < 0)).all() for l, u in pre)
    truth = jacobian_norms(net, centre[None])[0]
    res = local_bab(net, low, high, tol=0.0, lower_share=0.0, exact_units=0, time_budget=2.0)
    lower, upper = res.bracket
    assert res.details["stopped"] == "largest part exact" and res.details["parts_bounded"] == 1
    assert res.details["bound_methods"] == ["slope-box"], "closed by its own bound, without exact"
    assert lower <= truth * (1 + 1e-12) and upper >= truth * (1 - 1e-12)
    assert upper <= lower * (1 + 1e-8), "a closed part's bracket is its exact value"
    x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
    assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)


# ---- the batched part bound of a ReLU chain (relu_boxes) -------------------------------------------
def relu_net(seed: int, n: int, widths=(5, 4, 3)):
    return random_net(3 * seed, widths=widths, n=n)  # seed % 3 == 0: ReLU


def relu_jacobian_norms(net, x: np.ndarray) -> np.ndarray:
    """``||W_K D_{K-1}(x) ... D_1(x) W_1||_2`` at each point (numpy: ReLU slope 1 where its input is > 0)."""
    out = []
    for p in x:
        h, j = p, np.eye(len(p))
        for k in range(len(net.acts)):
            z = net.ws[k] @ h + net.bs[k]
            h, j = np.maximum(z, 0), (z > 0)[:, None] * (net.ws[k] @ j)
        out.append(np.linalg.norm(net.ws[-1] @ j, 2))
    return np.array(out)


def sub_boxes(seed: int, n: int, count: int, half: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, n))
    halves = half * rng.random((count, n)) + 1e-3
    return centres - halves, centres + halves


@pytest.mark.parametrize("seed", range(4))
def test_relu_boxes_pre_bounds_hold_at_sampled_points(seed):
    n = 2 + seed
    net = relu_net(seed, n)
    lows, highs = sub_boxes(seed, n, 16, 0.8)
    bounds = bound_boxes(relu_chain(graph_of(net)), torch.from_numpy(lows), torch.from_numpy(highs))
    assert_pre_bounds_hold(net, bounds.pre, lows, highs, seed)


def assert_pre_bounds_hold(net, pre, lows, highs, seed: int) -> None:
    """Every pre-activation of ``net`` at 256 points sampled in each box lies in that box's bounds."""
    for b in range(len(lows)):
        h = samples(lows[b], highs[b], 256, seed + b).T
        for k, (l, u) in enumerate(pre):
            z = net.ws[k] @ h + net.bs[k][:, None]
            assert (z >= l[b].numpy()[:, None]).all() and (z <= u[b].numpy()[:, None]).all(), (b, k)
            h = np.maximum(z, 0)


@pytest.mark.parametrize("seed", range(4))
def test_relu_boxes_meet_the_vertex_brute_force_and_batching_changes_nothing(seed):
    n = 2 + seed % 3
    net = relu_net(seed, n, widths=(4, 3))
    layers = relu_chain(graph_of(net))
    lows, highs = sub_boxes(seed, n, 12, 0.6)
    low, high = torch.from_numpy(lows), torch.from_numpy(highs)
    full = bound_boxes(layers, low, high, vertex_units=7)  # every unstable neuron enumerated
    loose = bound_boxes(layers, low, high)
    for b in range(len(lows)):
        pre = [(l[b].numpy(), u[b].numpy()) for l, u in full.pre]
        sup = vertex_sup(net, pre)
        assert sup <= float(full.value[b]) <= sup * (1 + 1e-8) + 1e-300
        assert float(loose.value[b]) >= sup * (1 - 1e-12)
        assert float(full.value[b]) >= jacobian_norms(net, samples(lows[b], highs[b], 16, b)).max() * (1 - 1e-12)
        one = bound_boxes(layers, low[b:b + 1], high[b:b + 1], vertex_units=7)
        assert float(one.value[0]) == pytest.approx(float(full.value[b]), rel=1e-12)
        assert int(one.unstable[0]) == int(full.unstable[b])


@pytest.mark.parametrize("seed", range(4))
def test_relu_boxes_meeting_bounds_stay_above_the_vertex_supremum_on_deeper_nets(seed):
    """Three hidden layers, few vertices enumerated: the bound (the best of the backward and meeting
    enclosures) is never below the slope box's supremum (numpy brute force over its vertices)."""
    n = 2 + seed % 4
    net = relu_net(seed, n, widths=(5, 4, 3))
    layers = relu_chain(graph_of(net))
    lows, highs = sub_boxes(seed, n, 10, 0.5)
    for k in (0, 1):
        res = bound_boxes(layers, torch.from_numpy(lows), torch.from_numpy(highs), vertex_units=k)
        for b in range(len(lows)):
            sup = vertex_sup(net, [(l[b].numpy(), u[b].numpy()) for l, u in res.pre])
            assert float(res.value[b]) >= sup * (1 - 1e-12), (k, b)


@pytest.mark.parametrize("seed", range(4))
def test_batched_crown_holds_at_samples_and_is_at_least_as_tight_as_the_forward_pass(seed):
    """Many boxes of random 2-5-input ReLU nets (3 hidden layers): the CROWN-intersected pre bounds
    contain the pre-activations at sampled points (numpy forward pass) and are inside the forward
    pass's, strictly tighter on some neuron."""
    n = 2 + seed
    net = relu_net(seed, n, widths=(6, 6, 6))
    layers = relu_chain(graph_of(net))
    lows, highs = sub_boxes(seed, n, 24, 0.6)
    low, high = torch.from_numpy(lows), torch.from_numpy(highs)
    tight, loose = bound_boxes(layers, low, high), bound_boxes(layers, low, high, crown=False)
    gained = False
    for (l, u), (lf, uf) in zip(tight.pre, loose.pre):
        assert (l >= lf).all() and (u <= uf).all()
        gained |= bool((l > lf + 1e-9).any() or (u < uf - 1e-9).any())
    assert gained
    assert_pre_bounds_hold(net, tight.pre, lows, highs, seed)


@pytest.mark.parametrize("seed", range(4))
def test_batched_crown_layer_agrees_with_propagation_crown(seed):
    """Given ``propagation.crown_bounds``' bounds of the earlier layers (an independent
    back-substitution through the graph's nodes), ``crown_layer`` with no bounds of its own gives
    the same CROWN bounds of every layer, once both are intersected with IBP from the earlier
    bounds (numpy here), up to rounding, on each box of a batch, on the neurons the propagation
    module back-substitutes (unstable by its interval bounds)."""
    n = 2 + seed
    net = relu_net(seed, n, widths=(6, 6, 6))
    graph = graph_of(net)
    layers = relu_chain(graph)
    names = [node.name for node in graph if isinstance(node, Activation)]
    lows, highs = sub_boxes(seed, n, 6, 0.6)
    refs = [crown_bounds(graph, box_of(lo, hi)) for lo, hi in zip(lows, highs)]
    pre = [tuple(torch.stack([r[name][i].reshape(-1) for r in refs]) for i in (0, 1)) for name in names]
    for k in range(1, len(names)):
        inf = torch.full_like(pre[k][0], math.inf)
        l, u = crown_layer(layers, k, pre[:k], torch.from_numpy(lows), torch.from_numpy(highs), (-inf, inf))
        hl, hu = (t.clamp(min=0).numpy() for t in pre[k - 1])  # IBP from the earlier bounds (numpy)
        mid, rad = (hl + hu) / 2 @ net.ws[k].T + net.bs[k], (hu - hl) / 2 @ np.abs(net.ws[k]).T
        l, u = torch.maximum(l, torch.from_numpy(mid - rad)), torch.minimum(u, torch.from_numpy(mid + rad))
        ran = (pre[k][0] < 0) & (pre[k][1] > 0)  # the neurons it back-substitutes (the others keep IBP)
        scale = 1e-9 * (1 + pre[k][1].abs() + pre[k][0].abs())
        assert ((l <= pre[k][0] + scale) & (u >= pre[k][1] - scale))[ran].all(), k
        agree = ((l - pre[k][0]).abs() <= scale) & ((u - pre[k][1]).abs() <= scale)
        assert agree[ran].all(), k


@pytest.mark.parametrize("seed", range(4))
def test_full_vertex_enumeration_meets_the_brute_force_on_few_unstable_boxes(seed):
    """``full_units``: a box with at most that many unstable neurons gets the supremum of its slope
    box (numpy brute force over the vertices, up to rounding), never below the largest Jacobian norm
    on a grid of the box; a box with more keeps a bound >= the supremum (only 1 vertex unit; checked
    up to 7 unstable neurons)."""
    n = 2 + seed % 3
    net = relu_net(seed, n, widths=(5, 4, 3))
    layers = relu_chain(graph_of(net))
    lows, highs = sub_boxes(seed, n, 16, 1.0)
    res = bound_boxes(layers, torch.from_numpy(lows), torch.from_numpy(highs), vertex_units=1, full_units=4)
    full = 0
    for b in range(len(lows)):
        value = float(res.value[b])
        grid = np.stack(np.meshgrid(*[np.linspace(lows[b][i], highs[b][i], 4) for i in range(n)]), -1).reshape(-1, n)
        assert value >= relu_jacobian_norms(net, grid).max() * (1 - 1e-12), b
        if int(res.unstable[b]) > 7:
            continue  # the brute force below costs 2^unstable SVDs
        sup = vertex_sup(net, [(l[b].numpy(), u[b].numpy()) for l, u in res.pre])
        assert value >= sup * (1 - 1e-12), b
        if int(res.unstable[b]) <= 4:
            full += 1
            assert value <= sup * (1 + 1e-8) + 1e-300, (b, int(res.unstable[b]))
    assert 0 < full < len(lows), "both kinds of boxes in the batch"


@pytest.mark.parametrize("seed", range(3))
def test_grouped_boxes_give_the_bounds_of_each_box_alone(seed):
    """Boxes of a batch are grouped by unstable count (CROWN rows, vertex counts); each box's pre
    bounds, unstable count and part bound are those of the box bounded alone (no group, no padding)."""
    n = 2 + seed
    net = relu_net(seed, n, widths=(6, 6, 6))
    layers = relu_chain(graph_of(net))
    lows, highs = sub_boxes(seed, n, 20, 0.7)
    low, high = torch.from_numpy(lows), torch.from_numpy(highs)
    batch = bound_boxes(layers, low, high, vertex_units=1, full_units=3)
    assert len(set(batch.unstable.tolist())) > 3, "several groups"
    for b in range(len(lows)):
        one = bound_boxes(layers, low[b:b + 1], high[b:b + 1], vertex_units=1, full_units=3)
        for (l, u), (l1, u1) in zip(batch.pre, one.pre):
            assert torch.allclose(l[b], l1[0], rtol=1e-13, atol=0) and torch.allclose(u[b], u1[0], rtol=1e-13, atol=0)
        assert int(one.unstable[0]) == int(batch.unstable[b])
        assert float(one.value[0]) == pytest.approx(float(batch.value[b]), rel=1e-12)


def test_relu_chain_refuses_other_graphs():
    assert relu_chain(graph_of(random_net(1, widths=(3, 3), n=2))) is None  # not ReLU
    assert relu_chain(graph_of(relu_net(0, 2))) is not None


def test_an_affine_net_is_left_to_the_part_search_and_bounded_by_its_norm():
    # no ReLU: not a chain for the batched search (which crashed on it); local-bab still brackets
    # the constant, the spectral norm of the one matrix
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).double()
    graph = lipbound.as_graph(net, (3,))
    assert relu_chain(graph) is None
    norm = float(torch.linalg.matrix_norm((net[1].weight @ net[0].weight).detach(), ord=2))
    res = METHODS["local-bab"](graph, domain=(-torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)),
                               time_budget=10)
    assert res.bracket[0] <= norm * (1 + 1e-9) and res.upper >= norm * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_batched_search_brackets_the_grid_constant_on_a_5_input_net(seed):
    """A ReLU net with 5 inputs: the bracket holds the largest Jacobian norm on a grid of the box
    (a lower bound of the constant), its witness re-checks inside the box, and a small batch with
    the smear's axis gives a bracket containing the same truth."""
    net = relu_net(seed, 5, widths=(8, 8))
    low, high = -0.3 * np.ones(5), 0.3 * np.ones(5)
    grid = np.stack(np.meshgrid(*[np.linspace(-0.3, 0.3, 6)] * 5), -1).reshape(-1, 5)
    sampled = relu_jacobian_norms(net, grid).max()
    for options in ({"batched": True, "strong": True}, {"batched": True, "batch": 4, "vertex_units": 1},
                    {"batched": True, "fan": 1, "axis": "relative"}, {"batched": True, "fan": 2, "batch": 16, "batch_samples": 8}):
        res = local_bab(net, low, high, time_budget=0.7, lower_share=0.0, **options)
        lower, upper = res.bracket
        assert res.details["search"] == "batched (ReLU chain)"
        assert upper >= sampled * (1 - 1e-12)
        x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
        assert inside(net, [], x, (low.tolist(), high.tolist()))
        assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)
        assert lower <= upper


def test_batched_search_same_seed_same_numbers():
    """The batched search stopped by its work cap (deterministic) twice with one seed: the same
    bracket, parts and witness."""
    net = relu_net(1, 5, widths=(8, 8))
    low, high = -0.4 * np.ones(5), 0.4 * np.ones(5)
    a, b = (local_bab(net, low, high, seed=2, time_budget=30.0, lower_share=0.0, batched=True, batch=8,
                      max_parts=200, tol=0.0) for _ in range(2))
    assert a.details["stopped_by"] == "work"
    assert a.bracket == b.bracket and a.details["parts"] == b.details["parts"]
    assert torch.equal(a.witness["x"], b.witness["x"])


@pytest.mark.parametrize("levels", [1, 2])
def test_fan_grid_covers_the_box_without_overlap(levels):
    """The uniform grid the search starts from with ``fan``: ``2^(d levels)`` cells inside the box,
    every sampled point of the box in some cell, and the cells' volumes summing to the box's
    (disjoint interiors)."""
    low = torch.tensor([-0.3, 0.1, 2.0], dtype=torch.float64)
    high = torch.tensor([0.2, 0.7, 2.5], dtype=torch.float64)
    c_low, c_high = _grid(low, high, levels)
    assert c_low.shape == (2 ** (3 * levels), 3)
    assert bool((c_low >= low).all() and (c_high <= high).all() and (c_low < c_high).all())
    x = torch.as_tensor(samples(low.numpy(), high.numpy(), n=500, seed=levels))
    within = ((x[:, None] >= c_low) & (x[:, None] <= c_high)).all(dim=2)
    assert bool(within.any(dim=1).all())
    assert float((c_high - c_low).prod(dim=1).sum()) == pytest.approx(float((high - low).prod()), rel=1e-12)


def test_batched_search_refuses_an_unknown_axis_rule():
    net = relu_net(0, 5, widths=(8, 8))
    with pytest.raises(InvalidInput, match="axis"):
        local_bab(net, -np.ones(5), np.ones(5), time_budget=1.0, lower_share=0.0, axis="widest")
