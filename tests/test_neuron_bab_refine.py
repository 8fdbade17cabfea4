"""The node refinement of ``neuron-bab`` against independent oracles: the LP tightening with its
reach rule (pre-activations sampled in the box must stay inside the tightened bounds; which neurons
moved is read off the bounds before and after), and the full LipSDP solve of a node whose LMI is not
a chain (at least the brute-force maximum of ``||W_3 D_2 W_2 D_1 W_1||`` over every vertex of the
node's slope box, and no looser than the first-order solver's checked value on the same graph)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from lipbound.api import as_graph
from lipbound.methods.bab_sdp import NodeSdp
from lipbound.methods.exact_search import BranchAndBound
from lipbound.methods.interval_jacobian import weight_enclosures
from lipbound.methods.lipsdp import lipsdp_certificate
from lipbound.methods.neuron_bab_search import NodeSearch
from lipbound.methods.piecewise import mlp_layers
from lipbound.methods.propagation import localize
from lipbound.methods.region import Box
from lipbound.methods.split_crown import chain_of
from lipbound.methods.split_lp import SplitLP

from oracles import seeded_mlp


def _setup(seed: int, widths: tuple, radius: float):
    net = seeded_mlp(seed, widths)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, widths[0])
    box = Box(torch.from_numpy(centre - radius), torch.from_numpy(centre + radius))
    local = localize(as_graph(net, (widths[0],)), box)
    layers = mlp_layers(local, method="test")
    bb = BranchAndBound(layers, box, 1e-9)
    pre = [(l.pre[0].numpy().copy(), l.pre[1].numpy().copy()) for l in layers[:-1]]
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    ws = [m.weight.detach().numpy() for m in lin]
    bs = [m.bias.detach().numpy() for m in lin]
    x = rng.uniform(centre - radius, centre + radius, size=(20000, widths[0]))
    z = [x @ ws[0].T + bs[0]]
    for w, b in zip(ws[1:-1], bs[1:-1]):
        z.append(np.maximum(z[-1], 0) @ w.T + b)
    return net, local, bb, pre, ws, z


def _tightened(local, bb, pre, reach):
    search = NodeSearch(bb, weight_enclosures(local, bb.w), chain_of(local, bb.w[:-1], bb.num.b[:-1]), pre, 1e-9, 0)
    split = [np.zeros(len(l), dtype=bool) for l, _ in pre]
    return search._tighten([(l.copy(), u.copy()) for l, u in pre], split, math.inf, 10_000, reach), search


def test_lp_reach_bounds_only_the_near_side_of_neurons_near_stability_and_stays_sound(monkeypatch):
    """Every LP run is read off at its call: the neuron's bounds when its layer's LP was built say
    whether it was within reach and which side is nearer 0."""
    _, local, bb, pre, _, z = _setup(3, (5, 24, 16, 3), 0.6)
    calls = []
    built, bound = SplitLP.__init__, SplitLP.bound

    def spy_init(self, layers, pre_, *args):
        built(self, layers, pre_, *args)
        self.spy_pre = [(l.copy(), u.copy()) for l, u in pre_]

    def spy_bound(self, m, i, sides=(1.0, -1.0)):
        l, u = self.spy_pre[m][0][i], self.spy_pre[m][1][i]
        calls.append((min(-l, u) / (u - l), tuple(sides), -l <= u))
        return bound(self, m, i, sides)

    monkeypatch.setattr(SplitLP, "__init__", spy_init)
    monkeypatch.setattr(SplitLP, "bound", spy_bound)
    for reach in (0.1, 0.5, None):
        calls.clear()
        got, _ = _tightened(local, bb, pre, reach)
        assert got is not None and calls
        for zm, (l, u) in zip(z, got):  # sound: every sampled pre-activation inside the tightened bounds
            assert (zm >= l - 1e-9).all() and (zm <= u + 1e-9).all()
        fractions = np.array([f for f, _, _ in calls])
        assert (fractions > 0).all()  # only free neurons are bounded
        if reach is None:
            assert all(sides == (1.0, -1.0) for _, sides, _ in calls)
            continue
        assert (fractions <= reach).all(), reach  # out of reach: no LP
        assert all(sides == ((1.0,) if near_low else (-1.0,)) for _, sides, near_low in calls), reach  # near side
        if reach == 0.5:  # the rule has teeth here: neurons out of 0.1's reach are bounded once allowed
            assert (fractions > 0.1).any()


def test_full_node_solve_of_a_non_chain_lmi_bounds_every_slope_vertex_and_matches_first_order():
    """A node with stably active first-layer neurons: its LMI has a block that skips a layer (not a
    chain), which the interior point now solves too."""
    _, local, bb, pre, ws, _ = _setup(5, (4, 10, 8, 2), 0.35)
    states = [np.where(l >= 0, 1.0, np.where(u <= 0, 0.0, np.nan)) for l, u in pre]
    assert (states[0] == 1).any() and 0 < sum(np.isnan(s).sum() for s in states) <= 14
    value, state = NodeSdp(local, 0)(pre, 30.0, None)
    assert state is not None and not state.lmi.is_chain()
    free = [np.flatnonzero(np.isnan(s)) for s in states]
    vertex_max = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(len(f) for f in free)):
        d = [s.copy() for s in states]
        d[0][free[0]], d[1][free[1]] = bits[:len(free[0])], bits[len(free[0]):]
        jac = ws[2] @ (d[1][:, None] * ws[1]) @ (d[0][:, None] * ws[0])
        vertex_max = max(vertex_max, float(np.linalg.norm(jac, 2)))
    assert value >= vertex_max * (1 - 1e-9), (value, vertex_max)
    graph = local.localized(local.region, {n: (torch.from_numpy(l).reshape(local.nodes[n].pre[0].shape),
                                                torch.from_numpy(u).reshape(local.nodes[n].pre[0].shape))
                                           for n, (l, u) in zip(NodeSdp(local, 0).names, pre)})
    first_order, _, _ = lipsdp_certificate(graph, solver="first-order", time_budget=30.0)
    assert value <= first_order.value * (1 + 1e-3), (value, first_order.value)
