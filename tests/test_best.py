"""``best`` stops early once its least certified bound is within ``tol`` of a witnessed lower bound
(lipbound.methods.best): on nets where a cheap member is already exact it skips the rest, and its
value stays above the Jacobian norms sampled by an independent path (torch.func.jacrev)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import InvalidInput
from lipbound.methods import METHODS

best = METHODS["best"]
QUICK_LOWER = {"starts": 4, "steps": 20, "walk_rounds": 2}


def sampled_jacobian_norm(model: nn.Module, n_in: int, samples: int = 256) -> float:
    """An independent lower bound of L(f): the largest ||Df(x)||_2 at random x (autograd, dense SVD)."""
    torch.manual_seed(1)
    xs = torch.randn(samples, n_in, dtype=torch.float64) * 3
    jac = torch.vmap(torch.func.jacrev(copy.deepcopy(model).double()))(xs)
    return float(torch.linalg.matrix_norm(jac, ord=2).max())


def one_hidden_layer(seed: int = 0) -> nn.Sequential:
    """6 -> 4 -> 3 with ReLU: hidden width <= input dim, generic biases, so every activation pattern
    is realised and ``max_D ||W2 D W1||`` (enumerated below) is the constant (DESIGN section 5)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()


def enumerated_constant(model: nn.Sequential) -> float:
    w1, w2 = model[0].weight.detach().double(), model[2].weight.detach().double()
    return max(float(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=torch.float64)) @ w1, ord=2))
               for d in itertools.product((0.0, 1.0), repeat=w1.shape[0]))


def members(res: lipbound.Result) -> list[str]:
    return [r["method"] for r in res.details["ran"] if r["method"] != "lower"]


def test_an_affine_net_stops_after_autolip_with_its_own_lower_search() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 3)).eval()
    res = best(lipbound.as_graph(model, (6,)), seed=0, progress=False, method_options={"lower": QUICK_LOWER})
    assert members(res) == ["autolip"]
    assert res.details["skipped"] == [n for n, s in METHODS.items() if s.in_best and n != "autolip"]
    assert res.details["stopped_by"] == "converged" and res.details["lower_source"] == "lower"
    oracle = float(torch.linalg.matrix_norm(model[1].weight.detach().double() @ model[0].weight.detach().double(), ord=2))
    assert res.value >= oracle * (1 - 1e-9)
    assert res.value <= res.details["lower"] * 1.01 and res.bracket == (res.details["lower"], res.value)


def test_a_one_hidden_layer_net_stops_once_seqlip_meets_the_given_lower_bound() -> None:
    model = one_hidden_layer()
    true = enumerated_constant(model)
    res = best(lipbound.as_graph(model, (6,)), seed=0, progress=False, lower=true * (1 - 1e-3), tol=0.01)
    ran = members(res)
    assert "seqlip" in ran and res.details["chosen"] in ran
    assert res.details["skipped"] and set(res.details["skipped"]).isdisjoint(ran)
    assert {"lipsdp", "exact"} <= set(res.details["skipped"])
    assert res.details["stopped_by"] == "converged" and res.details["lower_source"] == "given"
    assert res.value >= true * (1 - 1e-9) and res.value >= sampled_jacobian_norm(model, 6) * (1 - 1e-9)
    assert res.value <= true * (1 - 1e-3) * 1.01
    assert res.bracket is None and res.witness is None  # a given number is no witness


def test_a_far_lower_bound_or_no_tolerance_runs_every_member() -> None:
    graph, names = lipbound.as_graph(one_hidden_layer(), (6,)), ["autolip", "seqlip", "eclipse-fast"]
    for kwargs in ({"lower": 1e-6}, {"tol": None}):
        res = best(graph, seed=0, progress=False, methods=names, **kwargs)
        assert members(res) == names and res.details["skipped"] == []
    assert best(graph, seed=0, progress=False, methods=names, tol=None).details["lower"] is None


def test_the_stop_is_deterministic() -> None:
    graph = lipbound.as_graph(one_hidden_layer(3), (6,))
    runs = [best(graph, seed=5, progress=False, method_options={"lower": QUICK_LOWER}) for _ in range(2)]
    assert runs[0].value == runs[1].value and runs[0].details["skipped"] == runs[1].details["skipped"]
    assert runs[0].details["lower"] == runs[1].details["lower"]


@pytest.mark.parametrize("kwargs", [{"tol": -0.1}, {"lower": 0.0}, {"lower": float("nan")}])
def test_bad_tolerance_or_lower_bound_is_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidInput):
        best(lipbound.as_graph(one_hidden_layer(), (6,)), seed=0, progress=False, **kwargs)
