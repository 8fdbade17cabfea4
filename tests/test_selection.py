"""The default set and the time shares (lipbound.methods.selection): the methods chosen by the cost
model within the run's budget, in the expected-tightest order, and the shares of the budget by the
methods' weights, a method that finishes on its own getting no more than it is predicted to need."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods import METHODS
from lipbound.methods.cost import graph_sizes
from lipbound.methods.selection import (DEFAULT_TIME_BUDGET, MIN_SHARE, NEED_FACTOR, budget_share,
                                        default_methods, select_methods)


def mlp(n_in: int, widths: list[int], seed: int = 0) -> lipbound.Graph:
    torch.manual_seed(seed)
    dims = [n_in, *widths]
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return lipbound.as_graph(nn.Sequential(*layers, nn.Linear(dims[-1], 10)).eval(), (n_in,))


def big_cnn() -> lipbound.Graph:
    """A CNN whose LMI has order ~ 25,000 (input 3x32x32, 2 x 8 x 32 x 32 neurons)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    return lipbound.as_graph(model.eval(), (3, 32, 32))


def test_every_registered_method_has_a_cost_model() -> None:
    sizes = graph_sizes(mlp(8, [16, 16]))
    for name, spec in METHODS.items():
        assert spec.cost is not None, name
        seconds = spec.predicted_seconds(sizes)
        assert seconds > 0 and not math.isnan(seconds), name


def test_graph_sizes_count_what_the_models_read() -> None:
    # oracle: the sizes written by hand for 20 -> 30 -> 40 -> 10
    s = graph_sizes(mlp(20, [30, 40]))
    assert (s.kind, s.input_size, s.neurons, s.unstable, s.widths, s.lmi_order) == ("mlp", 20, 70, 70, (30, 40), 90)
    assert s.dense_svd_work == 30 * 20 * 20 + 40 * 30 * 30 + 10 * 40 * 10
    assert s.relu_units == 70
    assert graph_sizes(big_cnn()).kind == "cnn"


def test_a_small_mlp_gets_the_lmi_methods_tightest_first_and_lower_last() -> None:
    names = default_methods(mlp(8, [16, 16]))
    assert {"lipsdp", "eclipse-fast", "autolip", "seqlip", "lower"} <= set(names)
    assert names.index("lipsdp") < names.index("eclipse-fast") < names.index("autolip")
    assert names[-1] == "lower"


def test_an_mlp_of_a_few_thousand_neurons_still_gets_lipsdp() -> None:
    names = default_methods(mlp(784, [256] * 8))  # 2048 neurons
    assert "lipsdp" in names and "eclipse-fast" in names


def test_a_large_cnn_does_not_get_the_lmi_methods() -> None:
    names = default_methods(big_cnn())
    assert "lipsdp" not in names and "eclipse-fast" not in names
    assert "autolip" in names and "lower" in names


def test_a_budget_too_small_for_lipsdp_drops_it() -> None:
    graph = mlp(784, [256] * 8)
    need = METHODS["lipsdp"].predicted_seconds(graph_sizes(graph))
    assert "lipsdp" in default_methods(graph, time_budget=2 * need)
    assert "lipsdp" not in default_methods(graph, time_budget=need / 2)
    assert "lipsdp" in select_methods(graph, None, 2 * need)[0]
    assert "lipsdp" not in select_methods(graph, None, need / 2)[0]


def test_the_choice_depends_only_on_the_graph_and_the_budget() -> None:
    a, b = mlp(784, [256] * 3, seed=1), mlp(784, [256] * 3, seed=2)  # same sizes, other weights
    for budget in (None, 1.0, 10.0, 300.0):
        assert default_methods(a, time_budget=budget) == default_methods(b, time_budget=budget)
        assert default_methods(a, time_budget=budget) == default_methods(a, time_budget=budget)
    assert default_methods(a) == default_methods(a, time_budget=DEFAULT_TIME_BUDGET)


def test_no_lower_keeps_only_upper_bounds() -> None:
    names = default_methods(mlp(8, [16, 16]), lower=False)
    assert names and all(METHODS[n].guarantee.is_upper for n in names)


