"""The cost model's LipSDP path on residual networks is the one ``lipsdp(solver="auto")`` takes.

Oracles: lipsdp's own routing (:func:`~lipbound.methods.lipsdp_conv.routes_to_blocks`) and the real
call, which refuses a budget too small for the "blocks" path's set-up before building anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.methods.cost import graph_sizes, lipsdp_cost, lipsdp_path
from lipbound.methods.lipsdp import lipsdp
from lipbound.methods.lipsdp_conv import routes_to_blocks


class ResidualCNN(nn.Module):
    """ResNet-2B-like shapes: a stride-2 stem (3x32x32 -> 8x16x16), one residual block, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.conv2(torch.relu(self.conv1(h))))
        return self.head(h.flatten(1))


@pytest.fixture(scope="module")
def residual() -> lipbound.Graph:
    torch.manual_seed(0)
    return lipbound.as_graph(ResidualCNN().eval(), (3, 32, 32))


def test_a_residual_net_too_large_to_assemble_goes_to_blocks(residual):
    sizes = graph_sizes(residual)
    assert sizes.kind == "cnn" and sizes.chain_orders is None  # not a chain: a residual block
    assert routes_to_blocks(residual)  # lipsdp's own routing
    assert lipsdp_path(sizes, 300.0) == lipsdp_path(sizes) == "blocks"
    assert math.isfinite(lipsdp_cost(sizes)) and lipsdp_cost(sizes) > 0


def test_a_budget_below_the_blocks_set_up_is_refused_by_both(residual):
    assert lipsdp_path(graph_sizes(residual), 1e-3) == "refused"
    with pytest.raises(NotApplicable, match="would not fit"):
        lipsdp(residual, solver="auto", time_budget=1e-3)


class DenseResidual(nn.Module):
    """FC-R18's shapes (GLipSDP): 784 -> 64, eight blocks ``ReLU(x + W2 ReLU(W1 x))`` of width 64, 64 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(784, 64)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)) for _ in range(8))
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.out(h)


def test_dense_residual_nets_are_priced_block_by_block():
    """On a dense residual net the LMI's blocks each read one or two earlier blocks: ECLipsE-Fast and
    LipSDP work block by block (measured on FC-R18: 0.4 s and 12 s). Priced as a dense factorisation
    of the whole order (1872^3), both were predicted minutes and left out of a 30 s default run,
    whose bound then came from SeqLip at 2.4x LipSDP's value."""
    torch.manual_seed(0)
    graph = lipbound.as_graph(DenseResidual().eval(), (784,))
    sizes = graph_sizes(graph)
    assert sizes.kind == "residual" and sizes.lmi_order == 784 + 64 * 17
    assert sizes.chain_work < sizes.lmi_order ** 3 / 100
    chosen = lipbound.methods.selection.default_methods(graph)
    assert "lipsdp" in chosen and "eclipse-fast" in chosen


def wide_input_cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A 2 x 40 x 40 input (3,200 elements), one stride-2 convolution to 400 ReLUs, a 16-ReLU dense
    layer, a head: its LMI (order 3,616, bandwidth ~3,600) is too large to assemble, so lipsdp routes
    it to "blocks", whose start is cheap (a 400-neuron block; the input block is reduced to rank 400)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 1, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(400, 16),
                        nn.ReLU(), nn.Linear(16, 3))
    return net.double().eval(), (2, 40, 40)


def test_the_default_run_gives_the_blocks_path_bound_on_a_cnn_where_its_start_fits():
    """Oracles: AutoLip's certified bound (the default run must not be looser than it) and sampled
    Jacobian norms of the module (lower bounds of L(f), which no certified bound may undercut)."""
    from conftest import jacobian_norm
    from lipbound.methods.selection import default_methods

    net, shape = wide_input_cnn(0)
    graph = lipbound.as_graph(net, shape)
    assert routes_to_blocks(graph)
    chosen = default_methods(graph, lower=False, time_budget=8.0)  # the default set's upper bounds (no lower: fast)
    assert "lipsdp" in chosen and "autolip" in chosen
    report = lipbound.estimate(graph, methods=chosen, time_budget=8.0)
    sdp = report.result("lipsdp")
    assert sdp.kind == "certified_upper" and sdp.details["solver"] == "blocks"
    torch.manual_seed(1)
    sampled = max(jacobian_norm(net, torch.rand(shape, dtype=torch.float64)) for _ in range(30))
    assert sampled <= sdp.value <= report.result("autolip").value
    assert report.upper <= sdp.value and report.upper_method == "lipsdp"


