"""AutoLip on input regions (issue 10): localized graphs built by hand, with pre-activation bounds
from an independent oracle written here (float64 interval arithmetic through the torch layers, each
bound widened by a relative 1e-9), and checked against

* sampled Jacobian norms and pair quotients inside the region (dense Jacobians by autograd on the
  original module, float64): a certified local bound must exceed all of them;
* the global AutoLip value: never above it, strictly below it when many neurons are stable;
* numpy: on one hidden ReLU layer, AutoLip on a box is ``||W2|| ||diag(s) W1||`` with ``s_i = 0``
  for a neuron the oracle proves off and 1 otherwise, and it is at least the brute force
  ``max_{D in {lo, hi}^n} ||W2 D W1||`` over the vertices of the slope box.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbound
from lipbound.graph.ir import Activation, Graph
from lipbound.methods.autolip import autolip
from lipbound.methods.region import Box
from oracles import norm2

MARGIN = 1e-9


def interval_pre(model: nn.Sequential, low: torch.Tensor, high: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Input bounds of each activation of ``model`` (in order) over the box ``[low, high]``:
    centre/radius interval arithmetic in float64, widened outward by a relative ``MARGIN``.
    Activations must be monotone (their image of ``[l, u]`` is ``[s(l), s(u)]``)."""
    with torch.no_grad():
        return _intervals(model, low, high)


