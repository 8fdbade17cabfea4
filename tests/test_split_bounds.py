"""Split-refined pre bounds (``localize(method="split-crown")``, :mod:`lipbound.methods.split_bounds`).

Oracles, independent of the code under test: the torch model's own pre-activations at uniform points of
the box, at its corners and at the ends of projected gradient ascents of each neuron (inner points of the
true ranges); CROWN's bounds (the refined ones must lie inside them); each sampled point's own pre-
activations (some kept leaf of the tree must hold them all)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lipbound.errors import InvalidInput, UnsupportedOperation
from lipbound.frontends.from_torch import from_torch
from lipbound.methods.propagation import crown_bounds, localize
from lipbound.methods.region import Box
from lipbound.methods.relu_boxes import relu_chain
from lipbound.methods import machine
from lipbound.methods.split_bounds import SplitOptions, node_seconds, split_crown_bounds, split_tree


def mlp(g: torch.Generator, widths: list[int], out_relu: bool = False) -> nn.Sequential:
    """A random float64 ReLU MLP with biases large enough that neurons switch inside the box."""
    mods: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) / math.sqrt(a))
            lin.bias.copy_(0.3 * torch.randn(b, generator=g, dtype=torch.float64))
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*(mods if out_relu else mods[:-1])).eval()


def hidden_pre(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every ReLU of the torch model at the batch ``x`` (the oracle's own path)."""
    out = []
    for mod in model:
        if isinstance(mod, nn.ReLU):
            out.append(x)
        x = mod(x)
    return out


def ascent_ends(model: nn.Sequential, box: Box, layer: int, g: torch.Generator, steps: int = 30) -> torch.Tensor:
    """Points of the box reached by projected sign-gradient ascent of each neuron of ``layer``, up and
    down (one start each): inner points of the neurons' true ranges."""
    n = hidden_pre(model, box.low[None])[layer].shape[1]
    sign = torch.cat([torch.ones(n), -torch.ones(n)]).double()
    x = box.sample(2 * n, g)
    rows = torch.arange(2 * n) % n
    for step in range(steps):
        x.requires_grad_(True)
        z = hidden_pre(model, x)[layer][torch.arange(2 * n), rows]
        (grad,) = torch.autograd.grad((sign * z).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + (box.high - box.low) / 4 * 0.8 ** step * grad.sign(), box.low), box.high)
    return x.detach()


def case(seed: int, widths: list[int], eps: float, out_relu: bool = False):
    g = torch.Generator().manual_seed(seed)
    model = mlp(g, widths, out_relu)
    c = torch.rand(widths[0], generator=g, dtype=torch.float64)
    box = Box(c - eps, c + eps)
    return model, from_torch(model, (widths[0],)), box, g


CASES = [(0, [3, 12, 12, 12, 4], 0.6, False), (1, [5, 16, 16, 16, 16, 3], 0.4, False),
         (2, [2, 10, 10, 10, 2], 1.0, True), (3, [6, 20, 20, 20, 20, 20, 4], 0.3, False)]


@pytest.mark.parametrize("seed,widths,eps,out_relu", CASES)
def test_refined_bounds_hold_at_samples_corners_and_ascent_ends_and_are_never_wider(seed, widths, eps, out_relu):
    model, graph, box, g = case(seed, widths, eps, out_relu)
    crown = crown_bounds(graph, box)
    local = localize(graph, box, method="split-crown")
    assert "split-refined" in local.notes[-1]
    names = list(crown)
    refined = {n: local.nodes[n].pre for n in names}
    corners = torch.where(torch.rand(500, widths[0], generator=g) < 0.5, box.high, box.low)
    points = [box.sample(3000, g), corners] + [ascent_ends(model, box, k, g) for k in range(len(names))]
    with torch.no_grad():
        zs = [hidden_pre(model, x) for x in points]
    tighter = 0.0
    for k, n in enumerate(names):
        (l, u), (cl, cu) = refined[n], crown[n]
        assert bool((cl <= l).all() and (u <= cu).all()), f"layer {k}: wider than CROWN"
        for z in zs:
            assert bool((l <= z[k].min(0).values).all() and (z[k].max(0).values <= u).all()), f"layer {k}"
        tighter += float((cu - cl).sum() - (u - l).sum())
    assert tighter > 0  # the refinement does something on every case


