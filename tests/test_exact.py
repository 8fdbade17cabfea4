"""The exact constant of small piecewise-linear networks against independent oracles.

The oracle (:func:`region_oracle`) knows the activations from torch's documented formulas (not from
lipbound's activation facts), enumerates every piece pattern of the original activations with its
own LPs (scipy's ``linprog``), and re-checks region points and pair quotients in exact rational
arithmetic. It brackets the constant: ``lower`` from the regions whose LP point is verified inside
them in exact arithmetic (and from pair quotients), ``upper`` from every pattern an LP does not
show to be clearly empty.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.graph.activations import REGISTRY
from lipbound.graph.ir import Activation
from lipbound.methods.exact import exact
from lipbound.witness import witness_value

from test_lower import brute_force, one_hidden

Q = Fraction


# ---- the oracle ---------------------------------------------------------------------------------
class Abs(nn.Module):
    """``|t|``; torch's frontend has no Abs module, so :func:`graph_of` swaps it in (ONNX ``Abs``)."""

    def forward(self, x):
        return torch.relu(x)  # placeholder traced as ReLU, replaced by |t| in graph_of


def activation_formula(mod: nn.Module):
    """``(breakpoints, s)`` of an activation module from torch's documentation, ``s`` exact on
    fractions."""
    if isinstance(mod, nn.ReLU):
        return [Q(0)], lambda t: max(t, Q(0))
    if isinstance(mod, nn.LeakyReLU):
        a = Q(mod.negative_slope)
        return [Q(0)], lambda t: t if t >= 0 else a * t
    if isinstance(mod, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
        lo, hi = Q(mod.min_val), Q(mod.max_val)
        return [lo, hi], lambda t: min(max(t, lo), hi)
    if isinstance(mod, nn.Hardsigmoid):  # relu6(t + 3) / 6
        return [Q(-3), Q(3)], lambda t: min(max(t + 3, Q(0)), Q(6)) / 6
    if isinstance(mod, Abs):
        return [Q(0)], abs
    raise TypeError(mod)


def pieces_of(bps, s):
    """Slope and offset of ``s`` on each piece, from its values at two points inside the piece."""
    ends = [bps[0] - 2] + [(p + q) / 2 for p, q in zip(bps, bps[1:])] + [bps[-1] + 2]
    out = []
    for k, mid in enumerate(ends):
        lo = bps[k - 1] if k > 0 else mid - 1
        p, q = (lo + mid) / 2, mid
        slope = (s(q) - s(p)) / (q - p)
        out.append((slope, s(p) - slope * p))
    return out


@dataclasses.dataclass
class Net:
    """An MLP ``Linear, act, Linear, ..., Linear``: float64 weights and the activation modules."""

    ws: list[np.ndarray]
    bs: list[np.ndarray]
    acts: list[nn.Module]

    def module(self) -> nn.Sequential:
        mods = []
        for k, (w, b) in enumerate(zip(self.ws, self.bs)):
            lin = nn.Linear(w.shape[1], w.shape[0]).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            mods.append(lin)
            if k < len(self.acts):
                mods.append(self.acts[k])
        return nn.Sequential(*mods)

    def forward(self, x):
        """Exact output and pre-activations at a point given as fractions."""
        h, zs = list(x), []
        for k, (w, b) in enumerate(zip(self.ws, self.bs)):
            z = [sum((Q(float(w[i, j])) * h[j] for j in range(len(h))), Q(float(b[i]))) for i in range(len(b))]
            if k == len(self.acts):
                return z, zs
            zs.append(z)
            _, s = activation_formula(self.acts[k])
            h = [s(t) for t in z]


def net_of(module: nn.Sequential) -> Net:
    lins = [m for m in module if isinstance(m, nn.Linear)]
    return Net([m.weight.detach().double().numpy() for m in lins], [m.bias.detach().double().numpy() for m in lins],
               [m for m in module if not isinstance(m, nn.Linear)])


def graph_of(net: Net):
    """lipbound's graph of ``net`` (Abs placeholders replaced by ``|t|`` with its facts)."""
    g = lipbound.as_graph(net.module(), (net.ws[0].shape[1],))
    abs_at = iter(isinstance(a, Abs) for a in net.acts)
    nodes = {name: (dataclasses.replace(n, fn=torch.abs, facts=REGISTRY["Abs"].facts(), label="Abs")
                    if isinstance(n, Activation) and next(abs_at) else n) for name, n in g.nodes.items()}
    return type(g)(nodes, g.input, g.output, g.name, list(g.notes))


def intervals(box, n):
    """The box as one ``(lo, hi)`` per coordinate (``box``: None, a pair of numbers or of lists)."""
    if box is None:
        return [(None, None)] * n
    lo, hi = (np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in box)
    return list(zip(lo.tolist(), hi.tolist()))


def _lp_point(rows_a, rows_c, n, box):
    """max t s.t. rows_a x + rows_c >= t ||rows_a||, x in the box, t <= 1: (t*, x*)."""
    a, c = np.array(rows_a), np.array(rows_c)
    norms = np.linalg.norm(a, axis=1)
    norms[norms == 0] = 1.0
    bounds = intervals(box, n) + [(None, 1.0)]
    res = linprog(np.r_[np.zeros(n), -1.0], A_ub=np.hstack([-a, norms[:, None]]), b_ub=c, bounds=bounds,
                  method="highs")
    assert res.status == 0, res.message
    return res.x[-1], res.x[:-1]


def inside(net: Net, pattern, x, box) -> bool:
    """``x`` (floats) is in the closed box and every exact pre-activation is strictly inside the
    piece of ``pattern`` (a flat list of piece indices)."""
    if box is not None and not all(lo <= v <= hi for v, (lo, hi) in zip(x, intervals(box, len(x)))):
        return False
    _, zs = net.forward([Q(float(v)) for v in x])
    flat = [(z, k) for k, layer in enumerate(zs) for z in layer]
    for (z, k), p in zip(flat, pattern):
        bps, _ = activation_formula(net.acts[k])
        if (p > 0 and not z > bps[p - 1]) or (p < len(bps) and not z < bps[p]):
            return False
    return True


def jacobian(net: Net, pattern) -> np.ndarray:
    """The Jacobian on the region of a full pattern (float64 products of the pieces' slopes)."""
    j, start = np.eye(net.ws[0].shape[1]), 0
    for k, act in enumerate(net.acts):
        slopes = [float(a) for a, _ in pieces_of(*activation_formula(act))]
        width = net.ws[k].shape[0]
        d = np.array([slopes[p] for p in pattern[start:start + width]])
        j = d[:, None] * (net.ws[k] @ j)
        start += width
    return net.ws[-1] @ j


def region_oracle(net: Net, box=None) -> tuple[float, float]:
    """``(lower, upper)`` of the constant on ``R^n`` or a box: every piece pattern of the original
    activations, neuron by neuron, with an LP per partial pattern to drop the clearly empty ones
    (module doc)."""
    n = net.ws[0].shape[1]
    best = [0.0, 0.0]

    def visit(pattern, a, c, rows_a, rows_c):
        """``a, c``: the current hidden layer's pre-activations as affine maps of x."""
        layer, start = 0, 0
        while layer < len(net.acts) and start + net.ws[layer].shape[0] <= len(pattern):
            start += net.ws[layer].shape[0]
            layer += 1
        if layer == len(net.acts):
            t, x = _lp_point(rows_a, rows_c, n, box) if rows_a else (1.0, np.zeros(n))
            norm = np.linalg.norm(jacobian(net, pattern), 2)
            best[1] = max(best[1], norm)
            if inside(net, pattern, x, box):
                best[0] = max(best[0], norm)
            return
        bps, s = activation_formula(net.acts[layer])
        i = len(pattern) - start
        for p in range(len(bps) + 1):
            ra, rc = list(rows_a), list(rows_c)
            if p > 0:
                ra.append(a[i]), rc.append(c[i] - float(bps[p - 1]))
            if p < len(bps):
                ra.append(-a[i]), rc.append(float(bps[p]) - c[i])
            if _lp_point(ra, rc, n, box)[0] < -1e-9:  # clearly empty
                continue
            nxt, na, nc = pattern + [p], a, c
            if i + 1 == len(c) and layer + 1 <= len(net.acts):  # the layer is complete: the next one
                pieces = pieces_of(bps, s)
                d = np.array([float(pieces[q][0]) for q in nxt[start:]])
                o = np.array([float(pieces[q][1]) for q in nxt[start:]])
                na, nc = net.ws[layer + 1] @ (d[:, None] * a), net.ws[layer + 1] @ (d * c + o) + net.bs[layer + 1]
            visit(nxt, na, nc, ra, rc)

    visit([], net.ws[0], net.bs[0], [], [])
    return best[0], best[1]


def pair_quotient(net: Net, x, y) -> float:
    """``||f(x) - f(y)|| / ||x - y||`` in exact arithmetic, rounded down (a lower bound of L)."""
    fx, _ = net.forward([Q(float(v)) for v in x])
    fy, _ = net.forward([Q(float(v)) for v in y])
    num = sum((p - q) ** 2 for p, q in zip(fx, fy))
    den = sum((Q(float(p)) - Q(float(q))) ** 2 for p, q in zip(x, y))
    return math.sqrt(num / den) * (1 - 1e-15)


def witness_quotient(net: Net, x, v, delta=Q(1, 2**80)) -> float:
    """``||f(x + d v) - f(x)|| / (d ||v||)`` in exact arithmetic for a tiny ``d``, after checking
    that ``f`` is affine near ``x``: equal exact differences forward and backward along ``v`` and
    every axis (at a kink whose slopes differ, some direction crosses it with a change of slope)."""
    x = [Q(float(t)) for t in x]
    fx, _ = net.forward(x)
    steps = [[Q(float(t)) for t in v]] + [[Q(int(i == k)) for i in range(len(x))] for k in range(len(x))]
    for u in steps:
        ahead, _ = net.forward([p + delta * q for p, q in zip(x, u)])
        behind, _ = net.forward([p - delta * q for p, q in zip(x, u)])
        assert [a - b for a, b in zip(ahead, fx)] == [b - c for b, c in zip(fx, behind)], "the witness is at a kink"
    ahead, _ = net.forward([p + delta * q for p, q in zip(x, steps[0])])
    num = sum((a - b) ** 2 for a, b in zip(ahead, fx))
    return math.sqrt(num / (delta ** 2 * sum(q * q for q in steps[0])))


def check(net: Net, res, box=None, pairs=()) -> tuple[float, float]:
    """``res`` (an exact result) against the oracle: never below a verified region or a pair, and
    its lower bound never above every region that may exist; its witness re-checked in exact
    arithmetic (:func:`witness_quotient`)."""
    lo, up = region_oracle(net, box)
    lo = max([lo] + [pair_quotient(net, x, y) for x, y in pairs])
    assert lo <= up * (1 + 1e-9)
    assert res.value >= lo * (1 - 1e-9), "below a verified region or pair"
    lower = res.value if res.kind == "exact" else res.details["lower"]
    assert lower <= up * (1 + 1e-9), "above every region that may exist"
    if lower is not None:
        x, v = (res.witness[k].reshape(-1).numpy() for k in ("x", "v"))
        assert inside(net, [], x, box), "witness outside the box"
        assert witness_quotient(net, x, v) == pytest.approx(lower, rel=1e-9)
    return lo, up


def build(ws, bs, acts) -> Net:
    return Net([np.array(w, dtype=np.float64) for w in ws], [np.array(b, dtype=np.float64) for b in bs], acts)


# ---- the audit's cases ----------------------------------------------------------------------------
def test_relu6_and_wide_hardtanh_are_not_taken_for_relu():
    # f(x) = 2 relu6(x) - relu6(2x): slope 2 - 2 = 0 on (0, 3), 2 on (3, 6), 0 beyond: L = 2.
    relu6 = build([[[1.0], [2.0]], [[2.0, -1.0]]], [[0.0, 0.0], [0.0]], [nn.ReLU6()])
    # g(x) = h(x) - h(x + 2), h = Hardtanh(-5, 5): slope 1 on (3, 5) only (and on (-7, -5)): L = 1.
    htanh = build([[[1.0], [1.0]], [[1.0, -1.0]]], [[0.0, 2.0], [0.0]], [nn.Hardtanh(-5.0, 5.0)])
    for net, true, (x, y) in ((relu6, 2.0, (4.0, 5.0)), (htanh, 1.0, (3.5, 4.5))):
        res = exact(graph_of(net), lower_budget=0)
        assert res.kind == "exact" and res.value == pytest.approx(true, rel=1e-12)
        lo, up = check(net, res, pairs=[([x], [y])])
        assert lo == pytest.approx(true) and up == pytest.approx(true)
    # the report's default set includes exact for these nets and brackets them exactly (exact's own budget
    # raised from its 1.5 s share: its search takes ~1.2 s here, so a loaded machine could cut it)
    rep = lipbound.estimate(relu6.module(), (1,), progress=False,
                            method_options={"lower": {"time_budget": 2}, "exact": {"time_budget": 10}})
    assert rep.result("exact").kind == "exact" and rep.upper == pytest.approx(2.0, rel=1e-8)


def test_thin_slab_is_a_region():
    # f(x) = relu(x) - relu(-x) + K (relu(x) - relu(x - eps)): slope 1 + K on (0, eps), 1 elsewhere.
    # relu(x) and relu(-x) share their hyperplane: the pattern (x > 0, -x > 0) must be proved empty.
    k, eps = 9.0, 1e-9
    net = build([[[1.0], [-1.0], [1.0]], [[1.0 + k, -1.0, -k]]], [[0.0, 0.0, -eps], [0.0]], [nn.ReLU()])
    res = exact(graph_of(net), lower_budget=0)
    assert res.kind == "exact" and res.value == pytest.approx(1 + k, rel=1e-12)
    assert res.details["empty_regions"] >= 1
    check(net, res, pairs=[([0.0], [eps])])


@pytest.mark.parametrize("width,bias", [(1e-7, 1e3), (1e-10, 1.0), (1e-15, 1.0)])
def test_thin_slab_in_four_dimensions(width, bias):
    # relu(u.x), relu(-u.x), relu(u.x - width), relu(bias + x_0): slope 1 + K across the slab (the
    # LP solver's tolerance, 1e-7, hides the slab of width 1e-15: its point is re-centred by zooming)
    k = 9.0
    u = np.random.default_rng(0).normal(size=4)
    u /= np.linalg.norm(u)
    net = build([np.stack([u, -u, u, np.eye(4)[0]]), [[1.0 + k, -1.0, -k, 0.0]]],
                [[0.0, 0.0, -width, bias], [0.0]], [nn.ReLU()])
    res = exact(graph_of(net), lower_budget=0)
    assert res.kind == "exact" and res.value == pytest.approx(1 + k, rel=1e-9)
    check(net, res, pairs=[(np.zeros(4), width / 2 * u)])


def test_region_without_a_float64_point_stays_in_the_upper_bound():
    # f(x) = x + K (relu(x - 1) - relu(x - b)), b = the float64 after 1: slope 1 + K on (1, b), an
    # interval with no float64 inside. It is a region (the pair (1, b) shows 1 + K), no float64
    # Jacobian witness exists in it, and it cannot be proved empty: certified upper 1 + K.
    k, b = 9.0, float(np.nextafter(1.0, 2.0))
    net = build([[[1.0], [-1.0], [1.0], [1.0]], [[1.0, -1.0, k, -k]]], [[0.0, 0.0, -1.0, -b], [0.0]], [nn.ReLU()])
    res = exact(graph_of(net), lower_budget=0)
    assert res.kind == "certified_upper" and res.details["uncertain_regions"] >= 1
    assert res.value == pytest.approx(1 + k, rel=2e-9)  # with the 1e-9 margin of certified bounds
    assert res.details["lower"] == pytest.approx(1.0, rel=1e-12)
    check(net, res, pairs=[([1.0], [b])])


def test_witness_on_the_box_face_is_rejected():
    # f(x) = relu(x + 10) - 0.5 relu(x) = 10 + 0.5 x on [0, 1]: L = 0.5 there; the Jacobian at the
    # face x = 0 with relu'(0) = 0 is 1, the slope of the region x < 0, outside the box.
    net = build([[[1.0], [1.0]], [[1.0, -0.5]]], [[10.0, 0.0], [0.0]], [nn.ReLU()])
    res = exact(graph_of(net), domain=(0.0, 1.0))  # with the lower search, which ends on the face
    assert res.kind == "exact" and res.value == pytest.approx(0.5, rel=1e-12)
    check(net, res, box=(0.0, 1.0))


def test_rounding_that_hides_a_kink_is_caught_by_the_margin():
    # z = 0.2 x1 + 0.3 x2 + c (float64 constants, c = -(0.2 * 7 - 0.3 * 3) exactly) is < 0 on the box
    # [6, 7] x [-4, -3] except at the corner (7, -3), where it is exactly 0, while float64 gives
    # 1.1e-16 > 0 in every order of summation, with or without FMA. f = 50 relu(z) + 0.5 relu(x1 + 10):
    # L = 0.5 on the box; the region z > 0 has no interior in it, its LP optimum is that corner.
    c = -(Q(0.2) * 7 - Q(0.3) * 3)
    assert Q(float(c)) == c
    net = build([[[0.2, 0.3], [1.0, 0.0]], [[50.0, 0.5]]], [[float(c), 10.0], [0.0]], [nn.ReLU()])
    corner = np.array([[7.0, -3.0]])
    assert (corner @ net.ws[0].T + net.bs[0])[0, 0] > 0  # the float64 evaluation is fooled
    res = exact(graph_of(net), domain=(torch.tensor([6.0, -4.0]), torch.tensor([7.0, -3.0])), lower_budget=0)
    assert res.kind == "exact" and res.value == pytest.approx(0.5, rel=1e-12)
    check(net, res, box=([6.0, -4.0], [7.0, -3.0]))


def test_constant_neuron_on_a_breakpoint_keeps_its_region():
    # Layer 1: relu(x), relu(-x). Layer 2: q = relu(relu(-x)), r = relu(relu(x) - 1), p = relu(relu(x));
    # f = 0.5 q - 2 r + 3 p: slope 3 on (0, 1), 1 beyond, -0.5 below 0, L = 3. On x > 0, q is
    # identically 0, on its kink: it must be branched as the constant it is there (one child, no
    # constraint), or every region below it stays undecided (both children have no interior).
    net = build([[[1.0], [-1.0]], [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], [[0.5, -2.0, 3.0]]],
                [[0.0, 0.0], [0.0, -1.0, 0.0], [0.0]], [nn.ReLU(), nn.ReLU()])
    res = exact(graph_of(net), lower_budget=0, samples=0)
    assert res.kind == "exact" and res.value == pytest.approx(3.0, rel=1e-12)
    check(net, res, pairs=[([0.25], [0.75])])


def test_network_without_activation_is_one_matrix():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(18, 1)).double()
    res = exact(lipbound.as_graph(net, (2, 6)))
    dense = torch.autograd.functional.jacobian(lambda x: net(x.reshape(1, 2, 6)).reshape(-1),
                                               torch.zeros(12, dtype=torch.float64))
    assert res.kind == "exact"
    assert res.value == pytest.approx(torch.linalg.matrix_norm(dense, ord=2).item(), rel=1e-12)
    assert witness_value(net, res.witness) == pytest.approx(res.value, rel=1e-12)


