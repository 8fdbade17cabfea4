"""``exact`` on input regions (issue 10): localized graphs whose activations carry ``pre`` bounds.

The ``pre`` bounds come from an independent oracle written here: float64 interval arithmetic
through the MLP's weights with a relative margin of 1e-9 (and, for an L2 ball, the exact first
layer ``|w_i . (x - c)| <= ||w_i|| r``). The values are checked against the brute force of
``test_exact`` (every piece pattern, an LP per partial pattern with scipy's ``linprog``, witnesses
re-checked in exact arithmetic) and against Jacobians sampled by autograd inside the region.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

import lipbound.methods.exact as exact_module
from lipbound.errors import InvalidInput, NotApplicable
from lipbound.graph.ir import Activation
from lipbound.methods import METHODS
from lipbound.methods.exact import exact
from lipbound.methods.region import Box

from test_exact import Net, check, graph_of, inside

ACTS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), lambda: nn.Hardtanh(-1.0, 1.0)]  # monotone: [s(l), s(u)]


def interval_pre(net: Net, low: np.ndarray, high: np.ndarray, first: tuple | None = None) -> list:
    """``(l, u)`` of every hidden layer's pre-activation over the box ``[low, high]`` by float64
    interval arithmetic, widened by a relative 1e-9 (``first``: bounds of the first layer to use instead)."""
    out, hl, hu = [], low.astype(np.float64), high.astype(np.float64)
    for k, act in enumerate(net.acts):
        w, b = net.ws[k], net.bs[k]
        mid, rad = (hl + hu) / 2, (hu - hl) / 2
        z = w @ mid + b
        spread = np.abs(w) @ rad
        margin = 1e-9 * (np.abs(w) @ np.maximum(np.abs(hl), np.abs(hu)) + np.abs(b)) + 1e-300
        zl, zu = (z - spread - margin, z + spread + margin) if k or first is None else first
        out.append((zl, zu))
        with torch.no_grad():
            hl, hu = (act(torch.from_numpy(v)).numpy() for v in (zl, zu))
    return out


def localized(net: Net, region, pre: list):
    g = graph_of(net)
    names = [n.name for n in g if isinstance(n, Activation)]
    return g.localized(region, {name: tuple(torch.from_numpy(v) for v in lu) for name, lu in zip(names, pre)})


def box_of(low, high) -> Box:
    return Box(torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64))


def random_net(seed: int, widths=(3, 3), n: int = 2) -> Net:
    rng = np.random.default_rng(seed)
    sizes = [n, *widths, 2]
    ws = [rng.normal(size=(b, a)) for a, b in zip(sizes, sizes[1:])]
    bs = [rng.normal(size=b) for b in sizes[1:]]
    return Net(ws, bs, [ACTS[seed % len(ACTS)]() for _ in widths])


def jacobian_norms(net: Net, x: np.ndarray) -> np.ndarray:
    """``||Df(x_b)||_2`` at a batch by autograd on the torch module (float64)."""
    mod = net.module()
    out = []
    for p in torch.from_numpy(x):
        j = torch.autograd.functional.jacobian(lambda t: mod(t[None])[0], p)
        out.append(float(torch.linalg.matrix_norm(j, ord=2)))
    return np.array(out)


def stable_count(net: Net, pre: list) -> int:
    """Neurons whose interval contains no breakpoint of their activation (the test's own count)."""
    count = 0
    for (l, u), act in zip(pre, net.acts):
        bps = [-1.0, 1.0] if isinstance(act, nn.Hardtanh) else [0.0]
        count += int(sum(not any(lo < bp < hi for bp in bps) for lo, hi in zip(l, u)))
    return count


@pytest.mark.parametrize("seed", range(8))
def test_local_exact_matches_brute_force_on_the_box(seed):
    """(a) the value on a small box is the brute force's over all patterns meeting the box; (b) its
    witness lies in the box and re-checks in exact arithmetic (``check``)."""
    net = random_net(seed, widths=(4, 4))
    rng = np.random.default_rng(100 + seed)
    c = rng.normal(size=2)
    low, high = c - 0.8, c + 0.8
    pre = interval_pre(net, low, high)
    assert stable_count(net, pre) > 0
    res = exact(localized(net, box_of(low, high), pre), time_budget=30, lower_budget=0)
    assert res.kind == "exact"
    lo, up = check(net, res, (low.tolist(), high.tolist()))
    assert res.value == pytest.approx(up, rel=1e-9)
    assert inside(net, [], res.witness["x"].reshape(-1).numpy(), (low.tolist(), high.tolist()))
    x = np.vstack([c, rng.uniform(low, high, size=(20, 2))])
    assert jacobian_norms(net, x).max() <= res.value * (1 + 1e-9)


def test_pre_prunes_the_search_and_keeps_the_value():
    """(c) the same box with and without ``pre``: the same value, fewer search nodes, below the global value."""
    net = random_net(7, widths=(6, 6), n=3)
    low, high = np.full(3, -0.3), np.full(3, 0.2)
    pre = interval_pre(net, low, high)
    assert stable_count(net, pre) >= 4
    opts = dict(time_budget=60, lower_budget=0, samples=0)
    local = exact(localized(net, box_of(low, high), pre), **opts)
    plain = exact(graph_of(net), domain=(torch.from_numpy(low), torch.from_numpy(high)), **opts)
    whole = exact(graph_of(net), **opts)
    assert local.kind == plain.kind == whole.kind == "exact"
    assert local.value == pytest.approx(plain.value, rel=1e-9)
    assert local.details["search_nodes"] < plain.details["search_nodes"]
    assert local.value <= whole.value * (1 + 1e-9)
    assert local.details["stable_neurons"] == stable_count(net, pre)


def test_wide_net_on_a_tiny_box_is_exact_and_fast(monkeypatch):
    """(d) two layers of 200 on a tiny box: a few unstable neurons, solved quickly; only unstable
    units count against MAX_UNITS (refused without ``pre`` under a cap of 100)."""
    net = random_net(8, widths=(200, 200), n=3)
    net.ws[1] /= 10.0
    c = np.array([0.1, -0.2, 0.3])
    low, high = c - 3e-3, c + 3e-3
    pre = interval_pre(net, low, high)
    unstable = 400 - stable_count(net, pre)
    assert 4 <= unstable <= 20
    monkeypatch.setattr(exact_module, "MAX_UNITS", 100)
    with pytest.raises(NotApplicable, match="unstable"):
        exact(graph_of(net), domain=(torch.from_numpy(low), torch.from_numpy(high)))
    start = time.perf_counter()
    res = exact(localized(net, box_of(low, high), pre), time_budget=20, lower_budget=0)
    assert time.perf_counter() - start < 5
    assert res.kind == "exact"
    assert res.details["stable_neurons"] == 400 - unstable
    x = np.vstack([c, np.random.default_rng(0).uniform(low, high, size=(30, 3))])
    assert jacobian_norms(net, x).max() <= res.value * (1 + 1e-9)
    w = res.witness["x"].reshape(-1).numpy()
    assert ((w >= low) & (w <= high)).all()
    assert jacobian_norms(net, w[None])[0] == pytest.approx(res.value, rel=1e-9)


class L2Ball:
    """A test-local L2 ball with the region interface (``low``, ``high``, ``center``, ``norm``,
    ``contains``, ``sample``, ``describe``)."""

    norm = 2

    def __init__(self, center: np.ndarray, radius: float) -> None:
        self.center, self.radius = torch.from_numpy(center), radius
        self.low, self.high = self.center - radius, self.center + radius

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center).flatten(1).norm(dim=1) <= self.radius

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        d = torch.randn((n, *self.center.shape), generator=generator, dtype=torch.float64)
        r = torch.rand(n, generator=generator, dtype=torch.float64) ** (1 / self.center.numel())
        return self.center + self.radius * r[:, None] * d / d.norm(dim=1, keepdim=True)

    def describe(self) -> str:
        return f"L2 ball of radius {self.radius:g}"