def test_shares_follow_the_weights_of_the_budgeted_methods_left() -> None:
    bab, lower, autolip = METHODS["local-bab"], METHODS["lower"], METHODS["autolip"]
    w_bab, w_low = bab.budget_weight, lower.budget_weight
    assert w_bab > w_low and bab.anytime and lower.anytime  # the registry's choice; the arithmetic follows it
    # 60 s left, local-bab then lower: local-bab gets w/(w+w_low) of it, lower the rest
    assert budget_share(60.0, 60.0, [bab, lower]) == pytest.approx(60.0 * w_bab / (w_bab + w_low))
    assert budget_share(60.0, 10.0, [lower]) == pytest.approx(10.0)
    # autolip first among three, without sizes: its weight's part of the time left
    assert budget_share(60.0, 60.0, [autolip, bab, lower]) == pytest.approx(
        60.0 * autolip.budget_weight / (autolip.budget_weight + w_bab + w_low))


def test_a_cheap_method_does_not_take_a_big_share_from_the_tight_one() -> None:
    sizes = graph_sizes(mlp(8, [16, 16]))
    sdp, fast, low = METHODS["lipsdp"], METHODS["eclipse-fast"], METHODS["lower"]
    assert sdp.anytime and not fast.anytime and fast.budgeted
    need = NEED_FACTOR * fast.predicted_seconds(sizes)
    assert need < 1.0  # cheap on this net: the arithmetic below relies on it
    total = 60.0
    # eclipse-fast gets what it needs, the two others share the rest by weight
    assert budget_share(total, total, [fast, sdp, low], sizes) == pytest.approx(max(need, MIN_SHARE * total))
    share = budget_share(total, total, [sdp, fast, low], sizes)
    assert share == pytest.approx((total - need) * sdp.budget_weight / (sdp.budget_weight + low.budget_weight))
    # without the cost model's sizes, equal treatment by weight (the old rule)
    assert budget_share(total, total, [sdp, fast, low]) == pytest.approx(
        total * sdp.budget_weight / (sdp.budget_weight + fast.budget_weight + low.budget_weight))


def test_when_every_method_is_capped_the_rest_is_shared_by_weight() -> None:
    sizes = graph_sizes(mlp(8, [16, 16]))
    fast = METHODS["eclipse-fast"]
    assert budget_share(60.0, 60.0, [fast], sizes) == pytest.approx(60.0)


def test_a_late_method_keeps_a_minimum() -> None:
    a, b = METHODS["lipsdp"], METHODS["lower"]
    assert budget_share(20.0, 0.01, [a, b]) == pytest.approx(MIN_SHARE * 20.0)


def test_a_default_run_has_the_default_budget_and_reports_the_shares() -> None:
    report = lipbound.estimate(mlp(4, [6, 6]), progress=False,
                               method_options={"lower": {"starts": 4, "steps": 10}})
    ran = [r.method for r in report.results]
    assert "lipsdp" in ran and ran[-1] == "lower"
    shares = {r.method: r.details["time_share"] for r in report.results if "time_share" in r.details}
    assert set(shares) >= {"lipsdp", "lower", "eclipse-fast"}
    assert all(MIN_SHARE * DEFAULT_TIME_BUDGET <= s <= DEFAULT_TIME_BUDGET for s in shares.values())
    assert report.upper >= report.lower


def test_graph_sizes_on_a_region_count_only_unstable_neurons() -> None:
    from lipbound.methods.propagation import localize
    from lipbound.methods.region import as_region

    graph = mlp(3, [8, 8])
    assert graph_sizes(graph).unstable == 16
    local = localize(graph, as_region((-1e-2, 1e-2), graph.input_shape))
    # oracle: a ReLU neuron is unstable when its pre-activation bounds straddle 0
    straddle = sum(int(((n.pre[0] < 0) & (n.pre[1] > 0)).sum()) for n in local if n.kind == "activation")
    sizes = graph_sizes(local)
    assert sizes.unstable == straddle < 16 and sizes.lmi_order == 3 + straddle


def test_the_region_search_runs_after_the_fixed_cost_methods_and_gets_the_time_they_leave() -> None:
    """On a small-input region the default set holds local-bab; it runs after every other certified
    method (before the lower bound), so its share is computed from the time they leave: with the
    methods before it done, it gets more of the budget than it would running first."""
    from lipbound.methods.propagation import localize
    from lipbound.methods.region import as_region

    graph = mlp(3, [8, 8])
    local = localize(graph, as_region((-0.5, 0.5), graph.input_shape))
    names = default_methods(local, time_budget=60.0)
    assert "local-bab" in names and names[-1] == "lower"
    uppers = [n for n in names if METHODS[n].guarantee.is_upper]
    assert uppers[-1] == "local-bab" and len(uppers) > 1
    specs = [METHODS[n] for n in names]
    i = names.index("local-bab")
    sizes = graph_sizes(local)
    after = budget_share(60.0, 60.0, specs[i:], sizes)  # what it gets when the others used no time
    first = budget_share(60.0, 60.0, [specs[i]] + specs[:i] + specs[i + 1:], sizes)
    assert after > first