@pytest.mark.parametrize("act", [lambda: nn.LeakyReLU(1.0), lambda: nn.Hardtanh(-math.inf, math.inf)])
def test_activation_without_kinks_makes_one_affine_map(act):
    # LeakyReLU(1) and Hardtanh(-inf, inf) are the identity: f = W2 W1 x + c, L = ||W2 W1||
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 2)).double()
    res = exact(lipbound.as_graph(net, (3,)))
    assert res.kind == "exact"
    assert res.value == pytest.approx(torch.linalg.matrix_norm(net[2].weight @ net[0].weight, ord=2).item(), rel=1e-12)


# ---- families against the oracle ----------------------------------------------------------------
def mlp(arch, seed, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(arch) - 1):
        layers.append(nn.Linear(arch[i], arch[i + 1]))
        if i < len(arch) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("seed", [0, 1])
def test_one_hidden_layer_equals_brute_force(seed):
    net = one_hidden(6, 5, 3, seed)
    res = lipbound.estimate(net, (6,), methods=["exact", "lower", "autolip"], progress=False,
                            method_options={"lower": {"time_budget": 10, "steps": 50}})
    ex = res.result("exact")
    assert ex.kind == "exact"
    assert ex.value == pytest.approx(brute_force(net), rel=1e-9)
    assert res.result("lower").value <= ex.value * (1 + 1e-9) <= res.result("autolip").value * (1 + 1e-9)
    assert witness_value(net, ex.witness) == pytest.approx(ex.value, rel=1e-9)