def _pattern_leaf(leaves, zs: list[np.ndarray]) -> np.ndarray:
    """For each point (rows of ``zs[m]``), whether some leaf's bounds hold all its pre-activations."""
    held = np.zeros(len(zs[0]), dtype=bool)
    for leaf in leaves:
        ok = np.ones(len(zs[0]), dtype=bool)
        for (l, u), z in zip(leaf, zs):
            ok &= ((l <= z) & (z <= u)).all(axis=1)
        held |= ok
    return held


def _covered(model: nn.Sequential, graph, box: Box, g: torch.Generator, max_leaves: int):
    """The split tree of ``graph`` on ``box``, after checking that every sampled point (uniform, corners,
    ends of the first layer's ascents) lies in one of its kept leaves."""
    crown = crown_bounds(graph, box)
    pre = [(crown[n][0].numpy(), crown[n][1].numpy()) for n in crown]
    tree = split_tree(relu_chain(graph), pre, box.low.numpy(), box.high.numpy(), options=SplitOptions(max_leaves=max_leaves))
    d = box.low.numel()
    corners = torch.where(torch.rand(200, d, generator=g) < 0.5, box.high, box.low)
    x = torch.cat([box.sample(4000, g), corners, ascent_ends(model, box, 0, g)])
    with torch.no_grad():
        zs = [z.numpy() for z in hidden_pre(model, x)]
    assert _pattern_leaf(tree.leaves, zs).all()
    return tree


@pytest.mark.parametrize("seed,widths,eps", [c[:3] for c in CASES if not c[3]])
def test_every_sampled_point_lies_in_a_kept_leaf(seed, widths, eps):
    model, graph, box, g = case(seed, widths, eps)
    tree = _covered(model, graph, box, g, 64)
    assert len(tree.leaves) > 1 and tree.stopped_by in ("work", "converged")


