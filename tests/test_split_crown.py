"""``split_crown.node_bounds`` (CROWN under a node's neuron splits) against sampled pre-activations
of points of the box that satisfy the node's splits (rejection sampling: an independent oracle),
and the root-capped ``neuron-bab`` against the brute-force local constant of ``test_neuron_bab``."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from lipbound.api import as_graph
from lipbound.methods import METHODS
from lipbound.methods.relu_boxes import Layer
from lipbound.methods.piecewise import mlp_layers
from lipbound.methods.split_crown import chain_of, children, node_bounds

from oracles import seeded_mlp as _net
from test_neuron_bab import _exact_local, _layers, _weights


def _chain(ws, bs) -> list[Layer]:
    return _layers(ws[:-1], bs[:-1])


def _interval_pre(ws, bs, low, high):
    """Interval bounds over the whole box (sound, loose): the root's bounds before CROWN."""
    pre, h_lo, h_hi = [], low, high
    for w, b in zip(ws[:-1], bs[:-1]):
        c, r = w @ ((h_lo + h_hi) / 2) + b, np.abs(w) @ ((h_hi - h_lo) / 2)
        pre.append((c - r * (1 + 1e-12) - 1e-12, c + r * (1 + 1e-12) + 1e-12))
        h_lo, h_hi = np.maximum(pre[-1][0], 0), np.maximum(pre[-1][1], 0)
    return pre


def _forward(ws, bs, x):
    zs, h = [], x
    for w, b in zip(ws[:-1], bs[:-1]):
        zs.append(h @ w.T + b)
        h = np.maximum(zs[-1], 0)
    return zs


def _random_nodes(pre, rng, count, depth):
    """Nodes reached by ``depth`` random splits each (unstable neurons, random sides)."""
    out = []
    for _ in range(count):
        node, split = [(l.copy(), u.copy()) for l, u in pre], [np.zeros(len(l), bool) for l, _ in pre]
        for _ in range(depth):
            free = [(m, i) for m, (l, u) in enumerate(node) for i in np.flatnonzero((l < 0) & (u > 0))]
            if not free:
                break
            m, i = free[rng.integers(len(free))]
            node, split = children(node, split, m, i)[rng.integers(2)]
        out.append(node)
    return out


@pytest.mark.parametrize("seed,widths", [(0, (3, 10, 8, 6, 2)), (1, (4, 12, 9, 3)), (2, (2, 8, 8, 8, 2))])
def test_node_bounds_contain_the_pre_activations_of_sampled_inputs_of_each_node(seed, widths):
    ws, bs = _weights(_net(seed, widths))
    rng = np.random.default_rng(seed)
    low, high = -np.ones(widths[0]), np.ones(widths[0])
    pre = _interval_pre(ws, bs, low, high)
    nodes = _random_nodes(pre, rng, 12, 3)
    got = node_bounds(_chain(ws, bs), nodes, low, high)
    x = rng.uniform(low, high, size=(40000, widths[0]))
    zs = _forward(ws, bs, x)
    tighter = 0
    for node, bounds in zip(nodes, got):
        inside = np.logical_and.reduce([((z >= l) & (z <= u)).all(1) for z, (l, u) in zip(zs, node)])
        for z, (l, u), (l0, u0) in zip(zs, bounds, node):
            assert (l >= l0).all() and (u <= u0).all()  # intersected with the node's own bounds
            assert (z[inside] >= l).all() and (z[inside] <= u).all()
            tighter += int((l > l0).sum() + (u < u0).sum())
    assert tighter > 0  # CROWN improves on the interval bounds somewhere (the test can see a no-op)


def test_a_batch_of_nodes_gets_the_bounds_each_node_gets_alone():
    ws, bs = _weights(_net(3, (3, 9, 7, 5, 2)))
    low, high = -np.ones(3), np.ones(3)
    nodes = _random_nodes(_interval_pre(ws, bs, low, high), np.random.default_rng(3), 6, 2)
    together = node_bounds(_chain(ws, bs), nodes, low, high)
    for node, both in zip(nodes, together):
        alone = node_bounds(_chain(ws, bs), [node], low, high)[0]
        for (l, u), (la, ua) in zip(both, alone):
            np.testing.assert_allclose(l, la, rtol=1e-12, atol=1e-15)  # up to the BLAS kernel's rounding
            np.testing.assert_allclose(u, ua, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed,widths,units", [(0, (2, 5, 4, 2), 1), (1, (3, 4, 4, 3), 0), (2, (3, 5, 4, 2), 3)])
def test_a_capped_root_lp_still_closes_on_the_brute_force_constant(seed, widths, units):
    net = _net(seed, widths)
    gen = torch.Generator().manual_seed(seed)
    low = -torch.rand(widths[0], generator=gen, dtype=torch.float64) - 0.3
    high = torch.rand(widths[0], generator=gen, dtype=torch.float64) + 0.3
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](as_graph(net, (widths[0],)), domain=(low, high), time_budget=20, vertex_units=0,
                                node_sdp=False, root_lp_units=units, batch=3, ascent_share=0, node_lp_units=0)
    assert res.details["lp_units"] <= units
    assert res.details["upper"] >= truth * (1 - 1e-9)
    assert res.kind == "exact" and res.value == pytest.approx(truth, rel=1e-6)
    assert res.details["stopped_by"] == "converged"


def test_a_search_stopped_with_a_gap_does_not_say_converged():
    net = _net(6, (4, 3, 3, 3, 2))
    low, high = -torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    res = METHODS["neuron-bab"](as_graph(net, (4,)), domain=(low, high), time_budget=20, vertex_units=0,
                                node_sdp=False, max_nodes=1, root_lp_units=0, ascent_share=0)
    assert res.details["upper"] > res.details["lower"]
    assert res.kind == "certified_upper" and res.details["stopped_by"] == "work"


