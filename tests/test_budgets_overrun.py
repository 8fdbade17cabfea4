"""Methods that used to overrun their time share under ``--method all`` (issue 13, item 4) stop
near a small budget, say ``stopped_by == "time"``, and stay on the right side of the exact
constant, computed here by brute force.

The oracle: a CNN ``x -> W2 relu(W1 x + b1) + b2`` whose first layer (a strided convolution, as
a matrix ``W1`` of full row rank) has 16 units. ``x -> W1 x + b1`` is then onto ``R^16``, so every
activation pattern ``D`` has a region with an interior point, and ``L = max_D ||W2 D W1||_2`` over
all ``2^16`` patterns (DESIGN §5): enumerated in numpy, independently of the methods.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

import lipbound
from lipbound.methods.exact import exact
from lipbound.methods.lipsdp import lipsdp
from lipbound.methods.lower import lower

SLACK = 2.0  # wall-clock bound: SLACK * budget + GRACE seconds (the machine is shared)
GRACE = 2.0


def _net() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(16, 3)).double()


def _dense(layer: torch.nn.Module, in_shape: tuple[int, ...]) -> np.ndarray:
    """The layer's linear part as a matrix, column by column from the basis vectors."""
    basis = torch.eye(int(np.prod(in_shape)), dtype=torch.float64).reshape(-1, *in_shape)
    with torch.no_grad():
        out = layer(basis) - layer(torch.zeros(1, *in_shape, dtype=torch.float64))
    return out.reshape(len(basis), -1).T.numpy()


@pytest.fixture(scope="module")
def case() -> tuple[lipbound.Graph, float]:
    net = _net()
    w1 = _dense(net[0], (1, 6, 6))  # 16 x 36
    w2 = net[3].weight.detach().numpy()  # 3 x 16
    assert np.linalg.matrix_rank(w1) == w1.shape[0]  # onto: every pattern is a region
    gram = w1 @ w1.T
    d = np.array(list(itertools.product((0.0, 1.0), repeat=w1.shape[0])))  # (65536, 16)
    a = w2[None] * d[:, None, :]  # W2 D
    norms = np.linalg.eigvalsh(a @ gram @ a.transpose(0, 2, 1))[:, -1]  # ||W2 D W1||^2
    return lipbound.as_graph(net, (1, 6, 6)), float(np.sqrt(norms.max()))


def _timed(fn, **kw):
    start = time.perf_counter()
    res = fn(**kw)
    return res, time.perf_counter() - start


@pytest.mark.parametrize("budget", [1e-4, 0.1])  # cut before the root is bounded (AutoLip), during the search
def test_exact_cut_short_returns_a_certified_upper(case, budget):
    graph, true = case
    res, wall = _timed(exact, graph=graph, time_budget=budget)
    assert wall <= SLACK * budget + GRACE
    assert res.details["stopped_by"] == "time"
    assert res.kind == "certified_upper" and res.value >= true * (1 - 1e-9)
    assert res.details["lower"] is None or res.details["lower"] <= true * (1 + 1e-9)


@pytest.mark.parametrize("variant, budget", [("neuron", 0.05), ("neuron", 1e-3), ("layer", 1e-3)])
def test_lipsdp_first_order_cut_short_is_checked(case, variant, budget):
    graph, true = case
    res, wall = _timed(lipsdp, graph=graph, variant=variant, solver="first-order", time_budget=budget)
    assert wall <= SLACK * budget + GRACE
    assert res.details["stopped_by"] == "time"
    assert res.kind == "certified_upper" and res.details["verified"]
    assert res.value >= true * (1 - 1e-9)


def test_lower_cut_short_stays_below(case):
    graph, true = case
    budget = 0.3
    res, wall = _timed(lower, graph=graph, time_budget=budget)
    assert wall <= SLACK * budget + GRACE
    assert res.details["stopped_by"] == "time"
    assert res.kind == "witnessed_lower" and 0 < res.value <= true * (1 + 1e-9)
