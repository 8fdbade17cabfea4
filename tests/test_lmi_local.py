"""LipSDP, LipSDP-Layer and eclipse-fast on input regions (issue 10): per-neuron sectors, stable
neurons eliminated.

Localized graphs are built by hand: ``graph.localized(box, pre)`` with ``pre`` from plain float64
interval arithmetic written here (an oracle independent of lipbound's propagation), widened by a
relative margin of 1e-9. Checks: (a) the local certified value is >= every Jacobian norm and pair
quotient sampled in the box (dense Jacobians by autograd in float64); (b) it is <= the global value
of the same method; (c) on a net whose neurons are mostly stably off it is far below the global
value and >= the maximum over the vertices of the per-neuron slope box of ``||W_K D ... D W_1||``
(every such product is a linear map the sector constraints admit, so the LMI bound must reach it);
(d) the LMI order shrinks by the stable neurons.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import lipbound
from lipbound.graph.ir import Activation
from lipbound.methods.eclipse import eclipse_fast
from lipbound.methods.lipsdp import lipsdp
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.region import Box

MARGIN = 1e-9
METHODS = {
    "lipsdp": lambda g: lipsdp(g, time_budget=20.0),
    "lipsdp-layer": lambda g: lipsdp(g, variant="layer", time_budget=20.0),
    "eclipse-fast": eclipse_fast,
}


# ---- the independent oracle: float64 interval arithmetic ---------------------------------------
def _affine(lin: nn.Linear, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval image of ``[l, u]`` under ``lin`` (centre-radius form), widened by ``MARGIN``."""
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    mid, rad = w @ ((l + u) / 2) + b, w.abs() @ ((u - l) / 2)
    slack = MARGIN * (mid.abs() + rad + 1.0)
    return mid - rad - slack, mid + rad + slack


class Residual(nn.Module):
    """``x -> L3(relu(L2(relu(L1 x)) + S x))``: a residual add for the builder."""

    def __init__(self, n: int, h: int, m: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1, self.l2, self.s, self.l3 = nn.Linear(n, h), nn.Linear(h, h), nn.Linear(n, h), nn.Linear(h, m)

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x))) + self.s(x)))

    def intervals(self, l, u):
        """Input bounds of the two ReLUs on the box ``[l, u]``."""
        a = _affine(self.l1, l, u)
        b2 = _affine(self.l2, a[0].clamp(min=0), a[1].clamp(min=0))
        sk = _affine(self.s, l, u)
        return [a, (b2[0] + sk[0] - MARGIN * (b2[0].abs() + sk[0].abs()),
                    b2[1] + sk[1] + MARGIN * (b2[1].abs() + sk[1].abs()))]


