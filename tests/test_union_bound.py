"""The Lipschitz constant on a union of boxes (``estimate(..., domain=BoxUnion)``,
:mod:`lipbound.methods.union_bound`) against independent oracles.

* **Exact union constant of a 1-D ReLU net** (one hidden layer, any output width): on a product of
  two linear pieces ``||f(x) - f(y)|| / |x - y|`` is quasi-convex (its sublevel sets
  ``{||g(x, y)|| <= t (x - y)}`` are convex), so its supremum over the union is reached at a pair of
  vertices: the parts' ends and the breakpoints ``-b_i / w_i`` inside them. The oracle evaluates
  the net at those points with numpy, no lipbound code.
* **Sampled pairs** (numpy forward pass) on 2-D nets: a certified bound is never below them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.methods.region import Box, BoxUnion
from lipbound.methods.union_bound import box_distance, cross_bound, touching_clusters

REL = 1e-7


def one_d_net(seed: int, hidden: int = 6, outputs: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, outputs)).double()


def numpy_forward(net: nn.Sequential, x: np.ndarray) -> np.ndarray:
    """The MLP ``net`` (Linear/ReLU) at the rows of ``x`` in numpy float64 (the oracle's own pass)."""
    h = np.asarray(x, dtype=np.float64)
    for layer in net:
        if isinstance(layer, nn.Linear):
            h = h @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
        else:
            h = np.maximum(h, 0.0)
    return h


def exact_union_constant(net: nn.Sequential, parts: list[tuple[float, float]]) -> float:
    """Module doc: the largest quotient over pairs of vertices of the union of intervals."""
    w, b = net[0].weight.detach().numpy()[:, 0], net[0].bias.detach().numpy()
    kinks = -b[w != 0] / w[w != 0]
    pts = sorted({p for lo, hi in parts for p in [lo, hi, *kinks[(kinks > lo) & (kinks < hi)]]})
    x = np.array(pts)
    fx = numpy_forward(net, x[:, None])
    best = 0.0
    for i, j in itertools.combinations(range(len(x)), 2):
        best = max(best, np.linalg.norm(fx[i] - fx[j]) / abs(x[i] - x[j]))
    return best


def union_of(parts: list[tuple[float, float]]) -> BoxUnion:
    return BoxUnion([Box(torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64))
                     for lo, hi in parts])


def bump_net() -> nn.Sequential:
    """``f(x) = 0.1 (x + 5) + 10 relu(x - 1.4) - 10 relu(x - 1.6)``: slope 0.1 on [0, 1] and [2, 3],
    a rise of 2 with slope 10.1 between them."""
    net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        net[0].weight[:] = 1.0
        net[0].bias[:] = torch.tensor([5.0, -1.4, -1.6])
        net[2].weight[:] = torch.tensor([[0.1, 10.0, -10.0]])
        net[2].bias[:] = 0.0
    return net


def test_union_lower_is_witnessed_in_the_union_not_between_its_parts():
    """Two far-apart intervals of slope 0.1 around a slope of 10.1 between them: the hull's lower
    bound (about 10.1) exceeds the union's constant (2.1, brute force); the union's must not."""
    net, parts = bump_net(), [(0.0, 1.0), (2.0, 3.0)]
    truth = exact_union_constant(net, parts)
    region = union_of(parts)
    hull = lipbound.estimate(net, (1,), methods=["lower"], domain=region.hull(), progress=False, time_budget=3)
    assert hull.lower > 2 * truth  # the trap: a witness between the parts
    rep = lipbound.estimate(net, (1,), methods=["exact"], domain=region, progress=False, time_budget=4)
    assert 0 < rep.lower <= truth * (1 + REL) <= rep.upper * (1 + 2 * REL)
    witness = rep.results[0].witness
    assert bool(region.contains(torch.as_tensor(witness["x"], dtype=torch.float64).reshape(1, 1)))
    assert rep.results[0].details["lower_from"].startswith("part")


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("layout", ["apart", "touching", "overlapping", "identical"])
def test_bracket_contains_the_exact_union_constant(seed: int, layout: str):
    net = one_d_net(seed)
    gap = {"apart": 0.7, "touching": 0.0, "overlapping": -0.3, "identical": None}[layout]
    parts = [(-1.0, 0.0), (-1.0, 0.0)] if gap is None else [(-1.0, 0.0), (gap, gap + 1.0), (2.5, 3.0)]
    truth = exact_union_constant(net, parts)
    rep = lipbound.estimate(net, (1,), methods=["exact"], domain=union_of(parts), progress=False, time_budget=6)
    assert rep.lower <= truth * (1 + REL), (rep.lower, truth)
    assert rep.upper >= truth * (1 - REL), (rep.upper, truth)
    d = rep.results[0].details
    if layout == "identical":
        assert d["distinct_parts"] == 1 and rep.parts[0] is rep.parts[1]
        assert rep.upper == rep.parts[0].upper  # the part's own bound: no cross pair
    if layout in ("touching", "overlapping"):
        assert [0, 1] in d["clusters"] and len(rep.hulls) >= 1  # the two first parts need their hull