def test_the_plan_reads_sizes_only():
    """Two CNNs of the same shapes and different weights get the same plan at every budget; a budget
    between the start's and the solver's predicted seconds gives the start, and the real call agrees."""
    from lipbound.methods.lipsdp_conv import blocks_plan, lipsdp_blocks, solve_seconds, start_seconds
    from lipbound.methods.selection import default_methods

    graphs = [lipbound.as_graph(*wide_input_cnn(seed)) for seed in (0, 1)]
    sizes = [graph_sizes(g) for g in graphs]
    start, solve = start_seconds(sizes[0].blocks), solve_seconds(sizes[0].blocks)
    assert 0 < start < solve
    for budget in (start / 2, (start + solve) / 2, 2 * solve, 30.0):
        plans = {blocks_plan(s.blocks, budget) for s in sizes}
        assert len(plans) == 1
        assert len({tuple(default_methods(g, time_budget=budget)) for g in graphs}) == 1
    assert blocks_plan(sizes[0].blocks, start / 2) == "refused"
    assert blocks_plan(sizes[0].blocks, (start + solve) / 2) == "start"
    assert blocks_plan(sizes[0].blocks, solve * 1.01) == "solve"
    res = lipsdp_blocks(graphs[1], time_budget=(start + solve) / 2)
    assert res.details["plan"] == "start" and res.details["iterations"] == 0 and res.details["stopped_by"] == "work"


def test_the_search_cap_grows_with_the_budget_from_zero_at_the_least_solve_budget():
    """The check's search (:func:`~lipbound.methods.lipsdp_conv.search_evaluations`) is 0 where the
    solver first fits, never decreases with the budget, and stops at ``SEARCH_EVALUATIONS``; at every
    budget the solve plan leaves its least evaluations after the start's set-up, the reduction and the
    reserve, each evaluation priced on the LMI that takes it: the proof on the full one, the others on
    the reduced one (oracle: the sum written out from the module doc's counts)."""
    from lipbound.methods.lipsdp_conv import (CHECK_EVALUATIONS, FINAL_EVALUATIONS, SOLVE_MIN_EVALUATIONS,
                                              START_CHECK_EVALUATIONS, blocks_plan, reduce_seconds,
                                              search_evaluations, solve_seconds, solving_structure, start_seconds)
    from lipbound.methods.machine import BLOCKS_RATE
    from lipbound.methods.sdp_verify import SEARCH_EVALUATIONS

    structure = graph_sizes(lipbound.as_graph(*wide_input_cnn(0))).blocks
    one = structure.work() / BLOCKS_RATE
    each = solving_structure(structure).work() / BLOCKS_RATE
    least = solve_seconds(structure)
    assert search_evaluations(structure, least) == 0 and search_evaluations(structure, 1e9) == SEARCH_EVALUATIONS
    caps = [search_evaluations(structure, least + k * each) for k in range(80)]
    assert caps == sorted(caps) and caps[-1] == SEARCH_EVALUATIONS
    for k, search in enumerate(caps):
        budget = least + k * each
        assert blocks_plan(structure, budget) == "solve"
        set_up = start_seconds(structure) - START_CHECK_EVALUATIONS * one + reduce_seconds(structure)
        reserve = one + (FINAL_EVALUATIONS + CHECK_EVALUATIONS - 1 + search) * each
        assert budget - set_up - reserve >= SOLVE_MIN_EVALUATIONS * each * (1 - 1e-9)


REALNETS = Path(__file__).resolve().parents[2] / "shared" / "realnets"


@pytest.mark.skipif(not REALNETS.is_dir(), reason="the shared realnets folder is absent")
@pytest.mark.parametrize("name", ["oval21_cifar_base_kw.onnx", "cifar10_resnet_2b.onnx"])
def test_a_60_s_default_run_plans_the_solver_on_the_realnets_cnns(name):
    """Issue 13: at 60 s the default set keeps lipsdp, and the share the run gives it (lipsdp runs
    first: :func:`~lipbound.methods.selection.budget_share` with the whole budget left) holds the
    solver, not only the checked start (the plan read from sizes, nothing built)."""
    import importlib.util

    from lipbound.methods import METHODS
    from lipbound.methods.lipsdp_conv import blocks_plan
    from lipbound.methods.selection import budget_share, default_methods

    pytest.importorskip("onnx")
    examples = Path(__file__).resolve().parents[1] / "examples"
    spec = importlib.util.spec_from_file_location("realnets_examples", examples / "realnets.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    graph = ex.load_realnet(REALNETS / name)
    sizes = graph_sizes(graph)
    names = default_methods(graph, time_budget=60.0)
    assert names[0] == "lipsdp"
    share = budget_share(60.0, 60.0, [METHODS[n] for n in names], sizes)
    assert blocks_plan(sizes.blocks, share) == "solve"
