"""The fast compositional bound (eclipse-fast): certified, between the truth and AutoLip."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.methods.autolip import autolip
from lipbound.methods.eclipse import eclipse_fast, fast_multipliers
from lipbound.methods.lmi import lmi_of_graph
from lipbound.methods.sdp_verify import certify, is_certificate

from conftest import REPO, jacobian_norm


def mlp(widths, act=nn.ReLU, seed=0, bias=True):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double().eval()


class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(w, w), nn.Linear(w, w)

    def forward(self, x):
        return torch.relu(x + self.fc2(torch.relu(self.fc1(x))))


def resnet(seed=0, n_in=6, w=5, blocks=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, w), nn.ReLU(), *[Block(w) for _ in range(blocks)], nn.Linear(w, 3)).double().eval()


def exact_one_hidden(net: nn.Sequential) -> float:
    """max over activation patterns of ||W2 D W1||: the true constant of W2 relu(W1 x + b) when
    the hidden width is at most the input dimension (every pattern is realised)."""
    w1, w2 = net[0].weight.detach(), net[2].weight.detach()
    h = w1.shape[0]
    assert h <= w1.shape[1]
    return max(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=w1.dtype)) @ w1, ord=2).item()
               for d in itertools.product([0.0, 1.0], repeat=h))


def witnessed(net, n_in, seed=0, n=20):
    g = torch.Generator().manual_seed(seed)
    return max(jacobian_norm(net, torch.randn(n_in, generator=g, dtype=torch.float64) * 3) for _ in range(n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_above_exact_one_hidden_layer(seed):
    net = mlp([8, 6, 3], seed=seed)
    g = lipbound.as_graph(net, (8,))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper" and res.details["verified"]
    assert res.value >= exact_one_hidden(net) * (1 - 1e-12)
    assert res.value <= autolip(g).value


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid, lambda: nn.LeakyReLU(0.1), nn.ELU])
def test_deep_chains_between_witness_and_autolip(act):
    net = mlp([7, 16, 16, 16, 16, 2], act=act, seed=3)
    g = lipbound.as_graph(net, (7,))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper"
    assert witnessed(net, 7) <= res.value <= autolip(g).value


def test_residual_net_certified_above_witness():
    net = resnet()
    g = lipbound.as_graph(net, (6,))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper"
    assert res.value >= witnessed(net, 6)


def test_recursion_is_a_checked_certificate():
    g = lipbound.as_graph(mlp([5, 9, 9, 4], seed=4), (5,))
    lmi = lmi_of_graph(g)
    t, rho = fast_multipliers(lmi)
    assert is_certificate(lmi, rho * (1 + 1e-9), t)
    cert = certify(lmi, t, claimed_rho=rho)
    assert cert.rho <= rho * (1 + 1e-9)  # the recomputed least rho is at most the recursion's
    assert not is_certificate(lmi, cert.rho * 0.999, t)  # and it is tight for these multipliers


def test_refuses_slopes_across_zero():
    g = lipbound.as_graph(mlp([4, 6, 2], act=nn.GELU), (4,))
    with pytest.raises(NotApplicable, match="a \\* b >= 0"):
        eclipse_fast(g)


def test_refuses_max_pooling():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    with pytest.raises(lipbound.UnsupportedOperation, match="MaxPool"):
        eclipse_fast(lipbound.as_graph(net, (1, 8, 8)))


def test_small_convolution_is_materialised():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    g = lipbound.as_graph(net, (1, 6, 6))
    res = eclipse_fast(g)
    assert res.kind == "certified_upper"
    gen = torch.Generator().manual_seed(1)
    wit = max(jacobian_norm(net, torch.randn(1, 6, 6, generator=gen, dtype=torch.float64)) for _ in range(10))
    assert wit <= res.value <= autolip(g).value


def test_registered_and_in_estimate():
    rep = lipbound.estimate(mlp([4, 8, 2]), (4,), methods=("eclipse-fast", "autolip"), progress=False)
    assert rep.result("eclipse-fast").value <= rep.result("autolip").value
    assert rep.upper == rep.result("eclipse-fast").value


def test_lipsdp_random_weights_close_to_layer(realnets):
    sys.path.insert(0, str(REPO / "examples"))
    from realnets import lipsdp_mat

    net, shape = lipsdp_mat(realnets / "lipsdp_random_weights.mat")
    res = eclipse_fast(lipbound.as_graph(net, shape))
    # the true constant is 36.48223 (MANIFEST); LipSDP-Layer publishes 39.839
    assert 36.48 <= res.value <= 39.839 * 1.01
    assert math.isfinite(res.details["rho"]) and np.isfinite(res.details["verify_seconds"])