@pytest.mark.parametrize("arch,seed", [((2, 4, 3, 2), 0), ((3, 3, 3, 1), 1), ((2, 3, 2, 2, 1), 2)])
def test_deeper_nets_match_the_oracle(arch, seed):
    net = net_of(mlp(arch, seed))
    res = exact(graph_of(net), time_budget=60, lower_budget=0)
    assert res.kind == "exact"
    lo, up = check(net, res)
    assert res.value == pytest.approx(lo, rel=1e-9)


def test_box_domain_and_leaky_relu_match_the_oracle():
    net = net_of(mlp((2, 4, 3, 2), 3, act=lambda: nn.LeakyReLU(0.1)))
    g = graph_of(net)
    res = exact(g, domain=(0.0, 1.0), time_budget=60, lower_budget=1)
    assert res.kind == "exact"
    check(net, res, box=(0.0, 1.0))
    whole = exact(g, time_budget=60, lower_budget=1)
    assert whole.kind == "exact"
    check(net, whole)
    assert whole.value >= res.value * (1 - 1e-12)


def test_time_out_gives_a_certified_upper_bound_not_a_guess():
    net = mlp((8, 16, 16, 2), 4)
    g = lipbound.as_graph(net, (8,))
    res = exact(g, time_budget=0.5, lower_budget=0)
    assert res.kind == "certified_upper" and res.details["status"] == "time budget spent"
    assert res.details["lower"] <= res.value <= lipbound.autolip(net, (8,)).value * (1 + 1e-6)
    assert witness_value(net, res.witness) == pytest.approx(res.details["lower"], rel=1e-9)


