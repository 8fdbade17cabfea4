"""Bound propagation (methods/propagation.py): the pre bounds of every activation and max-pool node
hold at points sampled inside the region and on its boundary (the oracle: the graph evaluated
in float64 at those points, node by node); CROWN is never looser than IBP; on 2-layer ReLU nets
CROWN is at least as tight as the LP of its own relaxation (scipy linprog) and IBP as the exact box."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lipbound.errors import InvalidInput
from lipbound.frontends.from_torch import from_torch
from lipbound.graph.ir import Activation, Graph, Input, MaxPool
from lipbound.methods.propagation import crown_bounds, interval_bounds, localize
from lipbound.methods.region import Box

ACTS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU,
        nn.Softplus]


@dataclass
class L2Ball:
    """A duck-typed L2 ball (the real Ball is written in parallel): center, radius, norm, its box."""

    center: torch.Tensor
    radius: float
    norm: float = 2

    @property
    def low(self) -> torch.Tensor:
        return self.center - self.radius

    @property
    def high(self) -> torch.Tensor:
        return self.center + self.radius

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center).flatten(1).norm(dim=1) <= self.radius

    def points(self, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` points inside and ``n`` on the sphere."""
        d = torch.randn((2 * n, *self.center.shape), generator=g, dtype=torch.float64)
        d = d / d.flatten(1).norm(dim=1).reshape(-1, *[1] * self.center.dim())
        scale = torch.cat([torch.rand(n, generator=g, dtype=torch.float64), torch.ones(n, dtype=torch.float64)])
        return self.center + self.radius * d * scale.reshape(-1, *[1] * self.center.dim())