# ---- LipSDP's path under solver="auto" (cost.lipsdp_path), checked against lipsdp's own router ----

def lenet5() -> lipbound.Graph:
    """LeNet5's shapes (random weights): its LMI has blocks 784, 4704, 1600, 120, 84 (order 7,292)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                          nn.Linear(84, 10))
    return lipbound.as_graph(model.eval(), (1, 28, 28))


def routed(graph: lipbound.Graph, budget: float) -> str:
    """The oracle: the path lipsdp's own routing takes on the graph's real (reduced) LMI."""
    from lipbound.errors import NotApplicable, UnsupportedOperation
    from lipbound.methods.eclipse import balanced
    from lipbound.methods.lipsdp import _auto_solver
    from lipbound.methods.lipsdp_conv import routes_to_blocks
    from lipbound.methods.lmi_build import lmi_of_graph

    if routes_to_blocks(graph):
        return "blocks"
    try:
        lmi = balanced(lmi_of_graph(graph))
    except (NotApplicable, UnsupportedOperation):
        return "refused"
    return _auto_solver(lmi.reduced(), 60, budget)


@pytest.mark.parametrize("budget", [1.0, 30.0, 300.0])
@pytest.mark.parametrize("make", [lambda: mlp(8, [16, 16]), lambda: mlp(16, [16] * 8), lambda: mlp(784, [256, 256]),
                                  lambda: mlp(40, [40] * 3), lambda: mlp(100, [20, 20])],
                         ids=["small", "narrow-deep", "mnist-256x2", "40-wide", "wide-input"])
def test_the_predicted_lipsdp_path_is_the_one_auto_takes_on_mlps(make, budget: float) -> None:
    from lipbound.methods.cost import lipsdp_path

    graph = make()
    assert lipsdp_path(graph_sizes(graph), budget) == routed(graph, budget)


def residual_mlp(width: int, blocks: int, seed: int = 0) -> lipbound.Graph:
    """``x -> ReLU(W x)``, then ``blocks`` times ``h -> ReLU(h + B ReLU(A h))``, then a linear head."""
    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return torch.relu(h + self.b(torch.relu(self.a(h))))

    model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), *[Block() for _ in range(blocks)], nn.Linear(width, 3))
    return lipbound.as_graph(model.eval(), (8,))


def localized_mlp(n_in: int, widths: list[int], radius: float) -> lipbound.Graph:
    from lipbound.methods.propagation import localize
    from lipbound.methods.region import as_region

    graph = mlp(n_in, widths)
    return localize(graph, as_region((-radius, radius), graph.input_shape))


@pytest.mark.parametrize("budget", [0.01, 0.1, 1.0, 30.0])
@pytest.mark.parametrize("make", [lambda: residual_mlp(16, 3), lambda: residual_mlp(40, 2),
                                  lambda: localized_mlp(64, [96, 96, 96], 0.02), lambda: localized_mlp(784, [256, 256], 0.001)],
                         ids=["residual-16", "residual-40", "local-96x3", "local-mnist-256x2"])
def test_the_predicted_path_is_the_one_auto_takes_on_lmis_that_are_no_chain(make, budget: float) -> None:
    """Residual nets, and MLPs on a region (stable neurons folded into the maps that read them),
    have LMIs that are no chain: the interior point goes dense and is chosen only when its whole
    solve is predicted to fit; the cost model must say the same, from sizes alone."""
    from lipbound.methods.cost import _lmi_is_chain, lipsdp_path
    from lipbound.methods.eclipse import balanced
    from lipbound.methods.lmi_build import lmi_of_graph

    graph = make()
    sizes = graph_sizes(graph)
    assert _lmi_is_chain(sizes) == balanced(lmi_of_graph(graph)).reduced().is_chain() is False
    assert lipsdp_path(sizes, budget) == routed(graph, budget)


def test_a_dense_interior_point_is_chosen_only_when_it_fits_the_budget() -> None:
    """The same localized MLP goes first-order on a budget too small for its dense solve and to the
    interior point on a larger one (the rule reads the budget, never a measured time)."""
    graph = localized_mlp(64, [96, 96, 96], 0.02)
    assert {routed(graph, 1e-4), routed(graph, 30.0)} == {"first-order", "ipm"}
    assert routed(graph, 30.0) == "ipm"


def test_chains_go_to_the_interior_point_up_to_its_order() -> None:
    from lipbound.methods.cost import lipsdp_path
    from lipbound.methods.lipsdp import IPM_CHAIN_MAX_ORDER

    assert lipsdp_path(graph_sizes(mlp(16, [16] * 8)), 1.0) == "ipm"
    # reduced order: the input block's rank (8) plus every unstable neuron (3000)
    graph = mlp(8, [100] * 30)
    assert 8 + 3000 > IPM_CHAIN_MAX_ORDER >= 8 + 2900
    assert lipsdp_path(graph_sizes(graph), 300.0) == routed(graph, 300.0) == "first-order"


def test_max_pooling_is_refused_and_never_predicted_cheap() -> None:
    from lipbound.errors import NotApplicable, UnsupportedOperation
    from lipbound.methods.cost import lipsdp_cost, lipsdp_path

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    graph = lipbound.as_graph(model.eval(), (1, 8, 8))
    with pytest.raises((NotApplicable, UnsupportedOperation)):
        METHODS["lipsdp"](graph, seed=0, progress=False)
    assert lipsdp_path(graph_sizes(graph)) == routed(graph, 30.0) == "refused"
    assert lipsdp_cost(graph_sizes(graph)) == math.inf
    assert "lipsdp" not in default_methods(graph, time_budget=1e6)


def test_an_affine_net_has_no_lmi_and_no_lipsdp() -> None:
    from lipbound.methods.cost import lipsdp_path

    torch.manual_seed(0)
    graph = lipbound.as_graph(nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 2)).eval(), (5,))
    assert lipsdp_path(graph_sizes(graph)) == routed(graph, 30.0) == "refused"
    assert "lipsdp" not in default_methods(graph)


def test_lenet5_gets_the_blocks_path_when_its_checked_start_fits() -> None:
    from lipbound.errors import NotApplicable
    from lipbound.methods.cost import lipsdp_cost, lipsdp_path
    from lipbound.methods.lipsdp_conv import lipsdp_blocks, start_seconds

    graph = lenet5()
    sizes = graph_sizes(graph)
    assert routed(graph, 300.0) == "blocks" == lipsdp_path(sizes, 300.0)
    # the oracle: lipsdp_blocks itself refuses a budget below its checked start, before building anything
    start = start_seconds(sizes.blocks)
    with pytest.raises(NotApplicable, match="would not fit"):
        lipsdp_blocks(graph, time_budget=start * 0.99)
    assert lipsdp_path(sizes, start * 0.99) == "refused" and lipsdp_path(sizes, start * 1.01) == "blocks"
    assert start < lipsdp_cost(sizes) < 300.0
    assert "lipsdp" not in default_methods(graph, time_budget=start / 2)
    assert "lipsdp" in default_methods(graph, time_budget=300.0)

def test_what_the_default_set_selects_the_blocks_path_never_refuses_for_time() -> None:
    """LeNet5's checked start (about 27 s predicted) against budgets around it: whenever the default
    set keeps lipsdp, the share the run gives it (:func:`budget_share` as the run computes it, lipsdp
    running first) holds the start by lipsdp's own refusal rule; the grid reaches budgets where the
    whole budget holds the start but the share does not (the case that used to be selected, then
    skipped)."""
    from lipbound.methods.lipsdp_conv import blocks_refusal, start_seconds

    graph = lenet5()
    sizes = graph_sizes(graph)
    start = start_seconds(sizes.blocks)
    gap_seen = False
    for budget in [start * (1 + k / 40) for k in range(13)]:
        names = default_methods(graph, time_budget=budget)
        candidates = [n for n in ("lipsdp", "autolip", "lower") if METHODS[n].predicted_seconds(sizes) <= budget]
        share = budget_share(budget, budget, [METHODS[n] for n in candidates], sizes)  # lipsdp first, all fitting
        gap_seen |= "lipsdp" in candidates and blocks_refusal(sizes.blocks, share) is not None
        if "lipsdp" in names:
            assert names[0] == "lipsdp"
            share = budget_share(budget, budget, [METHODS[n] for n in names], sizes)
            assert blocks_refusal(sizes.blocks, share) is None, budget
        assert "lower" in names and "autolip" in names
    assert gap_seen
    assert "lipsdp" in default_methods(graph, time_budget=start * 1.3)
