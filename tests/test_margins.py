"""Pair constants ``L(f_y - f_j)`` (lipbound.margins) against independent oracles: brute force over
activation patterns of ``(e_y - e_j)^T W2 D W1`` (one hidden layer, every pattern realisable), the
SVD of the materialised linear map, NumPy norms of weight-row differences for AutoLip's last-layer
shortcut, and sampled gradient norms of ``f_y - f_j`` (a lower bound) for deeper nets and boxes."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import InvalidInput
from lipbound.margins import margin_constants, margin_rows, with_output_map
from oracles import pair_max


def mlp(widths: list[int], seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers[:-1]).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


def sampled_pair_slopes(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(m, m)``: the largest ``||grad (f_y - f_j)(x)||`` over the points ``x``: a lower bound of ``L_yj``."""
    x = x.clone().requires_grad_(True)
    out = net(x)
    m = out.shape[1]
    grads = torch.stack([torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)[0] for k in range(m)], 1)
    diff = grads[:, :, None] - grads[:, None, :]  # (N, m, m, n)
    return diff.norm(dim=-1).amax(0)


def test_one_hidden_layer_equals_brute_force_over_patterns():
    """Width 5 <= input 6, generic biases: ``L_yj = max_D ||(w_y - w_j)^T D W1||``, which certified
    SeqLip solves per pair; the global ``sqrt(2) U`` is far above most pairs."""
    net = mlp([6, 5, 4], 0)
    W1, W2 = net[0].weight.detach().numpy(), net[2].weight.detach().numpy()
    P = margin_constants(net, (6,), methods=["seqlip"])
    assert P.shape == (4, 4) and torch.equal(P, P.T) and torch.all(P.diagonal() == 0)
    for y in range(4):
        for j in range(4):
            if y != j:
                truth = pair_max(W2[y:y + 1] - W2[j:j + 1], W1, 0.0, 1.0)[0]
                assert truth * (1 - 1e-12) <= P[y, j] <= truth * (1 + 1e-6), (y, j)
    U = lipbound.estimate(net, (6,), methods=["seqlip"], progress=False).upper
    assert P.max() <= math.sqrt(2) * U and P.min() < 0.5 * math.sqrt(2) * U


def test_autolip_takes_the_last_layer_shortcut():
    """The appended row fuses into the last linear layer: AutoLip's pair value is
    ``||W1|| ||w_y - w_j||`` (NumPy), not ``||W1|| ||W2|| sqrt(2)``."""
    net = mlp([5, 7, 3], 1)
    W1, W2 = net[0].weight.detach().numpy(), net[2].weight.detach().numpy()
    P = margin_constants(net, (5,), methods=["autolip"])
    for y, j in [(0, 1), (0, 2), (1, 2)]:
        want = np.linalg.norm(W1, 2) * np.linalg.norm(W2[y] - W2[j])
        assert P[y, j] == pytest.approx(want, rel=1e-8)


def test_linear_net_is_exact_by_svd():
    """A conv + linear net with no activation: ``L_yj`` is the norm of the row ``(e_y - e_j)^T A`` of
    the materialised matrix ``A`` (columns: the net's responses to the basis vectors)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    basis = torch.eye(16, dtype=torch.float64).reshape(16, 1, 4, 4)
    with torch.no_grad():
        A = (net(basis) - net(torch.zeros(1, 1, 4, 4, dtype=torch.float64))).T  # (3, 16)
    P = margin_constants(net, (1, 4, 4), methods=["autolip", "seqlip"])
    for y, j in [(0, 1), (0, 2), (1, 2)]:
        assert P[y, j] == pytest.approx(float((A[y] - A[j]).norm()), rel=1e-7)


@pytest.mark.parametrize("method", ["autolip", "seqlip", "eclipse-fast", "lipsdp", "exact"])
def test_every_certified_method_bounds_sampled_slopes_of_a_deeper_net(method):
    """Two hidden layers: each method's pair constants (row of class 0) lie above the sampled
    gradient norms of ``f_0 - f_j`` and at most ``sqrt(2)`` times the method's bound of ``f``
    (SeqLip's for ``exact``, whose pair values lie below ``sqrt(2) L(f)``)."""
    net = mlp([3, 5, 4, 3], 2)
    x = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    lower = sampled_pair_slopes(net, x)[0, 1:]
    row = margin_constants(net, (3,), label=0, methods=[method])
    U = lipbound.estimate(net, (3,), methods=["seqlip" if method == "exact" else method], progress=False).upper
    assert row[0] == 0 and torch.all(row[1:] >= lower * (1 - 1e-9))
    assert torch.all(row[1:] <= math.sqrt(2) * U * (1 + 1e-9))


def test_label_row_and_least_of_methods():
    net = mlp([4, 6, 5, 3], 3)
    both = margin_constants(net, (4,), methods=["autolip", "seqlip"])
    row = margin_constants(net, (4,), label=1, methods=["autolip", "seqlip"])
    assert torch.equal(row, both[1])
    each = [margin_constants(net, (4,), methods=[m]) for m in ("autolip", "seqlip")]
    assert torch.equal(both, torch.minimum(*each))


def test_on_a_box_below_global_and_above_sampled_slopes_inside():
    net = mlp([3, 8, 3], 4)
    box = (torch.full((3,), 0.2, dtype=torch.float64), torch.full((3,), 0.6, dtype=torch.float64))
    P_box = margin_constants(net, (3,), domain=box, methods=["seqlip"])
    P = margin_constants(net, (3,), methods=["seqlip"])
    x = 0.2 + 0.4 * torch.rand(4000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lower = sampled_pair_slopes(net, x)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.all(P_box[off] >= lower[off] * (1 - 1e-9)) and torch.all(P_box <= P * (1 + 1e-12))
    assert torch.any(P_box[off] < 0.9 * P[off])


def test_with_output_map_computes_the_difference():
    net = mlp([4, 6, 3], 5)
    graph = lipbound.as_graph(net, (4,))
    pair = with_output_map(graph, margin_rows(3, 2, 0))
    x = torch.randn(7, 4, dtype=torch.float64)
    with torch.no_grad():
        f = net(x)
        assert torch.allclose(pair.forward(x).reshape(-1), f[:, 2] - f[:, 0], rtol=1e-12, atol=1e-12)
    with pytest.raises(InvalidInput, match="shape"):
        with_output_map(graph, torch.ones(1, 4, dtype=torch.float64))


def test_bad_arguments():
    net = mlp([4, 6, 3], 6)
    with pytest.raises(InvalidInput, match="certified"):
        margin_constants(net, (4,), methods=["lower"])
    with pytest.raises(InvalidInput, match="label"):
        margin_constants(net, (4,), label=3)
    with pytest.raises(InvalidInput, match="2 logits"):
        margin_constants(nn.Linear(4, 1), (4,))
    with pytest.raises(InvalidInput, match="unknown method"):
        margin_constants(net, (4,), methods=["nope"])
