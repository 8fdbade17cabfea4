"""The witnessed lower bound ``lower`` on convolutional nets (issue 13): its witness re-checks,
it keeps its time budget, it is reproducible, and it stays below an upper bound.

Oracles independent of the search: ``Witness.recheck`` (the library's one-point re-check), dense
Jacobians of the ``nn.Module`` by ``torch.autograd.functional.jacobian`` with an SVD, forward
passes of the module for pairs, and the product of the dense layer norms (each layer's matrix from
autograd, its exact spectral norm by SVD; ReLU and non-overlapping max pooling are 1-Lipschitz).
"""

import time

import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods.lower import lower

from conftest import jacobian_norm


def small_cnn(seed: int, pool: bool = False) -> nn.Sequential:
    """Two convolutions (one strided), ReLU, optional 2x2 max pooling, a linear head; input 2x8x8."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()]
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 3)] if pool else [nn.Flatten(), nn.Linear(6 * 4 * 4, 3)]
    return nn.Sequential(*layers).double()


def witness_quotient(net: nn.Module, w) -> float:
    """What the witness claims, from the module alone: ``||J(x) v|| / ||v||`` with the dense
    autograd Jacobian, or the pair quotient of two forward passes."""
    x = w["x"].double()
    if w["form"] == "jacobian":
        j = torch.autograd.functional.jacobian(lambda z: net(z.unsqueeze(0)).reshape(-1), x)
        v = w["v"].double()
        return ((j.reshape(j.shape[0], -1) @ v.reshape(-1)).norm() / v.norm()).item()
    y = w["y"].double()
    with torch.no_grad():
        return ((net(x[None]) - net(y[None])).norm() / (x - y).norm()).item()


def layer_norm_product(net: nn.Sequential, shape: tuple[int, ...]) -> float:
    """prod over the affine layers of the spectral norm of their dense matrices: an upper bound of
    L(f) (ReLU, flatten and non-overlapping max pooling are 1-Lipschitz)."""
    total, x = 1.0, torch.zeros(1, *shape, dtype=torch.float64)
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            j = torch.autograd.functional.jacobian(lambda z: layer(z).reshape(-1), x)
            total *= torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2).item()
        x = layer(x).detach()
    return total


@pytest.mark.parametrize("pool", [False, True])
def test_cnn_witness_rechecks_and_matches_the_module(pool):
    net = small_cnn(0, pool)
    graph = lipbound.as_graph(net, (2, 8, 8))
    res = lower(graph, time_budget=3, steps=20, starts=16, seed=1)
    w = res.witness
    assert res.value > 0
    assert w.recheck(graph) == pytest.approx(res.value, rel=1e-12)
    claimed = witness_quotient(net, w)
    assert claimed * (1 - 1e-9) <= res.value <= claimed * (1 + 1e-12)  # a rounding margin only lowers it
    if w["form"] == "jacobian":  # ||J v|| <= ||J||, and the refinement reaches the dense norm
        dense = jacobian_norm(net, w["x"])
        assert dense * (1 - 1e-6) <= res.value <= dense * (1 + 1e-9)
    assert res.value <= layer_norm_product(net, (2, 8, 8)) * (1 + 1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cnn_lower_below_the_product_of_layer_norms_and_above_random_points(seed):
    net = small_cnn(seed)
    res = lipbound.lower_bound(net, (2, 8, 8), time_budget=3, steps=15, starts=8, seed=seed)
    assert res.value <= layer_norm_product(net, (2, 8, 8)) * (1 + 1e-9)
    points = torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert res.value >= max(jacobian_norm(net, p) for p in points) * 0.999  # the search beats 16 random Jacobians


def test_cnn_same_seed_same_numbers():
    graph = lipbound.as_graph(small_cnn(3, pool=True), (2, 8, 8))
    a, b = (lower(graph, time_budget=60, steps=8, starts=8, seed=4, walk_rounds=3) for _ in range(2))
    assert a.details["steps_done"] == b.details["steps_done"] == 8  # the budget did not bind
    assert a.details["stopped_by"] == b.details["stopped_by"] == "iterations"
    assert a.value == b.value
    assert torch.equal(a.witness["x"], b.witness["x"])


def test_cnn_budget_is_honoured():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    graph = lipbound.as_graph(net, (3, 16, 16))
    budget = 2.0
    t0 = time.perf_counter()
    res = lower(graph, time_budget=budget, steps=10_000, starts=64, seed=0, work=1e18)
    wall = time.perf_counter() - t0
    assert wall <= 2 * budget + 2  # generous: the machine may be loaded (the benchmark measures the 10%)
    assert res.details["steps_done"] < 10_000  # the budget bound, not the step count
    assert res.details["stopped_by"] == "time"
    assert res.value > 0 and res.witness.recheck(graph) == pytest.approx(res.value, rel=1e-12)


def test_realnet_cnn_witness_rechecks_within_budget(realnets):
    import importlib.util
    from pathlib import Path

    path = realnets / "oval21_cifar_base_kw.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in {realnets}")
    spec = importlib.util.spec_from_file_location(
        "lipbound_examples_realnets", Path(__file__).resolve().parents[1] / "examples" / "realnets.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    graph = ex.load_realnet(path)
    t0 = time.perf_counter()
    res = lower(graph, time_budget=3, seed=0)
    assert time.perf_counter() - t0 <= 2 * 3 + 2  # generous: the machine may be loaded
    assert res.witness.recheck(graph) == pytest.approx(res.value, rel=1e-12)
    if res.witness["form"] == "jacobian":  # ||J v|| <= ||J||, the dense autograd Jacobian's norm
        g64 = graph.to(dtype=torch.float64)
        dense = torch.autograd.functional.jacobian(lambda z: g64.forward(z[None]).reshape(-1),
                                                   res.witness["x"].double())
        assert res.value <= torch.linalg.matrix_norm(dense.reshape(dense.shape[0], -1), ord=2).item() * (1 + 1e-9)


def test_work_cap_sizes_the_ascent_by_the_network():
    """The work cap gives a network ``work / (starts * graph_macs)`` steps, and says it stopped by work;
    the count is the same whatever the budget (the clock is only an outer cap)."""
    from lipbound.methods.budget import graph_macs

    graph = lipbound.as_graph(small_cnn(3, pool=True), (2, 8, 8))
    macs = graph_macs(graph.fused())
    res = lower(graph, time_budget=600, steps=50, starts=8, seed=0, walk_rounds=1, work=8 * 5 * macs)
    assert res.details["steps_planned"] == res.details["steps_done"] == 5
    assert res.details["stopped_by"] == "work"


def deep_cnn(depth: int, seed: int) -> nn.Sequential:
    """``depth`` 3x3 convolutions (3 channels, He-scaled) with LeakyReLU(0.1) on 3x6x6, a linear head."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(depth):
        conv = nn.Conv2d(3, 3, 3, padding=1).double()
        with torch.no_grad():
            conv.weight.copy_(torch.randn(3, 3, 3, 3, generator=gen, dtype=torch.float64) * (2.0 / 27) ** 0.5)
            conv.bias.copy_(0.1 * torch.randn(3, generator=gen, dtype=torch.float64))
        layers += [conv, nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(3 * 6 * 6, 4).double())


