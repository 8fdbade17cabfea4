"""Input regions: Ball (L2, L-infinity), Box, BoxUnion, as_region's errors, and the report's region.

Oracles: exact rational arithmetic (``fractions.Fraction``) for "is this float point inside the
ball", element-wise min/max for the hull, and the dense layer norms of the module for upper bounds.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import InvalidInput, NotApplicable
from lipbound.methods.region import Ball, Box, BoxUnion, as_box, as_region


def exactly_inside(ball: Ball, x: torch.Tensor) -> bool:
    """``||x - c|| <= r`` in exact rational arithmetic on the float64 values."""
    d = [Fraction(a) - Fraction(b) for a, b in zip(x.flatten().tolist(), ball.center.flatten().tolist())]
    r = Fraction(ball.radius)
    if ball.norm == math.inf:
        return max(abs(v) for v in d) <= r
    return sum(v * v for v in d) <= r * r


def near_boundary(ball: Ball, n: int, gen: torch.Generator) -> torch.Tensor:
    """Points on rays from the center at ``r (1 + e)`` for tiny ``e`` of both signs (rounded to floats)."""
    dim = ball.center.numel()
    g = torch.randn((n, dim), generator=gen, dtype=torch.float64)
    g = g / (g.norm(dim=1, keepdim=True) if ball.norm == 2 else g.abs().amax(dim=1, keepdim=True))
    eps = torch.tensor([-1e-12, -1e-15, -2e-16, 0.0, 2e-16, 1e-15, 1e-12], dtype=torch.float64)
    scale = ball.radius * (1 + eps.repeat_interleave(n // len(eps) + 1)[:n]).unsqueeze(1)
    x = ball.center.flatten() + g * scale
    walks = [x]  # and each point moved outwards ulp by ulp in every coordinate: some cross the sphere
    for _ in range(6):
        walks.append(torch.nextafter(walks[-1], walks[-1] + torch.sign(g) * math.inf))
    return torch.cat(walks).reshape(-1, *ball.center.shape)


@pytest.mark.parametrize("norm", [2, "inf"])
@pytest.mark.parametrize("center_scale", [0.0, 1.0, 1e3])
def test_ball_contains_is_rigorous_and_project_sample_land_inside(norm, center_scale):
    gen = torch.Generator().manual_seed(0)
    center = center_scale * torch.randn(7, generator=gen, dtype=torch.float64)
    ball = Ball(center, 0.37, norm)
    pts = near_boundary(ball, 140, gen)
    inside = ball.contains(pts)
    for x, ok in zip(pts, inside.tolist()):
        if ok:
            assert exactly_inside(ball, x)
    assert inside.any()  # conservative, not empty-handed: points well inside count
    assert not all(exactly_inside(ball, x) for x in pts)  # the test points do straddle the sphere
    far = ball.center + 10 * (pts - ball.center)
    dist = (ball.project(far) - ball.center).flatten(1).norm(dim=1, p=ball.norm)
    assert (dist >= ball.radius * (1 - 1e-9)).all()  # projected onto the sphere, not deep inside
    for x in list(ball.project(pts)) + list(ball.sample(50, gen)):
        assert exactly_inside(ball, x) and bool(ball.contains(x[None]))
    assert bool(ball.contains(ball.center[None]))
    # the bounding box holds the ball: each coordinate within [c - r, c + r], exactly
    assert all(Fraction(lo) <= Fraction(c) - Fraction(0.37) and Fraction(hi) >= Fraction(c) + Fraction(0.37)
               for lo, hi, c in zip(ball.low.tolist(), ball.high.tolist(), center.tolist()))


def test_l2_ball_sample_is_uniform_in_the_ball():
    ball = Ball(torch.tensor([1.0, -2.0]), 2.0)
    x = ball.sample(20000, torch.Generator().manual_seed(1))
    rho = (x - ball.center).norm(dim=1) / 2.0
    assert (rho <= 1).all()
    assert abs(float((rho <= 0.5).double().mean()) - 0.25) < 0.02  # area fraction of the inner disc
    assert abs(float((x[:, 0] > 1).double().mean()) - 0.5) < 0.02


def test_box_union_hull_contains_and_project():
    a = Box(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    b = Box(torch.tensor([2.0, -1.0]), torch.tensor([3.0, 0.5]))
    u = BoxUnion([a, b])
    hull = u.hull()
    assert hull.low.tolist() == [0.0, -1.0] and hull.high.tolist() == [3.0, 1.0]
    pts = torch.tensor([[0.5, 0.5], [2.5, 0.0], [1.5, 0.0], [2.5, 0.9]], dtype=torch.float64)
    assert u.contains(pts).tolist() == [True, True, False, False]
    assert u.project(pts).tolist() == [[0.5, 0.5], [2.5, 0.0], [1.0, 0.0], [2.5, 0.5]]
    assert u.contains(u.sample(64, torch.Generator().manual_seed(0))).all()
    d = u.to_dict()
    assert d["convex"] is False and len(d["parts"]) == 2


@pytest.mark.parametrize("domain,shape,message", [
    ((torch.zeros(3), torch.ones(3)), (4,), "shape (3,) but the model's input shape is (4,)"),
    ((torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])), (2,), "low > high at index (1,)"),
    ((0.0, math.inf), (2,), "NaN or infinite"),
    ((torch.tensor([0.0, math.nan]), 1.0), (2,), "NaN or infinite value (first at index (1,))"),
    ((1.0, 1.0), (2,), "single point"),
    ("prop.txt", (2,), "must end in"),
    (42, (2,), "domain must be None"),
])
def test_as_region_errors(domain, shape, message):
    with pytest.raises(InvalidInput) as exc:
        as_region(domain, shape)
    assert message in str(exc.value)


@pytest.mark.parametrize("args,message", [
    ((torch.zeros(2), -1.0), "positive finite"),
    ((torch.zeros(2), math.nan), "positive finite"),
    ((torch.tensor([0.0, math.nan]), 1.0), "NaN"),
    ((torch.zeros(2), 1.0, 1), "norm must be 2 or inf"),
])
def test_ball_errors(args, message):
    with pytest.raises(InvalidInput, match=message):
        Ball(*args)


def test_ball_shape_is_checked_and_reshaped():
    with pytest.raises(InvalidInput, match=r"shape \(3,\).*\(2, 2\)"):
        as_region(Ball(torch.zeros(3), 1.0), (2, 2))
    b = as_region(Ball(torch.zeros(4), 1.0, "inf"), (1, 2, 2))
    assert b.center.shape == (1, 2, 2) and b.norm == math.inf and b.low.shape == (1, 2, 2)


def test_as_box_refuses_what_exact_cannot_take():
    assert as_box((0.0, 1.0), (2,)).low.tolist() == [0.0, 0.0]
    with pytest.raises(NotApplicable, match="needs a box"):
        as_box(Ball(torch.zeros(2), 1.0), (2,))
    with pytest.raises(NotApplicable, match="flat"):
        as_box((torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])), (2,))


def test_flat_box_refuses_a_jacobian_witness_that_moves_a_fixed_element():
    # f(x) = 3 x_0 + x_1 on {x_0 = 0.5} x [0, 1]: L on the region is 1, the Jacobian's norm is sqrt(10)
    net = nn.Linear(2, 1).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 1.0]]))
        net.bias.zero_()
    flat = (torch.tensor([0.5, 0.0]), torch.tensor([0.5, 1.0]))
    x = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(InvalidInput, match="leaves the domain"):
        lipbound.witness_value(net, {"form": "jacobian", "x": x, "v": torch.tensor([1.0, 1.0])}, domain=flat)
    assert lipbound.witness_value(net, {"form": "jacobian", "x": x, "v": torch.tensor([0.0, 1.0])},
                                  domain=flat) == pytest.approx(1.0, rel=1e-12)
    res = lipbound.lower_bound(net, (2,), domain=flat, time_budget=2)
    assert res.value <= 1.0 + 1e-12  # the true local constant; sqrt(10) would be wrong


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))


def layer_norm_product(net: nn.Sequential) -> float:
    return float(np.prod([np.linalg.norm(m.weight.detach().double().numpy(), 2) for m in net if isinstance(m, nn.Linear)]))


def test_report_states_its_region_and_a_union_runs_hull_and_parts():
    net = mlp(0)
    glob = lipbound.estimate(net, (4,), methods=["autolip"], progress=False)
    assert glob.region is None and glob.to_dict()["region"] == {"type": "R^n"} and "R^n (global)" in glob.table()
    ball = lipbound.estimate(net, (4,), methods=["autolip"], domain=lipbound.Ball(torch.zeros(4), 0.5), progress=False)
    assert ball.to_dict()["region"]["type"] == "ball" and "L2 ball of radius 0.5" in ball.table()
    parts = [Box(torch.zeros(4), torch.full((4,), 0.1)), Box(torch.ones(4), torch.full((4,), 1.3))]
    rep = lipbound.estimate(net, (4,), methods=["autolip", "lower"], domain=BoxUnion(parts), progress=False,
                            time_budget=3)
    assert len(rep.parts) == 2 and all(p.region.high.max() == q.high.max() for p, q in zip(rep.parts, parts))
    assert rep.parts[1].result("lower").options["domain"] == "box [1, 1.3]^n"  # the methods ran on each part
    assert rep.results[0].method == "union" and rep.upper == rep.result("union").upper
    d = rep.to_dict()
    assert d["region"]["type"] == "box_union" and "pairs inside one part only" in d["parts_note"]
    assert "max over parts: pairs inside one part only" in rep.table()
    assert rep.lower <= layer_norm_product(net) * (1 + 1e-9) and rep.lower <= rep.upper
    for part in rep.parts:
        assert bool(part.region.contains(torch.as_tensor(part.result("lower").witness.x, dtype=torch.float64)[None]))