def test_far_parts_are_bounded_below_the_hull():
    """Parts far apart: the cross bound is small and the union's bound is the parts', far below the
    hull's (the hull contains the steep region between them)."""
    net, parts = bump_net(), [(0.0, 1.0), (2.0, 3.0)]
    rep = lipbound.estimate(net, (1,), methods=["exact"], domain=union_of(parts), progress=False, time_budget=6)
    hull = lipbound.estimate(net, (1,), methods=["exact"], domain=union_of(parts).hull(), progress=False, time_budget=6)
    truth = exact_union_constant(net, parts)
    assert truth * (1 - REL) <= rep.upper <= 1.05 * truth < 0.5 * hull.lower


@pytest.mark.parametrize("seed", range(6))
def test_cross_bound_is_above_sampled_pairs_across_clusters(seed: int):
    """``cross_bound`` on 2-D nets, three boxes, one cluster each: every sampled pair across parts
    has a quotient at most the cross bound (the parts' bounds: the product of the layer norms)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    graph = lipbound.as_graph(net, (2,))
    rng = np.random.default_rng(seed)
    lows = [np.array([0.0, 0.0]), np.array([0.9, 0.2]), np.array([-0.4, 1.1])]
    parts = [Box(torch.tensor(lo), torch.tensor(lo + 0.5)) for lo in lows]
    pts = [lo + 0.5 * rng.random((400, 2)) for lo in lows]
    # every part's constant is at most the product of the layer norms (numpy's SVD)
    uppers = [math.prod(np.linalg.norm(m.weight.detach().numpy(), 2) for m in net if isinstance(m, nn.Linear))] * 3
    res = cross_bound(graph, parts, uppers, [0, 1, 2], target=0.0, max_boxes=32)
    assert res.stopped == "work" and res.boxes == 32
    f = [numpy_forward(net, p) for p in pts]
    worst = max(np.max(np.linalg.norm(f[i][:, None] - f[j][None], axis=2)
                       / np.linalg.norm(pts[i][:, None] - pts[j][None], axis=2))
                for i in range(3) for j in range(3) if i != j)
    assert res.value >= worst * (1 - REL)
    # refinement tightens: more sub-boxes never give a larger bound than the parts alone
    coarse = cross_bound(graph, parts, uppers, [0, 1, 2], target=0.0, max_boxes=3)
    assert res.value <= coarse.value


def v_net() -> nn.Sequential:
    """``f(x) = 10 |x|``: equal values at the centres of intervals placed symmetrically about 0."""
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight[:] = torch.tensor([[1.0], [-1.0]])
        net[0].bias[:] = 0.0
        net[2].weight[:] = 10.0
        net[2].bias[:] = 0.0
    return net


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
@pytest.mark.parametrize("max_boxes", [2, 8])
def test_cross_bound_is_above_the_exact_cross_constant(seed, max_boxes: int):
    """Pairs across two intervals only: the exact supremum (vertices, module doc) is at most the
    cross bound, with each part's bound its exact constant (vertices inside the part)."""
    net = v_net() if seed is None else one_d_net(seed)
    parts = [(-1.0, -0.1), (0.1, 1.0)]
    exact = [exact_union_constant(net, [p]) for p in parts]
    w, b = net[0].weight.detach().numpy()[:, 0], net[0].bias.detach().numpy()
    kinks = -b[w != 0] / w[w != 0]
    pts = [np.array(sorted({lo, hi, *kinks[(kinks > lo) & (kinks < hi)]}))[:, None] for lo, hi in parts]
    fa, fb = numpy_forward(net, pts[0]), numpy_forward(net, pts[1])
    across = np.max(np.linalg.norm(fa[:, None] - fb[None], axis=2) / np.abs(pts[0][:, None, 0] - pts[1][None, :, 0]))
    graph = lipbound.as_graph(net, (1,))
    boxes = [Box(torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)) for lo, hi in parts]
    res = cross_bound(graph, boxes, [e * (1 + 1e-9) for e in exact], [0, 1], target=0.0, max_boxes=max_boxes)
    assert res.value >= across * (1 - REL) > 0