def _intervals(net: nn.Module, l: torch.Tensor, u: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Input bounds of every activation of ``net`` (in forward order) on the box ``[l, u]``."""
    if isinstance(net, Residual):
        return net.intervals(l, u)
    bounds = []
    for mod in net:
        if isinstance(mod, nn.Linear):
            l, u = _affine(mod, l, u)
        else:  # monotone activations: ReLU, LeakyReLU, Tanh
            bounds.append((l, u))
            l, u = mod(l), mod(u)
    return bounds


def localized(net: nn.Module, low: torch.Tensor, high: torch.Tensor):
    """The global graph of ``net`` and its copy on the box, with the oracle's pre-activation bounds."""
    net = net.double()
    g = lipbound.as_graph(net, tuple(low.shape))
    acts = [n for n in g if isinstance(n, Activation)]
    bounds = _intervals(net, low, high)
    assert len(acts) == len(bounds)
    return g, g.localized(Box(low, high), {n.name: b for n, b in zip(acts, bounds)})


def sampled_max(net: nn.Module, low: torch.Tensor, high: torch.Tensor, n: int = 200) -> float:
    """The largest Jacobian norm and pair quotient at ``n`` points / pairs uniform in the box."""
    gen = torch.Generator().manual_seed(1)
    box = Box(low, high)
    xs, ys = box.sample(n, gen), box.sample(n, gen)
    best = 0.0
    with torch.no_grad():
        quot = (net(xs) - net(ys)).norm(dim=1) / (xs - ys).norm(dim=1)
    best = float(quot.max())
    for x in xs[:60]:
        jac = torch.autograd.functional.jacobian(net, x)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


def vertex_max(weights: list[torch.Tensor], slopes: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``max ||W_K D_{K-1} ... D_1 W_1||_2`` over the vertices ``D_k`` of the per-neuron slope box."""
    choices = [list(itertools.product(*[sorted({float(a), float(b)}) for a, b in zip(lo, hi)])) for lo, hi in slopes]
    best = 0.0
    for ds in itertools.product(*choices):
        m = weights[0]
        for d, w in zip(ds, weights[1:]):
            m = w @ (torch.tensor(d, dtype=torch.float64)[:, None] * m)
        best = max(best, float(torch.linalg.matrix_norm(m, ord=2)))
    return best


def mlp(sizes: list[int], act: type[nn.Module], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers).double()


def mostly_off(seed: int = 0) -> nn.Sequential:
    """3 -> 12 -> 2 ReLU net: neurons 3..11 have bias -10 (stably off on [-1, 1]^3, since their
    rows have 1-norm < 10) and large output weights; neurons 0..2 cross 0 inside the box."""
    net = mlp([3, 12, 2], nn.ReLU, seed)
    with torch.no_grad():
        net[0].weight.clamp_(-1, 1)
        net[0].bias[:3] = 0.0
        net[0].bias[3:] = -10.0
        net[2].weight[:, 3:] *= 20.0
    return net


# ---- (a) soundness and (b) below the global value ---------------------------------------------------
CASES = [
    ("relu", lambda: mlp([4, 10, 8, 3], nn.ReLU, 0), 0.3),
    ("leaky", lambda: mlp([3, 8, 8, 2], lambda: nn.LeakyReLU(0.1), 1), 0.4),
    ("tanh", lambda: mlp([3, 6, 6, 2], nn.Tanh, 2), 0.5),
    ("residual", lambda: Residual(3, 8, 2, seed=3).double(), 0.3),
]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name,make,radius", CASES, ids=[c[0] for c in CASES])
def test_local_bound_is_sound_and_below_global(method, name, make, radius):
    net = make()
    center = torch.linspace(-0.5, 0.5, net.l1.in_features if isinstance(net, Residual) else net[0].in_features,
                            dtype=torch.float64)
    low, high = center - radius, center + radius
    g, gl = localized(net, low, high)
    local, glob = METHODS[method](gl), METHODS[method](g)
    assert local.kind == glob.kind == "certified_upper"
    assert local.value >= sampled_max(net, low, high)
    assert local.value <= glob.value * (1 + 1e-6)


# ---- (c) mostly stable: far below the global value, at or above the vertex maximum ----------------
@pytest.mark.parametrize("method", list(METHODS))
def test_mostly_stable_net_is_far_below_global_and_reaches_the_vertices(method):
    net = mostly_off()
    low, high = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    g, gl = localized(net, low, high)
    local, glob = METHODS[method](gl), METHODS[method](g)
    act = next(n for n in gl if isinstance(n, Activation))
    lo, hi = act.slope_bounds()
    assert int((lo == hi).sum()) == 9  # the oracle's bounds make neurons 3..11 stable (off)
    exact = vertex_max([net[0].weight.detach(), net[2].weight.detach()], [(lo, hi)])
    assert local.value >= exact
    assert local.value >= sampled_max(net, low, high)
    assert local.value < glob.value / 5
    if method == "lipsdp":  # LipSDP-Neuron is exact on one hidden layer with 3 unstable neurons here
        assert local.value <= exact * 1.01


def test_deeper_net_reaches_the_vertices_of_its_slope_box():
    """Every vertex product is admitted by the sector constraints, on any depth."""
    net = mlp([3, 5, 4, 2], nn.ReLU, 5)
    low, high = torch.full((3,), 0.2, dtype=torch.float64), torch.full((3,), 0.6, dtype=torch.float64)
    _, gl = localized(net, low, high)
    slopes = [n.slope_bounds() for n in gl if isinstance(n, Activation)]
    exact = vertex_max([net[0].weight.detach(), net[2].weight.detach(), net[4].weight.detach()], slopes)
    for method in METHODS:
        assert METHODS[method](gl).value >= exact


# ---- (d) elimination shrinks the LMI ---------------------------------------------------------------
def test_stable_neurons_are_eliminated_from_the_lmi():
    net = mostly_off()
    low, high = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    g, gl = localized(net, low, high)
    glob, loc = lmi_of_graph(g), lmi_of_graph(gl)
    assert (glob.size, glob.eliminated) == (3 + 12, 0)
    assert (loc.size, loc.eliminated) == (3 + 3, 9)
    assert loc.is_chain()  # neurons of slope 0 leave no (zero) map behind
    res = lipsdp(gl)
    assert res.details["lmi_order"] == 6 and res.details["eliminated_neurons"] == 9
    assert eclipse_fast(gl).details["lmi_order"] == 6


def test_a_net_affine_on_its_region_is_refused_clearly():
    net = mostly_off()
    with torch.no_grad():
        net[0].bias[:3] = -10.0  # every neuron stably off: the net is constant on the box
    _, gl = localized(net, -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(lipbound.NotApplicable, match="affine"):
        eclipse_fast(gl)


def test_stable_on_neurons_keep_their_slope():
    """A box where every neuron of a leaky net is stable except one: eliminated neurons pass their
    slope (1 on, 0.1 off) into the maps, so the bound still covers the sampled Jacobians. With one
    unstable neuron there is one quadratic constraint, and the S-procedure is lossless (S-lemma):
    LipSDP must equal the maximum over the two vertices."""
    net = mlp([2, 6, 2], lambda: nn.LeakyReLU(0.1), 7)
    with torch.no_grad():
        net[0].bias[:3], net[0].bias[3:5], net[0].bias[5] = 5.0, -5.0, 0.0
        net[0].weight.clamp_(-1, 1)
    low, high = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    g, gl = localized(net, low, high)
    assert lmi_of_graph(gl).eliminated == 5
    lo, hi = next(n for n in gl if isinstance(n, Activation)).slope_bounds()
    exact = vertex_max([net[0].weight.detach(), net[2].weight.detach()], [(lo, hi)])
    for method in METHODS:
        value = METHODS[method](gl).value
        assert value >= exact and value >= sampled_max(net, low, high)
        if method != "eclipse-fast":
            assert math.isclose(value, exact, rel_tol=1e-4)


def test_per_neuron_sectors_differ_within_a_layer():
    """tanh neurons with very different intervals: neuron 0 saturated (slopes near 0), the others
    near 0 (slopes near 1). A bound that gave every neuron one sector of the layer's first would
    fall below the vertex maximum."""
    net = mlp([2, 4, 2], nn.Tanh, 8)
    with torch.no_grad():
        net[0].weight.clamp_(-1, 1)
        net[0].bias[0], net[0].bias[1:] = 3.0, 0.0
    low, high = torch.full((2,), -0.3, dtype=torch.float64), torch.full((2,), 0.3, dtype=torch.float64)
    _, gl = localized(net, low, high)
    lo, hi = next(n for n in gl if isinstance(n, Activation)).slope_bounds()
    assert float(hi[0]) < 0.1 < float(lo[1:].min())
    exact = vertex_max([net[0].weight.detach(), net[2].weight.detach()], [(lo, hi)])
    for method in METHODS:
        value = METHODS[method](gl).value
        assert value >= exact and value >= sampled_max(net, low, high)