def test_refuses_other_architectures_and_estimate_skips_it():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(x + torch.relu(self.a(x)))

    tanh = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    prelu = nn.Sequential(nn.Linear(3, 3), nn.PReLU(3), nn.Linear(3, 2))  # one slope per channel
    with torch.no_grad():
        prelu[1].weight.copy_(torch.tensor([0.1, 0.2, 0.3]))
    for net in (Res(), tanh, prelu):
        with pytest.raises(NotApplicable):
            exact(lipbound.as_graph(net, (3,)))
        with pytest.raises(NotApplicable):
            lipbound.estimate(net, (3,), methods=["exact"], progress=False)
        rep = lipbound.estimate(net, (3,), methods="all", progress=False,
                                method_options={"lower": {"time_budget": 2, "steps": 10}})
        assert "exact" in rep.skipped and "exact" not in [r.method for r in rep.results]
        assert rep.lower is not None and rep.lower <= rep.upper


def test_default_set_brackets_small_nets_exactly():
    net = mlp((3, 4, 4, 2), 5)
    rep = lipbound.estimate(net, (3,), progress=False, method_options={"lower": {"time_budget": 5, "steps": 50}})
    names = [r.method for r in rep.results]
    assert {"autolip", "lower", "exact"} <= set(names)
    assert rep.ratio == pytest.approx(1.0, abs=1e-8)