def test_box_distance_and_clusters():
    a, b = Box(torch.zeros(2), torch.ones(2)), Box(torch.tensor([4.0, 5.0]), torch.tensor([6.0, 7.0]))
    c = Box(torch.tensor([1.0, 0.5]), torch.tensor([2.0, 0.7]))  # touches a along a face
    d = float(box_distance(a.low, a.high, b.low, b.high))
    assert 5.0 * (1 - 1e-15) <= d <= 5.0  # gaps (3, 4), rounded down
    assert touching_clusters([a, b, c]) == [[0, 2], [1]]


@pytest.mark.parametrize("seed", range(3))
def test_union_upper_holds_for_sampled_pairs_on_2d_nets(seed: int):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    boxes = [(np.array([0.0, 0.0]), 0.4), (np.array([0.4, 0.1]), 0.3), (np.array([1.2, 1.0]), 0.3)]
    region = BoxUnion([Box(torch.tensor(lo), torch.tensor(lo + w)) for lo, w in boxes])
    rep = lipbound.estimate(net, (2,), methods=["exact"], domain=region, progress=False, time_budget=8)
    rng = np.random.default_rng(seed)
    x = np.concatenate([lo + w * rng.random((300, 2)) for lo, w in boxes])
    fx = numpy_forward(net, x)
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    sampled = np.max(np.linalg.norm(fx[:, None] - fx[None], axis=2) / dist)
    assert rep.upper >= sampled * (1 - REL)
    assert rep.results[0].details["clusters"][0] == [0, 1]  # the first two boxes overlap: one hull


def test_the_rest_of_the_budget_goes_to_the_part_that_decides():
    """``_run_union`` with a stub ``run``: the part with the largest bound, cut short by time on the
    first pass, is run again with the time left; the least of its two bounds counts, the other
    part is run once."""
    from lipbound.api import _run_union
    from lipbound.report import Report, Result

    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():  # f(x) = 0.1 x + 5 on the parts: pairs across them are far below 0.5
        net[0].weight[:], net[0].bias[:], net[2].weight[:], net[2].bias[:] = 0.1, 5.0, 1.0, 0.0
    parts, calls = [(0.0, 1.0), (2.0, 3.0)], []

    def run(box, seconds):
        calls.append((float(box.low[0]), seconds))
        value = 0.5 if float(box.low[0]) == 2.0 and len(calls) > 2 else 0.7 if float(box.low[0]) == 2.0 else 0.2
        res = Result("stub", value, "certified_upper", details={"stopped_by": "time"})
        return Report("stub", (1,), [res], region=box)
    rep = _run_union(lipbound.as_graph(net, (1,)), union_of(parts), run, time_budget=100.0)
    assert [c[0] for c in calls] == [0.0, 2.0, 2.0]
    assert calls[0][1] <= 25 and calls[2][1] > 45  # half the budget for the first pass, the rest after
    assert rep.parts[1].upper == 0.5 and len(rep.parts[1].results) == 2
    assert rep.upper == max(0.5, rep.results[0].details["cross"]) and rep.results[0].details["second_pass"]