def _intervals(model: nn.Sequential, low: torch.Tensor, high: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    mid, rad = ((low + high) / 2)[None].double(), ((high - low) / 2)[None].double()
    out = []
    for m in model:
        if isinstance(m, nn.Linear):
            mid, rad = F.linear(mid, m.weight.double(), m.bias.double()), F.linear(rad, m.weight.double().abs())
        elif isinstance(m, nn.Conv2d):
            mid = F.conv2d(mid, m.weight.double(), m.bias.double(), m.stride, m.padding)
            rad = F.conv2d(rad, m.weight.double().abs(), None, m.stride, m.padding)
        elif isinstance(m, nn.Flatten):
            mid, rad = mid.flatten(1), rad.flatten(1)
        else:  # a monotone activation
            pad = MARGIN * (mid.abs() + rad) + 1e-12
            l, u = (mid - rad - pad)[0], (mid + rad + pad)[0]
            out.append((l, u))
            lo, hi = m(l), m(u)
            mid, rad = ((lo + hi) / 2)[None], ((hi - lo) / 2)[None]
    return out


def localized(model: nn.Sequential, shape: tuple[int, ...], low: torch.Tensor, high: torch.Tensor) -> tuple[Graph, Graph]:
    """The global graph of ``model`` and its copy on the box, with the oracle's bounds."""
    graph = lipbound.api.as_graph(model, shape)
    acts = [n for n in graph if isinstance(n, Activation)]
    pre = interval_pre(model, low, high)
    assert len(acts) == len(pre)
    return graph, graph.localized(Box(low, high), {n.name: b for n, b in zip(acts, pre)})


def sampled_lower(model: nn.Module, low: torch.Tensor, high: torch.Tensor, n: int, seed: int) -> float:
    """Largest Jacobian norm and pair quotient at ``n`` uniform points of the box (float64)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    xs = low + torch.rand((n, *low.shape), generator=g, dtype=torch.float64) * (high - low)
    best = 0.0
    for x in xs:
        j = torch.autograd.functional.jacobian(lambda t: model(t[None]).reshape(-1), x)
        best = max(best, torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2).item())
    with torch.no_grad():
        ys = model(xs)
        for a, b in zip(range(0, n, 2), range(1, n, 2)):
            best = max(best, ((ys[a] - ys[b]).norm() / (xs[a] - xs[b]).norm()).item())
    return best


def mlp(seed: int, act: type[nn.Module], widths=(4, 12, 10, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.Tanh(),
                         nn.Flatten(), nn.Linear(8, 3)).double()


def box(shape: tuple[int, ...], eps: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return c - eps, c + eps


CASES = [("relu", lambda s: mlp(s, nn.ReLU), (4,)), ("tanh", lambda s: mlp(s, nn.Tanh), (4,)),
         ("leaky", lambda s: mlp(s, lambda: nn.LeakyReLU(0.1)), (4,)), ("cnn", cnn, (1, 6, 6))]


@pytest.mark.parametrize("name, make, shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_local_autolip_is_sound_and_below_the_global_value(name, make, shape, eps):
    """Certified local AutoLip is above every sampled Jacobian norm and pair quotient in the box,
    at most the global value (which it equals when no ``pre`` is given), below it on small boxes;
    the power-method estimate is below the certified value."""
    for seed in range(3):
        model = make(seed)
        low, high = box(shape, eps, seed)
        graph, local = localized(model, shape, low, high)
        glob = autolip(graph).value
        value = autolip(local).value
        assert value >= sampled_lower(model, low, high, n=24, seed=seed) * (1 - 1e-9), (name, seed)
        assert value <= glob * (1 + 1e-12), (name, seed)
        if eps < 0.1:  # many stable neurons (or, for tanh, slopes well below 1)
            assert value < 0.99 * glob, (name, seed)
        assert autolip(graph.localized(Box(low, high), {})).value == glob
        power = autolip(local, certified=False).value
        assert power <= value * (1 + 1e-9)


def test_stable_neurons_make_it_strictly_tighter_and_equal_to_the_numpy_value():
    """One hidden ReLU layer on a small box: the oracle proves most neurons stable. AutoLip is then
    ``||W2|| ||diag(s) W1||`` (numpy SVDs; ``s_i = 0`` where the oracle's upper bound is <= 0), far
    below the global ``||W2|| ||W1||``, and at least the brute force over the slope box's vertices
    (``lo_i = hi_i = 1`` stably on, 0 stably off, ``{0, 1}`` otherwise)."""
    model = mlp(7, nn.ReLU, widths=(3, 10, 2))
    low, high = box((3,), 0.1, 7)
    graph, local = localized(model, (3,), low, high)
    (l, u), = interval_pre(model, low, high)
    w1, w2 = (m.weight.detach().numpy() for m in (model[0], model[2]))
    s = (u > 0).double().numpy()
    unstable = np.flatnonzero((l.numpy() < 0) & (u.numpy() > 0))
    assert len(unstable) <= 3  # most neurons are stable
    expected = norm2(w2) * norm2(s[:, None] * w1)
    value = autolip(local).value
    assert expected * (1 + 1e-10) <= value <= expected * (1 + 1e-6)
    assert value < 0.9 * autolip(graph).value
    on = (l.numpy() >= 0).astype(float)
    brute = max(norm2(w2 @ ((on + np.isin(np.arange(10), unstable[list(c)]))[:, None] * w1))
                for r in range(len(unstable) + 1) for c in itertools.combinations(range(len(unstable)), r))
    assert value >= brute * (1 - 1e-12)


def test_activation_without_affine_input_gets_the_largest_slope():
    """``tanh`` applied to the input itself (no affine node to fold into): its factor is the largest
    per-neuron slope on the box, ``max_i tanh'(min |z|)`` (from the derivative, independently),
    times ``||W||``."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Tanh(), nn.Linear(3, 2)).double()
    low = torch.tensor([0.5, 1.0, -2.0], dtype=torch.float64)
    high = torch.tensor([0.8, 1.5, -1.2], dtype=torch.float64)
    graph, local = localized(model, (3,), low, high)
    nearest = torch.minimum(low.abs(), high.abs())
    slope = (1 - torch.tanh(nearest) ** 2).max().item()
    expected = norm2(model[1].weight.detach().numpy()) * slope
    value = autolip(local).value
    assert expected <= value <= expected * (1 + 1e-6)
    assert value >= sampled_lower(model, low, high, n=24, seed=0) * (1 - 1e-9)
    assert value < autolip(graph).value