def test_scipy_linprog_fallback_gives_the_same_value(monkeypatch):
    from lipbound.methods import lp

    net = net_of(mlp((2, 4, 3, 1), 6))
    g = graph_of(net)
    with_highspy = exact(g, time_budget=60, lower_budget=0)
    monkeypatch.setattr(lp.DenseLP, "__init__", lambda self: setattr(self, "_highs", None))
    with_scipy = exact(g, time_budget=60, lower_budget=0)
    assert with_scipy.kind == with_highspy.kind == "exact"
    assert with_scipy.value == pytest.approx(with_highspy.value, rel=1e-9)
    assert with_scipy.details["empty_regions"] == with_highspy.details["empty_regions"]
    check(net, with_scipy)


def test_node_cap_stops_the_search_by_work():
    """``max_nodes`` stops the search on a count, not on the time: the result is then a certified
    upper bound (above a sampled Jacobian norm, and above the exact value the uncapped search finds
    on the same net), says ``stopped_by == "work"``, and is the same on every run."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2))
    g = lipbound.as_graph(net, (4,))
    capped = [exact(g, max_nodes=5, lower_budget=0, samples=16) for _ in range(2)]
    assert capped[0].details["stopped_by"] == "work" and capped[0].details["search_nodes"] == 5
    assert capped[0].kind.value == "certified_upper" and capped[0].value == capped[1].value
    full = exact(g, lower_budget=0)
    assert full.details["stopped_by"] == "converged" and full.kind.value == "exact"
    assert capped[0].value >= full.value * (1 - 1e-12)
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampled = max(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(net.double(), p), ord=2).item()
                  for p in x[:32])
    assert capped[0].value >= sampled
