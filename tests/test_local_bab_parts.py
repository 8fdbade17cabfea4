"""The pieces ``local-bab`` is built from, each against an independent oracle: the flat-box
reduction (:mod:`lipbound.methods.local_bab_region`: the torch module evaluated at the embedded
points; witnesses mapped back re-checked by the exact-arithmetic quotient), the lower end
(:mod:`lipbound.methods.local_bab_witness`: numpy Jacobian norms, the exact quotient) and the
report of a method cut short (:class:`lipbound.methods.local_bab_part.Outcome`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipbound.errors import InvalidInput, NotApplicable
from lipbound.methods.local_bab_batch import batched_search
from lipbound.methods.local_bab_region import as_box, expanded, free_inputs
from lipbound.methods.local_bab_witness import BestWitness
from lipbound.methods.part_exact import PartBound
from lipbound.methods.region import Ball, Box
from lipbound.methods.relu_boxes import relu_chain
from lipbound.methods.witness import PointWitness

from test_exact import graph_of, witness_quotient
from test_exact_local import box_of, random_net
from test_local_bab import local_bab, relu_jacobian_norms, relu_net


@pytest.mark.parametrize("seed", range(3))
def test_free_inputs_is_the_network_on_the_flat_box(seed):
    """The reduced graph at free points equals the torch module at the embedded points; the
    reduced box is the free coordinates' box."""
    net = random_net(seed, widths=(5, 4), n=4)
    low, high = np.array([-1.0, 0.3, -0.5, -0.7]), np.array([1.0, 0.3, 0.5, -0.7])  # inputs 1, 3 fixed
    graph = graph_of(net).to(dtype=torch.float64)
    reduced, box, expand = free_inputs(graph, box_of(low, high))
    assert expand is not None and reduced.input_shape == (2,)
    assert box.low.tolist() == [-1.0, -0.5] and box.high.tolist() == [1.0, 0.5]
    free = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (8, 2)))
    full = np.tile(low, (8, 1))
    full[:, [0, 2]] = free.numpy()
    with torch.no_grad():
        want = net.module()(torch.from_numpy(full))
        assert torch.allclose(reduced(free), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_a_free_input_witness_maps_back_and_rechecks(seed):
    """A Jacobian witness on the free inputs, mapped back: its point fixes the flat inputs, its
    direction is 0 there, and its value is the exact quotient on the original net."""
    net = relu_net(seed, 3, widths=(6, 5))
    low, high = np.array([-1.0, 0.25, -1.0]), np.array([1.0, 0.25, 1.0])
    graph = graph_of(net).to(dtype=torch.float64)
    region = box_of(low, high)
    reduced, box, expand = free_inputs(graph, region)
    x = torch.tensor([0.1 + 0.2 * seed, -0.3], dtype=torch.float64)
    v = torch.tensor([0.6, -0.8], dtype=torch.float64)
    value, witness = expanded(0.0, PointWitness(x, v), expand, graph, region)
    assert witness is not None
    assert witness.x.tolist() == [x[0].item(), 0.25, x[1].item()] and witness.v.tolist() == [0.6, 0.0, -0.8]
    assert value == pytest.approx(witness_quotient(net, witness.x.numpy(), witness.v.numpy()), rel=1e-9)
    assert expanded(1.5, None, expand, graph, region) == (1.5, None)


def test_free_inputs_refuses_a_point_and_as_box_an_l2_ball():
    graph = graph_of(random_net(0, widths=(3,), n=2))
    with pytest.raises(InvalidInput, match="single point"):
        free_inputs(graph, box_of([0.5, 0.5], [0.5, 0.5]))
    with pytest.raises(NotApplicable, match="boxes"):
        as_box(Ball(torch.zeros(2, dtype=torch.float64), 1.0, 2))
    assert as_box(box_of([0.0, 1.0], [1.0, 2.0])).high.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("seed", range(3))
def test_best_witness_keeps_only_rechecked_gains(seed):
    """A claimed value is replaced by the re-checked one (the exact quotient); a point outside the
    region, or a lower value, is refused."""
    net = relu_net(seed, 2, widths=(6, 6))
    graph = graph_of(net).to(dtype=torch.float64)
    best = BestWitness(graph, box_of([-1.0, -1.0], [1.0, 1.0]), seed)
    x = torch.tensor([0.3, -0.2], dtype=torch.float64) + 0.1 * seed
    v = torch.tensor([1.0, 0.5], dtype=torch.float64)
    truth = witness_quotient(net, x.numpy(), v.numpy())
    best.offer(1e6, PointWitness(x + 5.0, v), "outside")
    assert best.lower == 0.0 and best.witness is None
    best.offer(1e6, PointWitness(x, v), "claim")
    assert best.lower == pytest.approx(truth, rel=1e-9) and best.lower_from == "claim"
    best.offer(0.5 * truth, PointWitness(-x, v), "lower", checked=True)
    assert best.lower == pytest.approx(truth, rel=1e-9) and best.lower_from == "claim"


@pytest.mark.parametrize("seed", range(3))
def test_sampling_a_part_reaches_its_centre_norm_and_stays_in_the_part(seed):
    """The sampled lower end is at least the Jacobian norm at the part's centre (numpy), at most the
    largest one on a fine grid of the part (up to the grid), and its witness lies in the part."""
    net = relu_net(seed, 2, widths=(8, 8))
    low, high = torch.tensor([-0.6, -0.4], dtype=torch.float64), torch.tensor([0.2, 0.6], dtype=torch.float64)
    best = BestWitness(graph_of(net).to(dtype=torch.float64), Box(low, high), seed)
    value = best.sample(low, high, 32)
    centre = relu_jacobian_norms(net, ((low + high) / 2).numpy()[None])[0]
    assert value >= centre * (1 - 1e-9) and best.lower == value
    x = best.witness.x
    assert bool(((x >= low) & (x <= high)).all())
    assert value == pytest.approx(witness_quotient(net, x.numpy(), best.witness.v.numpy()), rel=1e-9)
    alone = BestWitness(best.graph, Box(low, high), seed)  # one point: the centre's norm itself
    assert alone.sample(low, high, 1) == pytest.approx(centre, rel=1e-9)


class _TimedOutExact:
    """A stand-in for :class:`~lipbound.methods.part_exact.PartExact` whose every run is cut short by
    its deadline, bounding nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def bound(self, low, high, pre, seed, deadline) -> PartBound:
        self.calls += 1
        return PartBound(math.inf, False, None, 0, True)


def test_an_exact_run_cut_short_is_reported_by_the_batched_search():
    net = relu_net(1, 2, widths=(8, 8))
    graph = graph_of(net).to(dtype=torch.float64)
    low, high = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    exact = _TimedOutExact()
    outcome = batched_search(relu_chain(graph), BestWitness(graph, Box(low, high), 0), low, high, tol=0.0,
                             max_parts=200, batch=64, vertex_units=2, strong=False, deadline=math.inf,
                             full_units=8, exact=exact, exact_units=100)
    assert exact.calls > 0 and outcome.cut and outcome.stopped_by != "time"


def test_a_method_cut_short_marks_the_result_time():
    """The region bounded once (``max_split_dim=1``): ``lower`` gets the rest of the budget on it and is
    cut short by it; the result says ``stopped_by: "time"`` though the search itself did not split."""
    net = random_net(1, widths=(6, 5), n=3)
    res = local_bab(net, [-1.0, -0.5, 0.0], [0.5, 1.0, 1.0], max_split_dim=1, upper_methods=("autolip",),
                    exact_units=0, time_budget=0.5, lower_share=0.0)
    assert res.details["stopped"] == "no split (input too large)"
    assert res.details["stopped_by"] == "time"