@pytest.mark.parametrize("seed", range(3))
def test_l2_ball_is_bounded_on_its_box_with_witnesses_in_the_ball(seed):
    """An L2 ball: a certified bound at least every Jacobian sampled in the ball and at most the
    brute force on its bounding box; any witness lies in the ball; ``exact`` only if it meets the bound."""
    net = random_net(seed + 20)
    rng = np.random.default_rng(seed)
    c, r = rng.normal(size=2), 0.5
    ball = L2Ball(c, r)
    w0 = net.ws[0]
    z0 = w0 @ c + net.bs[0]
    reach = np.linalg.norm(w0, axis=1) * r * (1 + 1e-9) + 1e-12
    pre = interval_pre(net, c - r, c + r, first=(z0 - reach, z0 + reach))
    res = exact(localized(net, ball, pre), time_budget=30, lower_budget=0)
    _, box_up = check(net, exact(graph_of(net), domain=(c - r, c + r), time_budget=30, lower_budget=0),
                      ((c - r).tolist(), (c + r).tolist()))
    assert res.upper <= box_up * (1 + 1e-8)  # the certified margin of 1e-9 on top
    x = ball.sample(200, torch.Generator().manual_seed(seed)).numpy()
    assert jacobian_norms(net, x[:40]).max() <= res.upper
    if res.witness is not None:
        assert bool(ball.contains(res.witness["x"].reshape(1, -1)))
        assert res.details["lower"] <= res.upper
    if res.kind == "exact":
        assert res.details["lower"] == res.value