@pytest.mark.parametrize("seed,widths", [(0, (2, 5, 4, 2)), (1, (2, 4, 4, 2))])
def test_node_lp_tightening_keeps_the_search_exact(seed, widths):
    """Every node that reaches the top is tightened by its LP (2 neurons each, both sides, whatever their
    reach: ``node_lp_reach=None``) before it is split."""
    net = _net(seed, widths)
    low, high = -torch.ones(widths[0], dtype=torch.float64), torch.ones(widths[0], dtype=torch.float64)
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](as_graph(net, (widths[0],)), domain=(low, high), time_budget=20, vertex_units=0,
                                node_sdp=False, root_lp_units=0, node_lp_units=2, node_lp_reach=None,
                                ascent_share=0)
    assert res.details["lp_units"] > 0 and res.details["search_nodes"] > 0
    assert res.details["upper"] >= truth * (1 - 1e-9)
    assert res.kind == "exact" and res.value == pytest.approx(truth, rel=1e-6)


@pytest.mark.parametrize("seed,widths,node_lp", [(0, (2, 5, 4, 2), 2), (1, (2, 4, 4, 2), 0), (4, (3, 4, 3, 2), 3)])
def test_without_witnesses_the_search_ends_on_the_brute_force_constant(monkeypatch, seed, widths, node_lp):
    """No witness ever prunes (the net's sampling and the graph's re-checks disabled), so every node is
    split down to its leaves: the largest open leaf is the brute-force constant, and a node bound below
    it anywhere (CROWN or LP under the splits, the caps) would show as a smaller upper end."""
    from lipbound.methods.bab_witness import Rechecked
    from lipbound.methods.exact_network import WitnessedNet
    monkeypatch.setattr(WitnessedNet, "sample", lambda self, x: None)
    monkeypatch.setattr(Rechecked, "offer", lambda self, x, v=None: None)
    monkeypatch.setattr(Rechecked, "keep", lambda self, witness: None)
    net = _net(seed, widths)
    low, high = -torch.ones(widths[0], dtype=torch.float64), torch.ones(widths[0], dtype=torch.float64)
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](as_graph(net, (widths[0],)), domain=(low, high), time_budget=20, vertex_units=0,
                                node_sdp=False, root_lp_units=2, node_lp_units=node_lp, ascent_share=0, batch=2)
    assert res.details["stopped_by"] == "open-leaf" and res.details["search_nodes"] > 1
    assert truth * (1 - 1e-9) <= res.details["upper"] <= truth * (1 + 1e-6)


def _exact_maps(net: nn.Sequential, width: int) -> list[tuple[list[list[Fraction]], list[Fraction]]]:
    """Per activation of ``net`` (``width`` inputs), the exact affine map before it (``(W*, b*)`` in
    rationals: the modules' float64 weights composed exactly; the identity where there is none)."""
    out = []
    W = b = None
    for mod in net:
        if isinstance(mod, nn.Linear):
            w2 = [[Fraction(float(v)) for v in row] for row in mod.weight.detach()]
            b2 = [Fraction(float(v)) for v in mod.bias.detach()]
            if W is not None:
                b2 = [sum((w2[i][k] * b[k] for k in range(len(b))), b2[i]) for i in range(len(w2))]
                w2 = [[sum(w2[i][k] * W[k][j] for k in range(len(W))) for j in range(len(W[0]))]
                      for i in range(len(w2))]
            W, b, width = w2, b2, len(w2)
        else:
            if W is None:  # no affine node before it
                W = [[Fraction(int(i == j)) for j in range(width)] for i in range(width)]
                b = [Fraction(0)] * width
            out.append((W, b))
            W = b = None
    return out


@pytest.mark.parametrize("mods,inputs", [
    (lambda: [nn.Linear(3, 5), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)], 3),
    (lambda: [nn.ReLU(), nn.Linear(3, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)], 3)],
    ids=["composed", "relu-first"])
def test_chain_of_encloses_the_exact_maps(mods, inputs):
    """``chain_of``'s layers are ``mlp_layers``' float64 numbers (the fused graph: a dense layer after
    another is one node, its matrix and bias rounded when composed) with enclosures that must contain
    the exact maps, composed in rational arithmetic from the modules' weights; the floats miss them."""
    torch.manual_seed(3)
    net = nn.Sequential(*mods()).double()
    for p in net.parameters():  # full float64 mantissas (torch draws them in float32): products round
        p.data = torch.randn_like(p) / 2
    graph = as_graph(net, (inputs,))
    layers = mlp_layers(graph, method="test")
    chain = chain_of(graph, [l.weight.numpy() for l in layers[:-1]], [l.bias.numpy() for l in layers[:-1]])
    exact = _exact_maps(net, inputs)
    assert len(chain) == len(exact)
    missed = 0
    for layer, (W, b) in zip(chain, exact):
        assert layer.W.shape == (len(W), len(W[0]))
        for i, row in enumerate(W):
            for j, v in enumerate(row):
                assert abs(Fraction(float(layer.W[i, j])) - v) <= Fraction(float(layer.E[i, j]))
                missed += Fraction(float(layer.W[i, j])) != v
            assert abs(Fraction(float(layer.b[i])) - b[i]) <= Fraction(float(layer.e[i]))
            missed += Fraction(float(layer.b[i])) != b[i]
    assert missed > 0  # the enclosures are needed: the float64 numbers are not the exact maps
