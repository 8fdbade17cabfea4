"""LipSDP warm-started from a parent's certificate (:mod:`lipbound.methods.lipsdp_warm`).

Oracles: Jacobian norms ``||W3 D2 W2 D1 W1||_2`` at points sampled in the child's region (the box
cut by the split neuron's sign, computed here in numpy), which the child's certified bound must
reach; the parent's certified value, which it must not exceed; the child's full LipSDP solve, which
a warm start with enough iterations must come close to.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lipbound import as_graph
from lipbound.graph.ir import Activation
from lipbound.methods.lipsdp import lipsdp_certificate
from lipbound.methods.lipsdp_warm import SdpState, warm_bound
from lipbound.methods.propagation import localize
from lipbound.methods.region import Box


def _setting(seed: int):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    g = as_graph(net, (3,))
    low, high = -0.6 * torch.ones(3, dtype=torch.float64), 0.6 * torch.ones(3, dtype=torch.float64)
    local = localize(g, Box(low, high))
    names = [n for n, node in local.nodes.items() if isinstance(node, Activation)]
    pre = [tuple(v.reshape(-1).numpy().copy() for v in local.nodes[n].pre) for n in names]
    ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    bs = [m.bias.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    return local, names, pre, ws, bs, low.numpy(), high.numpy()


def _state(local, names, pre) -> SdpState:
    graph = local.localized(local.region, {n: (torch.from_numpy(l), torch.from_numpy(u)) for n, (l, u) in zip(names, pre)})
    res, lmi, cert = lipsdp_certificate(graph, time_budget=20)
    assert cert is not None
    return SdpState(cert.value, lmi, cert.t, [(l < 0) & (u > 0) for l, u in pre])


def _sampled_max(ws, bs, low, high, layer: int, i: int, active: bool, n: int = 20000) -> float:
    """max ||J(x)||_2 over sampled x in the box with neuron ``i`` of hidden ``layer`` on the ``active`` side."""
    x = np.random.default_rng(0).uniform(low, high, (n, len(low)))
    z1 = x @ ws[0].T + bs[0]
    z2 = np.maximum(z1, 0) @ ws[1].T + bs[1]
    z = (z1, z2)[layer][:, i]
    keep = z >= 0 if active else z <= 0
    d1, d2 = (z1[keep] > 0).astype(float), (z2[keep] > 0).astype(float)
    jac = np.einsum("ok,nk,kh,nh,hi->noi", ws[2], d2, ws[1], d1, ws[0])
    return float(np.linalg.norm(jac, ord=2, axis=(1, 2)).max())


@pytest.mark.parametrize("seed,layer,active", [(0, 1, True), (1, 0, True), (2, 1, False), (3, 0, False)])
def test_a_warm_child_bound_covers_the_child_region_and_stays_below_its_parent(seed, layer, active):
    local, names, pre, ws, bs, low, high = _setting(seed)
    parent = _state(local, names, pre)
    free = np.flatnonzero(parent.live[layer])
    assert free.size, "the test needs an unstable neuron to split"
    i = int(free[0])
    child = [(l.copy(), u.copy()) for l, u in pre]
    if active:
        child[layer][0][i] = 0.0
    else:
        child[layer][1][i] = 0.0
    live = [(l < 0) & (u > 0) for l, u in child]
    slopes = [np.where(l >= 0, 1.0, 0.0) for l, _ in child]
    got = warm_bound(parent, live, slopes, max_iter=200, seconds=20)
    assert got is not None
    assert got.value >= _sampled_max(ws, bs, low, high, layer, i, active)
    assert got.value <= parent.value * (1 + 1e-9)
    full = _state(local, names, child).value
    assert got.value <= full * 1.02


def test_a_child_with_a_neuron_the_parent_had_stable_gets_no_warm_bound():
    local, names, pre, *_ = _setting(0)
    parent = _state(local, names, pre)
    live = [m.copy() for m in parent.live]
    stable = np.flatnonzero(~live[0])
    live[0][stable[0]] = True
    assert warm_bound(parent, live, [np.zeros(len(m)) for m in live], max_iter=10, seconds=5) is None
    assert warm_bound(parent, [np.zeros(len(m), bool) for m in live], [np.zeros(len(m)) for m in live],
                      max_iter=10, seconds=5) is None
    assert math.isfinite(parent.value)