def test_a_leaf_whose_bounds_cross_is_dropped_and_no_other():
    """1-D input x in [-1, 1]; z1 = (x, -x - 1/2); z2 = h1_0 + h1_1 - 0.6. Both first-layer neurons
    active means x >= 0 and x <= -1/2: an empty leaf, where CROWN gives z2 = -1.1 below the root's
    lower bound; the other three leaves hold points."""
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, -0.5]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        model[2].bias.copy_(torch.tensor([-0.6]))
        model[4].weight.fill_(1.0)
        model[4].bias.fill_(0.0)
    box = Box(-torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    tree = _covered(model, from_torch(model, (1,)), box, torch.Generator().manual_seed(0), 64)
    assert tree.empty == 1


def test_same_inputs_same_bounds_and_the_leaf_cap_is_a_work_cap():
    _, graph, box, _ = case(1, [5, 16, 16, 16, 16, 3], 0.4)
    crown = crown_bounds(graph, box)
    runs = [split_crown_bounds(graph, box.low, box.high, crown, options=SplitOptions(max_leaves=m)) for m in (16, 16, 64)]
    for (a, _), (b, _) in [(runs[0], runs[1])]:
        assert all(torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in a)
    (few, t16), (many, t64) = runs[0], runs[2]
    assert len(t16.tree.leaves) <= 16 and t16.tree.stopped_by == "work" and len(t64.tree.leaves) <= 64
    width = lambda pre: sum(float((u - l).sum()) for l, u in pre.values())  # noqa: E731
    assert width(many) < width(few)


def test_a_planned_budget_is_a_work_cap_priced_from_the_sizes(monkeypatch):
    """The tree planned for a budget stops by work, at the leaves the budget pays for at the machine's
    rates (priced here by hand: 5 inputs, hidden 16, 16, 16, 16), whatever the clock says: a clock
    that runs 1000x fast must not change it."""
    _, graph, box, _ = case(1, [5, 16, 16, 16, 16, 3], 0.4)
    crown = crown_bounds(graph, box)
    pre = [(crown[n][0].numpy(), crown[n][1].numpy()) for n in crown]
    chain, lo, hi = relu_chain(graph), box.low.numpy(), box.high.numpy()
    back = sum(16 * (5 * 16 + 16 * 16 * (t - 1)) for t in (2, 3, 4))  # layer t's rows through W_t .. W_1
    sign = 3 * 16 * 16 * 5  # per step: layers 2-4's rows through W_1
    a, b, c = machine.SPLIT_NODE_SECONDS
    node = a * back + b * sign * 2 + c * 4
    assert node_seconds(chain, 2) == pytest.approx(node, rel=1e-12)
    options = SplitOptions(max_leaves=64, beta_iterations=2)
    planned = split_tree(chain, pre, lo, hi, options=options, budget=10.5 * node)  # 10 nodes: the final CROWN, 4 pairs
    assert planned.planned == 5 and len(planned.leaves) == 5 and planned.stopped_by == "work" and planned.nodes <= 8
    ticks = iter(range(10 ** 9))
    monkeypatch.setattr("lipbound.methods.split_bounds.time.perf_counter", lambda: 1000.0 * next(ticks) * node)
    again = split_tree(chain, pre, lo, hi, options=options, budget=10.5 * node, deadline=1e300)
    assert [[(l.tolist(), u.tolist()) for l, u in leaf] for leaf in again.leaves] == \
        [[(l.tolist(), u.tolist()) for l, u in leaf] for leaf in planned.leaves]


def test_a_deadline_cuts_the_tree_says_so_and_keeps_sound_bounds():
    model, graph, box, g = case(0, [3, 12, 12, 12, 4], 0.6)
    crown = crown_bounds(graph, box)
    pre, out = split_crown_bounds(graph, box.low, box.high, crown, deadline=0.0)
    assert out.tree.stopped_by == "time" and out.tree.nodes == 0 and len(out.tree.leaves) == 1
    with torch.no_grad():
        zs = hidden_pre(model, box.sample(2000, g))
    for z, (n, (l, u)) in zip(zs, pre.items()):
        assert bool((l <= z.min(0).values).all() and (z.max(0).values <= u).all())
        assert bool((crown[n][0] <= l).all() and (u <= crown[n][1]).all())


def test_bad_input_and_graphs_that_are_not_relu_chains_are_refused():
    box = Box(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    tanh = from_torch(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval(), (3,))
    with pytest.raises(UnsupportedOperation, match="split-crown"):
        localize(tanh, box, method="split-crown")
    with pytest.raises(InvalidInput, match="max_leaves"):
        SplitOptions(max_leaves=0)
    with pytest.raises(InvalidInput, match="split-crown"):
        localize(tanh, box, method="split")


@pytest.mark.parametrize("seed,widths,eps", [c[:3] for c in CASES if not c[3]])
def test_the_split_constraints_lagrange_terms_stay_sound_and_tighten(seed, widths, eps):
    """Leaves bounded with the first layer's sign constraints (beta) against plain CROWN leaves, same
    leaf cap: both hold at samples and ascent ends; the constraints give tighter bounds in all."""
    model, graph, box, g = case(seed, widths, eps)
    crown = crown_bounds(graph, box)
    with_beta, plain = (split_crown_bounds(graph, box.low, box.high, crown, options=SplitOptions(16, beta_iterations=b))[0]
                        for b in (6, 0))
    x = torch.cat([box.sample(3000, g)] + [ascent_ends(model, box, k, g) for k in range(len(crown))])
    with torch.no_grad():
        zs = hidden_pre(model, x)
    for z, n in zip(zs, crown):
        for l, u in (with_beta[n], plain[n]):
            assert bool((l <= z.min(0).values).all() and (z.max(0).values <= u).all()), n
    width = lambda pre: sum(float((u - l).sum()) for l, u in pre.values())  # noqa: E731
    assert width(with_beta) < width(plain)


def _union_unstable(leaves) -> int:
    """Unstable neurons (l < 0 < u) of the per-neuron union of the leaves' bounds."""
    return sum(int(((np.min([p[m][0] for p in leaves], axis=0) < 0)
                    & (np.max([p[m][1] for p in leaves], axis=0) > 0)).sum()) for m in range(len(leaves[0])))


@pytest.mark.parametrize("seed,widths,eps", [CASES[1][:3], CASES[3][:3]])  # their first split stabilises some
def test_the_stall_rule_stops_exactly_when_a_doubling_stabilises_too_little(seed, widths, eps):
    """The first doubling (1 -> 2 leaves) of a tree without the rule stabilises a fraction ``f`` of the
    root's unstable neurons: with ``min_gain`` just above ``f`` the tree stops there ("stalled"), just
    below it grows on; the stalled tree's leaves still cover the box."""
    model, graph, box, g = case(seed, widths, eps)
    crown = crown_bounds(graph, box)
    pre = [(crown[n][0].numpy(), crown[n][1].numpy()) for n in crown]
    chain, lo, hi = relu_chain(graph), box.low.numpy(), box.high.numpy()
    two = split_tree(chain, pre, lo, hi, options=SplitOptions(max_leaves=2))
    f = 1 - _union_unstable(two.leaves) / _union_unstable([pre])
    assert f > 2e-3
    stalled = split_tree(chain, pre, lo, hi, options=SplitOptions(max_leaves=64, min_gain=min(f + 1e-3, 0.999)))
    grown = split_tree(chain, pre, lo, hi, options=SplitOptions(max_leaves=64, min_gain=max(f - 1e-3, 1e-6)))
    assert stalled.stopped_by == "stalled" and len(stalled.leaves) == 2
    assert len(grown.leaves) > 2
    d = box.low.numel()
    x = torch.cat([box.sample(3000, g), torch.where(torch.rand(200, d, generator=g) < 0.5, box.high, box.low)])
    with torch.no_grad():
        zs = [z.numpy() for z in hidden_pre(model, x)]
    assert _pattern_leaf(stalled.leaves, zs).all()
    with pytest.raises(InvalidInput, match="min_gain"):
        SplitOptions(min_gain=1.0)


def test_auto_localization_refines_deep_relu_mlps_only_and_holds_at_samples():
    """``localize(method="auto")``: a split tree on a ReLU MLP of 3+ hidden layers (bounds inside
    CROWN's, holding at samples), CROWN's own bounds on a 2-hidden-layer MLP and on a tanh MLP."""
    model, graph, box, g = case(1, [5, 16, 16, 16, 16, 3], 0.4)
    local, crown = localize(graph, box, method="auto"), crown_bounds(graph, box)
    assert "split-refined" in local.notes[-1]
    x = torch.cat([box.sample(3000, g)] + [ascent_ends(model, box, k, g) for k in range(4)])
    with torch.no_grad():
        zs = hidden_pre(model, x)
    for z, n in zip(zs, crown):
        l, u = local.nodes[n].pre
        assert bool((crown[n][0] <= l).all() and (u <= crown[n][1]).all())
        assert bool((l <= z.min(0).values).all() and (z.max(0).values <= u).all()), n
    _, shallow, sbox, _ = case(2, [4, 12, 12, 3], 0.5)
    tanh = from_torch(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6),
                                    nn.Tanh(), nn.Linear(6, 2)).double().eval(), (4,))
    for net in (shallow, tanh):
        local, crown = localize(net, sbox, method="auto"), crown_bounds(net, sbox)
        assert "split-refined" not in local.notes[-1]
        assert all(torch.equal(local.nodes[n].pre[0], crown[n][0]) and torch.equal(local.nodes[n].pre[1], crown[n][1])
                   for n in crown)
