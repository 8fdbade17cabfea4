"""The lower end of ``neuron-bab`` (:mod:`lipbound.methods.bab_witness`) against independent oracles:
Jacobian norms by torch autograd on the original float32/float64 module (another path than the
net's numpy Jacobians), and the exact local constant of tiny MLPs by enumerating every activation
pattern realisable in the box (``test_neuron_bab._exact_local``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lipbound
from lipbound.api import as_graph
from lipbound.methods import METHODS
from lipbound.methods.bab_witness import WitnessPool
from lipbound.methods.exact_network import PiecewiseNet
from lipbound.methods.exact_search import BranchAndBound
from lipbound.methods.piecewise import mlp_layers
from lipbound.methods.propagation import localize
from lipbound.methods.region import Box

from oracles import jacobian_norms, seeded_mlp
from test_neuron_bab import _exact_local


def _setup(seed: int, widths: tuple[int, ...]):
    net = seeded_mlp(seed, widths)
    gen = torch.Generator().manual_seed(seed)
    low = -torch.rand(widths[0], generator=gen, dtype=torch.float64) - 0.3
    high = torch.rand(widths[0], generator=gen, dtype=torch.float64) + 0.3
    box = Box(low, high)
    local = localize(as_graph(net, (widths[0],)).to(dtype=torch.float64), box)
    return net, box, local, BranchAndBound(mlp_layers(local, method="neuron-bab"), box, 1e-6)


def test_the_pool_offers_every_point_and_keeps_at_most_its_capacity():
    net, box, _, bab = _setup(4, (3, 6, 5, 2))
    rng = np.random.default_rng(0)
    lo, hi = box.low.numpy(), box.high.numpy()
    inside = rng.uniform(lo, hi, size=(40, 3))
    outside = hi + rng.uniform(0.5, 2.0, size=(10, 3))  # clipped onto the box's faces: still in the box
    pool = WitnessPool(bab, capacity=45)
    pool.add(inside[:25])
    pool.add(np.vstack([inside[25:], outside]))
    kept = np.concatenate(pool.points)
    assert len(kept) == pool.kept == 45
    assert ((kept >= lo) & (kept <= hi)).all()
    clipped = np.clip(np.vstack([inside, outside]), lo, hi)
    oracle = jacobian_norms(net, torch.from_numpy(clipped)).max().item()  # random points: off every kink
    assert bab.best == pytest.approx(oracle, rel=1e-9)
    assert jacobian_norms(net, torch.from_numpy(bab.best_x[None])).item() == pytest.approx(bab.best, rel=1e-9)


@pytest.mark.parametrize("seed,widths", [(1, (3, 4, 4, 3)), (2, (2, 8, 2))])
def test_the_search_witness_rechecks_and_reaches_the_local_constant(seed, widths):
    net, box, local, bab = _setup(seed, widths)
    truth = _exact_local(net, box.low.numpy(), box.high.numpy())
    pool = WitnessPool(bab)
    pool.add(np.random.default_rng(seed).uniform(box.low.numpy(), box.high.numpy(), size=(8, widths[0])))
    before = bab.best
    stop = pool.search(local, box, seed, (0.5, 0.3), budget=2.0)
    assert stop in ("converged", "iterations", "work", "time")
    assert before <= bab.best <= truth * (1 + 1e-9)
    assert bab.best >= truth * (1 - 1e-9)  # tiny nets: the seeded search reaches the constant (seed 2: from 0.147 to 0.151)
    x = bab.best_x
    assert ((x >= box.low.numpy()) & (x <= box.high.numpy())).all()
    assert jacobian_norms(net, torch.from_numpy(x[None])).item() == pytest.approx(bab.best, rel=1e-9)


def test_an_open_search_reports_its_witnessed_lower_end():
    """Cut after one node, neuron-bab returns a certified upper end; the report's lower end is its
    witnessed one (not None), at most the brute-forced local constant, and its witness's Jacobian norm
    (autograd on the torch model) reaches it."""
    net, box, local, _ = _setup(6, (4, 5, 3, 3))
    truth = _exact_local(net, box.low.numpy(), box.high.numpy())
    report = lipbound.estimate(net, (4,), domain=box, methods=["neuron-bab"], progress=False,
                               method_options={"neuron-bab": {"max_nodes": 1}})
    result = report.results[0]
    assert result.kind.value == "certified_upper" and result.upper >= truth * (1 - 1e-9)
    assert report.lower is not None and report.lower == result.details["lower"] <= truth * (1 + 1e-9)
    x = torch.as_tensor(result.witness.x, dtype=torch.float64).reshape(1, -1)
    assert jacobian_norms(net, x).item() >= report.lower * (1 - 1e-9)


def test_the_lp_points_are_witnesses_and_the_seeded_search_only_raises_the_lower_end():
    net, box, _, _ = _setup(6, (4, 5, 3, 3))
    truth = _exact_local(net, box.low.numpy(), box.high.numpy())
    g = as_graph(net, (4,))
    res = METHODS["neuron-bab"](g, domain=(box.low, box.high), time_budget=5, vertex_units=0, node_sdp=False,
                                max_nodes=1, ascent_share=0.3)
    d = res.details
    assert d["lps"] > 0 and d["lp_lower"] is not None
    assert d["lp_lower"] <= d["seeded_lower"] <= truth * (1 + 1e-9)
    assert d["seeded_lower"] * (1 - 1e-9) <= d["lower"] <= truth * (1 + 1e-9)  # the best witness, re-checked
    assert d["upper"] >= truth * (1 - 1e-9)


def _deep_net() -> tuple[torch.nn.Sequential, Box]:
    """12 hidden layers of 48 with doubled weights (the net's acceptance test is made to reject every
    point in the test below, so that only the graph's re-check witnesses)."""
    net = seeded_mlp(0, (8,) + (48,) * 12 + (3,))
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(2.0)
    return net, Box(torch.full((8,), -0.05, dtype=torch.float64), torch.full((8,), 0.05, dtype=torch.float64))


def _rejecting(pieces_at):
    """``pieces_at`` with every neuron reported not clear of its breakpoints (no point is accepted)."""
    def patched(self, x):
        piece, clear, varies = pieces_at(self, x)
        return piece, np.zeros_like(clear), varies
    return patched


@pytest.mark.parametrize("options", [dict(root_lp_units=0, ascent_share=0.0),  # the centre's witness alone
                                     dict(root_lp_share=1.0, sdp_share=1.0)])  # root work up to the witness share
def test_a_lower_end_when_the_root_work_exceeds_the_budget_and_the_net_rejects_every_point(monkeypatch, options):
    """The net's own acceptance test (``pieces_at``) once rejected every point of deep nets; since its
    bound was tightened it accepts them, so the rejection is forced here: the lower end must then come
    from the graph's re-check alone."""
    net, box = _deep_net()
    g = as_graph(net, (8,))
    monkeypatch.setattr(PiecewiseNet, "pieces_at", _rejecting(PiecewiseNet.pieces_at))
    bab = BranchAndBound(mlp_layers(localize(g.to(dtype=torch.float64), box), method="neuron-bab"), box, 1e-6)
    centre = box.center.reshape(1, -1).numpy()
    bab.sample(np.vstack([centre, np.random.default_rng(0).uniform(-0.05, 0.05, size=(20, 8))]))
    assert bab.best == -np.inf  # the precondition: the net's own test accepts no point
    res = METHODS["neuron-bab"](g, domain=(box.low, box.high), time_budget=0.5, **options)  # root LPs: longer
    lower = res.details["lower"]
    assert lower is not None and lower > 0
    x = res.witness.x.reshape(1, -1)
    assert ((x >= box.low) & (x <= box.high)).all()
    at_witness = jacobian_norms(net, x).item()  # autograd on the module: another path than the graph's re-check
    assert lower <= at_witness * (1 + 1e-9)
    assert lower >= jacobian_norms(net, box.center.reshape(1, -1)).item() * (1 - 1e-6)  # at least the centre's
    assert res.details["upper"] >= at_witness * (1 - 1e-9)