def test_domain_outside_the_region_and_other_regions_are_refused():
    net = random_net(1)
    low, high = np.full(2, -0.5), np.full(2, 0.5)
    g = localized(net, box_of(low, high), interval_pre(net, low, high))
    with pytest.raises(InvalidInput, match="localized"):
        exact(g, domain=(-1.0, 1.0))
    assert exact(g, domain=(-0.2, 0.2), lower_budget=0).kind == "exact"  # a box inside the region is fine

    class L1Ball(L2Ball):
        norm = 1

    with pytest.raises(NotApplicable, match="neither a box nor a ball"):
        exact(graph_of(net), domain=L1Ball(np.zeros(2), 1.0))


def test_best_passes_the_domain_to_exact():
    net = random_net(4, widths=(4,))
    low, high = np.full(2, 0.1), np.full(2, 0.6)
    domain = (torch.from_numpy(low), torch.from_numpy(high))
    res = METHODS["best"](graph_of(net), methods=["exact"], domain=domain, seed=0, progress=False,
                          method_options={"exact": {"lower_budget": 0}})
    on_box = exact(graph_of(net), domain=domain, lower_budget=0)
    assert res.value == pytest.approx(on_box.upper, rel=1e-12)
    assert on_box.value < exact(graph_of(net), lower_budget=0).value


def test_l2_ball_region_whose_lp_point_is_outside_the_ball():
    """``f = x1 + 5 relu((x1 + x2)/sqrt 2 - 0.9)`` on the unit L2 ball, with the ``pre`` of its
    bounding box: the active region meets the ball in a thin cap, and its LP point (near the box's
    corner) lies outside the ball. It must stay in the upper bound, and never become the witness."""
    s = 1 / math.sqrt(2)
    net = Net([np.array([[1.0, 0.0], [s, s]]), np.array([[1.0, 5.0]])], [np.array([2.0, -0.9]), np.array([-2.0])],
              [nn.ReLU()])
    low, high = -np.ones(2), np.ones(2)
    ball = L2Ball(np.zeros(2), 1.0)
    res = exact(localized(net, ball, interval_pre(net, low, high)), samples=0, lower_budget=0, time_budget=30)
    cap, centre = jacobian_norms(net, np.array([[0.69, 0.69], [0.0, 0.0]]))
    assert res.kind == "certified_upper" and res.upper >= cap > 4
    assert res.details["lower"] == pytest.approx(centre, rel=1e-9)  # the witness at the centre, inside the ball
    assert bool(ball.contains(res.witness["x"].reshape(1, -1)))