def box_points(box: Box, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` points inside the box and ``n`` of its vertices (random corners)."""
    inside = box.sample(n, g)
    corner = torch.rand((n, *box.low.shape), generator=g, dtype=torch.float64) < 0.5
    return torch.cat([inside, torch.where(corner, box.high, box.low)])


class ResCat(nn.Module):
    """A residual add and a concat, two activations."""

    def __init__(self, d: int, a1: nn.Module, a2: nn.Module) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(2 * d, 3)
        self.a1, self.a2 = a1, a2

    def forward(self, x):
        h = self.a1(self.l1(x)) + x
        return self.l3(self.a2(torch.cat([self.l2(h), h], dim=1)))


def random_net(g: torch.Generator, kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    def act() -> nn.Module:
        return ACTS[int(torch.randint(len(ACTS), (1,), generator=g))]()

    if kind == "mlp":
        w = [int(v) for v in torch.randint(2, 7, (4,), generator=g)]
        return nn.Sequential(nn.Linear(w[0], w[1]), act(), nn.Linear(w[1], w[2]), act(), nn.Linear(w[2], w[3])), (w[0],)
    if kind == "cnn":
        c = int(torch.randint(1, 3, (1,), generator=g))
        return nn.Sequential(nn.Conv2d(c, 3, 3, stride=2, padding=1), act(), nn.MaxPool2d(2, stride=1),
                             nn.Conv2d(3, 2, 2, padding=1), act(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)), (c, 6, 6)
    d = int(torch.randint(2, 5, (1,), generator=g))
    return ResCat(d, act(), act()), (d,)


def random_region(g: torch.Generator, shape: tuple[int, ...]):
    center = torch.randn(shape, generator=g, dtype=torch.float64)
    radius = float(torch.rand((), generator=g)) * 2 + 0.01
    if bool(torch.rand((), generator=g) < 0.5):
        return L2Ball(center, radius)
    half = radius * torch.rand(shape, generator=g, dtype=torch.float64)
    return Box(center - half, center + half)


def node_values(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value at the batch ``x`` (float64)."""
    g = graph.to(dtype=torch.float64)
    env: dict[str, torch.Tensor] = {}
    for node in g:
        env[node.name] = x if isinstance(node, Input) else node.evaluate(*(env[i] for i in node.inputs))
    return env


def points_of(region, n: int, g: torch.Generator) -> torch.Tensor:
    return region.points(n, g) if isinstance(region, L2Ball) else box_points(region, n, g)


def assert_holds(graph: Graph, pre: dict, x: torch.Tensor, what: str) -> None:
    env = node_values(graph, x)
    targets = {n.name: n.inputs[0] for n in graph if isinstance(n, (Activation, MaxPool))}
    assert set(pre) == set(targets), what
    for name, z in targets.items():
        l, u = pre[name]
        v = env[z]
        assert bool((v >= l).all() and (v <= u).all()), f"{what}: {name} {float((l - v).max())} {float((v - u).max())}"


@pytest.mark.parametrize("kind", ["mlp", "cnn", "rescat"])
def test_bounds_hold_inside_and_on_the_boundary_of_the_region(kind):
    """>= 200 random nets over the three kinds: every pre-activation sampled inside the region and
    on its boundary (box vertices, sphere points) lies in IBP's and CROWN's [l, u]."""
    g = torch.Generator().manual_seed({"mlp": 1, "cnn": 2, "rescat": 3}[kind])
    for i in range(70):
        torch.manual_seed(i)
        model, shape = random_net(g, kind)
        graph = from_torch(model.eval(), shape)
        region = random_region(g, shape)
        x = points_of(region, 40, g)
        assert_holds(graph, interval_bounds(graph, region), x, f"IBP {kind} {i}")
        assert_holds(graph, crown_bounds(graph, region), x, f"CROWN {kind} {i}")


def widths(pre: dict) -> float:
    return sum(float((u - l).sum()) for l, u in pre.values())


def test_crown_is_never_looser_than_ibp_and_tighter_on_deeper_nets():
    """Element-wise CROWN within IBP on random nets of the three kinds; on 5-layer MLPs the total
    width is strictly smaller."""
    g = torch.Generator().manual_seed(7)
    for i in range(30):
        torch.manual_seed(100 + i)
        model, shape = random_net(g, ["mlp", "cnn", "rescat"][i % 3])
        graph = from_torch(model.eval(), shape)
        region = random_region(g, shape)
        ibp, crown = interval_bounds(graph, region), crown_bounds(graph, region)
        for name in ibp:
            assert bool((crown[name][0] >= ibp[name][0]).all() and (crown[name][1] <= ibp[name][1]).all()), (i, name)
    for i in range(5):
        torch.manual_seed(200 + i)
        model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(8, 8), nn.ReLU())], nn.Linear(8, 2))
        graph = from_torch(model.eval(), (8,))
        region = random_region(g, (8,))
        assert widths(crown_bounds(graph, region)) < widths(interval_bounds(graph, region)), i


def _relu_lp(w1, b1, w2, b2, low, high, l1, u1, triangle: bool) -> tuple[list[float], list[float]]:
    """min and max of each output of ``W2 relu(W1 x + b1) + b2`` over the box, with each hidden ReLU
    replaced by its relaxation on ``[l1, u1]`` (scipy linprog, HiGHS): the full triangle, or the
    CROWN lines (upper chord, lower line ``y >= z`` when ``u > -l``, else ``y >= 0``)."""
    import numpy as np
    from scipy.optimize import linprog

    n0, n1 = w1.shape[1], w1.shape[0]
    a_ub, b_ub, a_eq, b_eq = [], [], [], []
    for j in range(n1):
        row_z = np.concatenate([w1[j], np.zeros(n1)])
        e_y = np.zeros(n0 + n1)
        e_y[n0 + j] = 1.0
        if l1[j] >= 0:  # y = z
            a_eq.append(e_y - row_z), b_eq.append(b1[j])
            continue
        if u1[j] <= 0:  # y = 0
            a_eq.append(e_y), b_eq.append(0.0)
            continue
        slope = u1[j] / (u1[j] - l1[j])
        a_ub.append(e_y - slope * row_z), b_ub.append(slope * (b1[j] - l1[j]))  # y <= slope (z - l)
        if triangle or u1[j] > -l1[j]:
            a_ub.append(row_z - e_y), b_ub.append(-b1[j])  # y >= z
        if triangle or not u1[j] > -l1[j]:
            a_ub.append(-e_y), b_ub.append(0.0)  # y >= 0
    bounds = [(float(a), float(b)) for a, b in zip(low, high)] + [(None, None)] * n1
    mins, maxs = [], []
    for i in range(w2.shape[0]):
        c = np.concatenate([np.zeros(n0), w2[i]])
        out = []
        for sign in (1.0, -1.0):
            res = linprog(sign * c, A_ub=np.array(a_ub) if a_ub else None, b_ub=b_ub or None,
                          A_eq=np.array(a_eq) if a_eq else None, b_eq=b_eq or None, bounds=bounds, method="highs")
            assert res.status == 0
            out.append(sign * res.fun + b2[i])
        mins.append(out[0]), maxs.append(out[1])
    return mins, maxs


def test_two_layer_relu_bounds_are_the_lp_of_the_relaxation():
    """On 2-layer ReLU nets over boxes: IBP's first layer is the exact range (numpy); CROWN's bounds
    of the second layer's unstable neurons equal the LP optimum over its own relaxation (within
    1e-7) and contain the LP over the full triangle relaxation; stable ones keep IBP."""
    import numpy as np

    g = torch.Generator().manual_seed(11)
    for i in range(15):
        torch.manual_seed(300 + i)
        n0, n1 = 3, 6
        model = nn.Sequential(nn.Linear(n0, n1), nn.ReLU(), nn.Linear(n1, 2), nn.ReLU())
        graph = from_torch(model.eval(), (n0,))
        region = random_region(g, (n0,))
        region = Box(region.low, region.high)
        ibp, crown = interval_bounds(graph, region), crown_bounds(graph, region)
        first, second = (n.name for n in graph if isinstance(n, Activation))
        w1, b1 = (t.detach().double().numpy() for t in (model[0].weight, model[0].bias))
        w2, b2 = (t.detach().double().numpy() for t in (model[2].weight, model[2].bias))
        low, high = region.low.numpy(), region.high.numpy()
        c, r = (low + high) / 2, (high - low) / 2
        exact_l, exact_u = w1 @ c + b1 - np.abs(w1) @ r, w1 @ c + b1 + np.abs(w1) @ r
        assert np.allclose(ibp[first][0].numpy(), exact_l, rtol=0, atol=1e-12), i
        assert np.allclose(ibp[first][1].numpy(), exact_u, rtol=0, atol=1e-12), i
        lo_own, hi_own = _relu_lp(w1, b1, w2, b2, low, high, exact_l, exact_u, triangle=False)
        lo_tri, hi_tri = _relu_lp(w1, b1, w2, b2, low, high, exact_l, exact_u, triangle=True)
        l2, u2 = crown[second]
        for k in range(2):
            if float(ibp[second][0][k]) >= 0 or float(ibp[second][1][k]) <= 0:  # stable: IBP is kept
                assert torch.allclose(torch.stack([l2[k], u2[k]]), torch.stack([ibp[second][0][k], ibp[second][1][k]]),
                                      rtol=1e-12, atol=1e-12), (i, k)
                continue
            want_l, want_u = max(lo_own[k], float(ibp[second][0][k])), min(hi_own[k], float(ibp[second][1][k]))
            assert abs(float(l2[k]) - want_l) <= 1e-7 * (1 + abs(want_l)), (i, k)
            assert abs(float(u2[k]) - want_u) <= 1e-7 * (1 + abs(want_u)), (i, k)
            assert float(l2[k]) <= lo_tri[k] + 1e-9 and hi_tri[k] <= float(u2[k]) + 1e-9, (i, k)


def _exact_pre(model: nn.Sequential, x: torch.Tensor) -> list[list]:
    """The inputs of each activation of a Linear/ReLU/LeakyReLU MLP at one point, in exact
    rational arithmetic (Fraction) from the float64 weights."""
    from fractions import Fraction

    h = [Fraction(float(v)) for v in x]
    out = []
    for m in model:
        if isinstance(m, nn.Linear):
            w, b = m.weight.detach().double().tolist(), m.bias.detach().double().tolist()
            h = [sum((Fraction(wij) * hj for wij, hj in zip(row, h)), Fraction(bi)) for row, bi in zip(w, b)]
        else:
            out.append(h)
            slope = Fraction(m.negative_slope) if isinstance(m, nn.LeakyReLU) else Fraction(0)
            h = [v if v >= 0 else slope * v for v in h]
    return out


def test_first_layer_bounds_hold_in_exact_arithmetic_where_they_are_attained():
    """The first layer's exact range over a box is attained at a vertex, so a bound computed without
    its rounding margin misses it about half the time: IBP's and CROWN's pre bounds must contain
    the exact rational range (CROWN reaches the unstable neurons, which it tightens)."""
    from fractions import Fraction

    g = torch.Generator().manual_seed(6)
    for i in range(10):
        torch.manual_seed(500 + i)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).double()
        graph = from_torch(model.eval(), (8,))
        x0 = torch.randn(8, generator=g, dtype=torch.float64) * 0.1
        region = Box(x0 - 1.0 / 3, x0 + 1.0 / 3)
        low, high = (Fraction(float(v)) for v in region.low), (Fraction(float(v)) for v in region.high)
        low, high = list(low), list(high)
        name = next(n.name for n in graph if isinstance(n, Activation))
        w, b = model[0].weight.detach().tolist(), model[0].bias.detach().tolist()
        for pre in (interval_bounds(graph, region), crown_bounds(graph, region)):
            l, u = pre[name]
            for j, (row, bj) in enumerate(zip(w, b)):
                terms = [(Fraction(wi) * lo, Fraction(wi) * hi) for wi, lo, hi in zip(row, low, high)]
                exact_min = Fraction(bj) + sum(min(t) for t in terms)
                exact_max = Fraction(bj) + sum(max(t) for t in terms)
                assert Fraction(float(l[j])) <= exact_min and exact_max <= Fraction(float(u[j])), (i, j)


def test_bounds_hold_in_exact_arithmetic_on_degenerate_boxes():
    """On a point (low == high) and on boxes of width 1e-12, the pre bounds of IBP and CROWN contain
    the exact rational pre-activations: the rounding margin is what makes this hold."""
    from fractions import Fraction

    g = torch.Generator().manual_seed(5)
    for i in range(12):
        torch.manual_seed(400 + i)
        model = nn.Sequential(nn.Linear(6, 12), nn.LeakyReLU(0.3), nn.Linear(12, 12), nn.ReLU(),
                              nn.Linear(12, 4), nn.ReLU()).double()
        graph = from_torch(model.eval(), (6,))
        x0 = torch.randn(6, generator=g, dtype=torch.float64) * 3
        width = 0.0 if i % 2 == 0 else 1e-12
        region = Box(x0, x0 + width)
        exact = _exact_pre(model, x0)
        names = [n.name for n in graph if isinstance(n, Activation)]
        for pre in (interval_bounds(graph, region), crown_bounds(graph, region)):
            for name, values in zip(names, exact):
                l, u = pre[name]
                for j, v in enumerate(values):
                    assert Fraction(float(l[j])) <= v <= Fraction(float(u[j])), (i, name, j)


def test_localize_sets_every_pre_bound_and_notes_the_budget():
    """localize: a localized copy with pre on every activation and max pool, the region kept, the
    original untouched; a zero time budget leaves IBP everywhere and says so."""
    torch.manual_seed(0)
    model, shape = random_net(torch.Generator().manual_seed(3), "cnn")
    graph = from_torch(model.eval(), shape)
    region = Box(torch.zeros(shape, dtype=torch.float64), torch.full(shape, 0.1, dtype=torch.float64))
    local = localize(graph, region, method="crown")
    assert local.region is region and all(n.pre is None for n in graph if isinstance(n, (Activation, MaxPool)))
    crown = crown_bounds(graph, region)
    for n in local:
        if isinstance(n, (Activation, MaxPool)):
            assert torch.equal(n.pre[0], crown[n.name][0]) and torch.equal(n.pre[1], crown[n.name][1])
    assert "CROWN" in local.notes[-1]
    cut = localize(graph, region, time_budget=0.0)
    assert "CROWN (with IBP) on the inputs of 0 layers" in cut.notes[-1]
    ibp = localize(graph, region, method="ibp")
    for a, b in zip(cut, ibp):
        if isinstance(a, (Activation, MaxPool)):
            assert bool((a.pre[0] >= b.pre[0]).all() and (a.pre[1] <= b.pre[1]).all())


def test_bad_input_is_refused_with_a_clear_error():
    graph = from_torch(nn.Sequential(nn.Linear(3, 2), nn.ReLU()).eval(), (3,))
    box = Box(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(InvalidInput, match="region"):
        localize(graph, None)
    with pytest.raises(InvalidInput, match="shape"):
        localize(graph, Box(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)))
    with pytest.raises(InvalidInput, match="empty"):
        localize(graph, Box(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(InvalidInput, match="finite"):
        localize(graph, Box(torch.zeros(3, dtype=torch.float64), torch.full((3,), math.inf, dtype=torch.float64)))
    with pytest.raises(InvalidInput, match="unknown"):
        localize(graph, box, method="lp")
    with pytest.raises(InvalidInput, match="time_budget"):
        localize(graph, box, time_budget=-1.0)



def textbook_crown(ws: list, bs: list, low, high) -> list[tuple]:
    """CROWN (Zhang et al. 2018) for a Linear/ReLU MLP in numpy, without rounding care, as
    ``crown_bounds`` defines it: per layer, IBP from the previous layer's bounds intersected with
    plain IBP, and for the neurons that IBP leaves unstable the back-substituted bounds intersected
    with that. ReLU lines: upper chord, lower slope 1 when ``u > -l`` else 0, exact when stable."""
    import numpy as np

    def ibp(k, l, u):  # layer k's pre-activation range from the previous layer's pre bounds
        if k > 0:
            l, u = np.maximum(l, 0), np.maximum(u, 0)
        c, r = (l + u) / 2, (u - l) / 2
        return ws[k] @ c + bs[k] - np.abs(ws[k]) @ r, ws[k] @ c + bs[k] + np.abs(ws[k]) @ r

    c, r = (low + high) / 2, (high - low) / 2
    out, lines, plain = [], [], (low, high)
    for k in range(len(ws)):
        plain = ibp(k, *plain)
        prev = out[-1] if out else (low, high)
        lt, ut = ibp(k, *prev)
        l, u = np.maximum(lt, plain[0]), np.minimum(ut, plain[1])
        bounds = []
        for sign in (1.0, -1.0):
            a, const = sign * ws[k], sign * bs[k]
            for j in reversed(range(k)):
                al, bl, au, bu = lines[j]
                pos, neg = np.clip(a, 0, None), np.clip(a, None, 0)
                slope = pos * al + neg * au
                const = const + pos @ bl + neg @ bu + slope @ bs[j]
                a = slope @ ws[j]
            bounds.append(sign * (a @ c - np.abs(a) @ r + const))
        unstable = (l < 0) & (u > 0)
        l = np.where(unstable, np.maximum(l, bounds[0]), l)
        u = np.where(unstable, np.minimum(u, bounds[1]), u)
        out.append((l, u))
        unst = (l < 0) & (u > 0)
        chord = np.where(unst, u / np.where(unst, u - l, 1), (l >= 0) * 1.0)
        lines.append((np.where(unst, (u > -l) * 1.0, (l >= 0) * 1.0), np.zeros_like(l), chord,
                      np.where(unst, -chord * l, 0.0)))
    return out


def test_crown_is_textbook_crown_on_deep_relu_mlps():
    """On 6-layer ReLU MLPs over boxes, every layer's CROWN bounds match a plain numpy CROWN
    (independent code, same definition) within 1e-9 relative: no looseness from the rounding care."""
    import numpy as np

    g = torch.Generator().manual_seed(13)
    for i in range(6):
        torch.manual_seed(600 + i)
        sizes = [5, 12, 12, 12, 12, 12, 3]
        layers = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
        model = nn.Sequential(*[m for lin in layers for m in (lin, nn.ReLU())])
        graph = from_torch(model.eval(), (5,))
        region = random_region(g, (5,))
        region = Box(region.low, region.high)
        ws = [m.weight.detach().double().numpy() for m in layers]
        bs = [m.bias.detach().double().numpy() for m in layers]
        want = textbook_crown(ws, bs, region.low.numpy(), region.high.numpy())
        got = crown_bounds(graph, region)
        names = [n.name for n in graph if isinstance(n, Activation)]
        for k, name in enumerate(names):
            for mine, theirs in zip(got[name], want[k]):
                assert np.allclose(mine.numpy(), theirs, rtol=1e-9, atol=1e-9), (i, k)


def test_l2_ball_enters_the_first_layer_exactly_and_chunking_changes_nothing():
    """Over an L2 ball, CROWN's first-layer bounds are ``w.c + b -+ r ||w||_2`` (numpy) within 1e-12,
    tighter than the bounding box's; back-substituting one row at a time gives the same bounds."""
    import numpy as np

    g = torch.Generator().manual_seed(17)
    for i in range(5):
        torch.manual_seed(700 + i)
        model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        graph = from_torch(model.eval(), (6,))
        ball = L2Ball(torch.randn(6, generator=g, dtype=torch.float64), 0.5)
        crown = crown_bounds(graph, ball)
        name = next(n.name for n in graph if isinstance(n, Activation))
        w, b = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
        mid, half = w @ ball.center.numpy() + b, 0.5 * np.linalg.norm(w, axis=1)
        assert np.allclose(crown[name][0].numpy(), mid - half, rtol=0, atol=1e-12), i
        assert np.allclose(crown[name][1].numpy(), mid + half, rtol=0, atol=1e-12), i
        assert widths(crown) < widths(interval_bounds(graph, ball)), i
        one_by_one = crown_bounds(graph, ball, chunk_bytes=1)
        for k in crown:
            for x, y in zip(crown[k], one_by_one[k]):
                assert torch.allclose(x, y, rtol=1e-13, atol=1e-13), (i, k)


def test_local_slope_boxes_bound_the_jacobians_in_the_region():
    """End to end on 2-layer nets of 6 hidden units: the brute force over the vertices of the
    localized slope box, ``max ||W2 D W1||``, is >= every Jacobian norm (autograd, float64) and pair
    quotient sampled in the region, <= the same over the global slope box, and strictly below it
    on small regions, where many neurons are stable."""
    import itertools

    g = torch.Generator().manual_seed(19)
    for i in range(8):
        torch.manual_seed(800 + i)
        act = [nn.ReLU(), nn.LeakyReLU(0.2), nn.Tanh(), nn.GELU()][i % 4]
        model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3)).double()
        graph = from_torch(model.eval(), (4,))
        center = torch.randn(4, generator=g, dtype=torch.float64)
        region = Box(center - 0.05, center + 0.05) if i < 4 else L2Ball(center, 0.1)
        local = localize(graph, region)
        node = next(n for n in local if isinstance(n, Activation))
        w1, w2 = model[0].weight.detach(), model[2].weight.detach()

        def brute(lo, hi):
            return max(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=torch.float64)) @ w1, ord=2).item()
                       for d in itertools.product(*zip(lo.tolist(), hi.tolist())))
        bound = brute(*node.slope_bounds())
        glob = brute(*next(n for n in graph if isinstance(n, Activation)).slope_bounds())
        x = points_of(region, 30, g)[:30]  # inside
        for p in x:
            j = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0))[0], p)
            assert torch.linalg.matrix_norm(j, ord=2).item() <= bound * (1 + 1e-12), i
        y = points_of(region, 30, g)[:30]
        with torch.no_grad():
            q = (model(x) - model(y)).norm(dim=1) / (x - y).norm(dim=1)
        assert float(q.max()) <= bound * (1 + 1e-12), i
        assert bound <= glob * (1 + 1e-12) and bound < glob, i