def test_deep_cnn_witness_rechecks_and_beats_random_points():
    """A 20-convolution net: the witness must re-check (the rounding-error bound once grew by
    |W| per layer and rejected every witness: 0) and keep half of the best of 16 random points'
    autograd Jacobian norms (the search's starts are other random points; see the MLP test)."""
    net = deep_cnn(20, seed=4)
    graph = lipbound.as_graph(net, (3, 6, 6))
    res = lower(graph, steps=6, starts=16, pairs=False, walk_rounds=1)
    assert res.details["form"] == "jacobian" and res.value > 0
    assert res.witness.recheck(graph) == pytest.approx(res.value, rel=1e-12)
    assert res.value <= witness_quotient(net, res.witness) * (1 + 1e-12)
    points = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert res.value >= 0.5 * max(jacobian_norm(net, p) for p in points)


def one_hidden_conv(seed: int) -> nn.Sequential:
    """conv(1->2, k3) on 1x4x4 (8 ReLU neurons whose 8 weight rows, shifted kernels, are linearly
    independent in R^16 for random weights), then a linear head 8 -> 3."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).double()


def pattern_maximum(net: nn.Sequential) -> float:
    """``max_D ||W2 D W1||_2`` over all 2^8 diagonal 0/1 patterns ``D``, by SVD of each product,
    with ``W1`` the conv's dense matrix (autograd). Every ``Df(x)`` is one of these products, so this
    is a certified upper bound of L(f); and since the 8 rows of ``W1`` are linearly independent,
    every pattern is the pattern of some region, so it *is* L(f) (DESIGN §5): an exact oracle."""
    conv, head = net[0], net[3]
    w1 = torch.autograd.functional.jacobian(lambda z: conv(z.reshape(1, 1, 4, 4)).reshape(-1),
                                            torch.zeros(16, dtype=torch.float64))
    assert torch.linalg.matrix_rank(w1) == 8  # the oracle's premise
    best = 0.0
    for mask in range(2 ** 8):
        d = torch.tensor([(mask >> i) & 1 for i in range(8)], dtype=torch.float64)
        best = max(best, torch.linalg.matrix_norm(head.weight @ (d[:, None] * w1), ord=2).item())
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_cnn_lower_reaches_the_exact_constant_and_never_exceeds_it(seed):
    """On a CNN whose constant is known exactly (brute force over its activation patterns, all
    realisable), the witness stays below it and the search finds it (to 1e-6)."""
    net = one_hidden_conv(seed)
    exact = pattern_maximum(net)
    res = lower(lipbound.as_graph(net, (1, 4, 4)), steps=30, starts=16, seed=seed, walk_rounds=5)
    assert res.value <= exact * (1 + 1e-9)
    assert witness_quotient(net, res.witness) * (1 - 1e-9) <= exact * (1 + 1e-9)
    assert res.value >= exact * (1 - 1e-6)
