"""``neuron-bab`` and its pieces against independent oracles: the exact local constant of tiny ReLU
MLPs on boxes by enumerating every activation pattern realisable in the box (a Chebyshev LP per
pattern, scipy), the slope-box maximum by enumerating every slope vertex, LP optima by scipy, and
pre-activations sampled inside the node."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from lipbound.api import as_graph
from lipbound.errors import InvalidInput, NotApplicable
from lipbound.methods import METHODS
from lipbound.methods.interval_jacobian import slope_bound, weight_enclosures
from lipbound.methods.piecewise import mlp_layers
from lipbound.methods.split_crown import children
from lipbound.methods.region import Box
from lipbound.methods.relu_boxes import Layer
from lipbound.methods.split_lp import SplitLP

from oracles import seeded_mlp as _net


def _weights(net: torch.nn.Sequential) -> tuple[list[np.ndarray], list[np.ndarray]]:
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    return [m.weight.detach().numpy() for m in lin], [m.bias.detach().numpy() for m in lin]


def _layers(ws: list[np.ndarray], bs: list[np.ndarray]) -> list[Layer]:
    """The layers ``(W, b)`` as float64 :class:`Layer` with zero enclosures: these floats are the network."""
    out = []
    for w, b in zip(ws, bs):
        W, c = torch.from_numpy(w.astype(np.float64)), torch.from_numpy(b.astype(np.float64))
        out.append(Layer(W, torch.zeros_like(W), c, torch.zeros_like(c)))
    return out


def _exact_local(net: torch.nn.Sequential, low: np.ndarray, high: np.ndarray) -> float:
    """max ||J_P|| over the patterns whose region has an interior point in the box: every pattern
    of the hidden neurons, its region ``s_i z_i(x) >= t ||grad z_i||`` with the largest ``t`` by scipy."""
    ws, bs = _weights(net)
    sizes = [w.shape[0] for w in ws[:-1]]
    best = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(sizes)):
        d = np.split(np.array(bits), np.cumsum(sizes)[:-1])
        a, c, rows, rhs = np.eye(len(low)), np.zeros(len(low)), [], []
        for w, b, dm in zip(ws[:-1], bs[:-1], d):
            za, zc = w @ a, w @ c + b
            s = 2 * dm - 1  # active: z >= t, inactive: -z >= t
            norms = np.linalg.norm(za, axis=1) + 1e-300
            rows.append(np.hstack([-(s[:, None] * za), norms[:, None]]))
            rhs.append(s * zc)
            a, c = dm[:, None] * za, dm * zc
        res = linprog(np.r_[np.zeros(len(low)), -1.0], A_ub=np.vstack(rows), b_ub=np.concatenate(rhs),
                      bounds=[*zip(low, high), (None, 1.0)], method="highs")
        if res.status == 0 and -res.fun > 1e-9:
            jac = ws[-1] @ a
            best = max(best, float(np.linalg.norm(jac, 2)))
    return best


CASES = [(0, (2, 5, 4, 2)), (1, (3, 4, 4, 3)), (2, (2, 8, 2)), (6, (4, 3, 3, 3, 2))]


@pytest.mark.parametrize("seed,widths", CASES)
def test_closes_on_the_brute_force_local_constant(seed, widths):
    net = _net(seed, widths)
    g = as_graph(net, (widths[0],))
    gen = torch.Generator().manual_seed(seed)
    low = -torch.rand(widths[0], generator=gen, dtype=torch.float64) - 0.3
    high = torch.rand(widths[0], generator=gen, dtype=torch.float64) + 0.3
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](g, domain=(low, high), time_budget=20, lower_share=0.1 * (seed % 2), vertex_units=0, ascent_share=0.05 * (seed % 2),
                                node_sdp=False)
    upper = res.details["upper"]
    assert upper >= truth * (1 - 1e-9), (upper, truth)  # certified
    assert res.details["lower"] <= truth * (1 + 1e-9)  # witnessed
    assert res.kind == "exact" and res.value == pytest.approx(truth, rel=1e-6), (res.kind, res.value, truth)
    assert res.details["search_nodes"] > 0  # the interval bound alone (no vertices) needs splits to close


def test_lipsdp_node_bounds_keep_it_sound_and_exact():
    net = _net(0, (2, 5, 4, 2))
    g = as_graph(net, (2,))
    low, high = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](g, domain=(low, high), time_budget=20, lower_share=0.0, vertex_units=0, ascent_share=0)
    assert res.details["sdp_bounds"] >= 1 and res.details["upper"] >= truth * (1 - 1e-9)
    assert res.kind == "exact" and res.value == pytest.approx(truth, rel=1e-6)


def test_warm_started_node_bounds_keep_it_sound_and_exact():
    """The children's LipSDP bounds start from the root's certificate (lipsdp_warm): still exact on
    the brute-force constant."""
    net = _net(0, (2, 5, 4, 2))
    g = as_graph(net, (2,))
    low, high = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](g, domain=(low, high), time_budget=20, lower_share=0.0, vertex_units=0, ascent_share=0,
                                node_lp_units=0)
    assert res.details["sdp_full"] == 1 and res.details["sdp_warm"] >= 1
    assert res.details["upper"] >= truth * (1 - 1e-9)
    assert res.kind == "exact" and res.value == pytest.approx(truth, rel=1e-6)


@pytest.mark.parametrize("seed,widths", [(0, (2, 5, 4, 2)), (4, (2, 6, 5, 2))])
def test_strong_branching_closes_on_the_brute_force_local_constant(seed, widths):
    net = _net(seed, widths)
    g = as_graph(net, (2,))
    low, high = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](g, domain=(low, high), time_budget=20, lower_share=0.0, ascent_share=0, strong=3)
    assert res.details["upper"] >= truth * (1 - 1e-9)
    assert res.kind == "exact" and res.value == pytest.approx(truth, rel=1e-6)


def test_a_child_keeps_its_parents_bound_when_its_own_comes_out_looser(monkeypatch):
    """A child's inputs and slope box lie inside its parent's, so the parent's bound holds on it; a
    child bound that came out looser (LipSDP or the LP cut by the deadline; here: the slope bound
    inflated 10x below the root) must not raise the search's upper end above the root's (seen on
    mnistfc_256x2 prop 1: root 52.4, reported 171.2)."""
    import lipbound.methods.neuron_bab_search as nb
    calls = {"n": 0}
    real = nb.slope_bound

    def looser_below_the_root(*args, **kwargs):
        calls["n"] += 1
        value, scores = real(*args, **kwargs)
        return (value if calls["n"] == 1 else 10 * value), scores
    monkeypatch.setattr(nb, "slope_bound", looser_below_the_root)
    net = _net(3, (2, 6, 5, 2))
    g = as_graph(net, (2,))
    low, high = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    truth = _exact_local(net, low.numpy(), high.numpy())
    res = METHODS["neuron-bab"](g, domain=(low, high), time_budget=20, lower_share=0.0, vertex_units=0,
                                node_sdp=False, max_nodes=3, ascent_share=0)
    assert calls["n"] > 1 and res.details["search_nodes"] >= 1
    assert truth * (1 - 1e-9) <= res.details["upper"] <= res.details["root_upper"]


def test_a_node_with_every_neuron_stable_gets_no_lipsdp_bound():
    from lipbound.methods.bab_sdp import NodeSdp
    from lipbound.methods.propagation import localize
    g = as_graph(_net(0, (2, 5, 4, 2)), (2,))
    local = localize(g, Box(-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)))
    pre = [(np.full(5, 1.0), np.full(5, 2.0)), (np.full(4, -2.0), np.full(4, -1.0))]
    assert NodeSdp(local, 100)(pre, 5.0, None) == (math.inf, None)


def test_slope_bound_is_the_vertex_maximum_when_all_are_enumerated_and_above_it_otherwise():
    net = _net(5, (3, 6, 5, 2))
    ws, _ = _weights(net)
    rng = np.random.default_rng(0)
    pre = [(l, l + rng.uniform(0.5, 1.5, size=n)) for n in (6, 5) for l in [rng.uniform(-1.2, 0.2, size=n)]]
    lo = [np.where(l >= 0, 1.0, 0.0) for l, _ in pre]
    hi = [np.where(u > 0, 1.0, 0.0) for _, u in pre]
    free = [np.flatnonzero(a != b) for a, b in zip(lo, hi)]
    vmax = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(len(f) for f in free)):
        d = [a.copy() for a in lo]
        d[0][free[0]], d[1][free[1]] = bits[:len(free[0])], bits[len(free[0]):]
        vmax = max(vmax, np.linalg.norm(ws[2] @ (d[1][:, None] * ws[1]) @ (d[0][:, None] * ws[0]), 2))
    count = sum(len(f) for f in free)
    assert count >= 3
    layers = weight_enclosures(as_graph(net, (3,)), ws)
    tight, _ = slope_bound(layers, pre, vertex_units=count)
    assert vmax <= tight <= vmax * (1 + 1e-6)
    for k in range(count):
        assert slope_bound(layers, pre, vertex_units=k)[0] >= vmax



@pytest.mark.parametrize("seed,widths,fold", [(11, (3, 5, 4, 3, 2), False), (12, (4, 6, 5, 2), True),
                                              (13, (2, 4, 4, 4, 3), True), (14, (5, 7, 6, 4), False)])
def test_the_node_bound_is_above_every_slope_vertex_brute_forced_with_torch(seed, widths, fold):
    """The node bound (:func:`slope_bound` on :func:`weight_enclosures`) against the largest spectral
    norm over every vertex of the slope box, from dense torch products of the module's own
    parameters. ``fold``: a linear layer before the first, which the graph composes with it (a
    materialised product: its error ``E`` is carried)."""
    net = _net(seed, widths)
    if fold:
        torch.manual_seed(seed + 100)
        net = torch.nn.Sequential(torch.nn.Linear(widths[0], widths[0] + 3).double(),
                                  torch.nn.Linear(widths[0] + 3, widths[0]).double(), *net)
    lin = [m.weight.detach() for m in net if isinstance(m, torch.nn.Linear)]
    mats = ([lin[2] @ lin[1] @ lin[0]] + lin[3:]) if fold else lin  # the exact chain, by torch
    g = as_graph(net, (mats[0].shape[1] if not fold else lin[0].shape[1],))
    ws = [l.weight.numpy() for l in mlp_layers(g, method="test")]
    layers = weight_enclosures(g, ws)
    assert bool(layers[0].E.any()) == fold and not any(l.E.any() for l in layers[1:])
    rng = np.random.default_rng(seed)
    sizes = [w.shape[0] for w in ws[:-1]]
    pre = [(l, l + rng.uniform(0.3, 1.5, size=n)) for n in sizes for l in [rng.uniform(-1.5, 0.4, size=n)]]
    lo = [torch.from_numpy(np.where(l >= 0, 1.0, 0.0)) for l, _ in pre]
    free = [torch.from_numpy(np.flatnonzero((l < 0) & (u > 0))) for l, u in pre]
    count = sum(len(f) for f in free)
    assert 3 <= count <= 14
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=count)), dtype=torch.float64)  # every vertex
    J, at = mats[0].expand(len(bits), *mats[0].shape), 0
    for m, w in enumerate(mats[1:]):
        d = lo[m].expand(len(bits), -1).clone()
        d[:, free[m]] = bits[:, at: at + len(free[m])]
        at += len(free[m])
        J = w @ (d[:, :, None] * J)
    vmax = torch.linalg.matrix_norm(J, ord=2).max().item()
    for k in sorted({0, 1, 3, count}):
        value, _ = slope_bound(layers, pre, vertex_units=k)
        assert value >= vmax
    assert value <= vmax * (1 + 1e-6)  # every free slope at its ends: the vertex maximum, up to the margin


def _sampled_node(ws, bs, low, high, split_signs, n, rng, x=None):
    """Points of the box (``n`` at random, or ``x``) whose split neurons are on their side, with
    their pre-activations."""
    x = rng.uniform(low, high, size=(n, len(low))) if x is None else x
    pre, h, keep = [], x, np.ones(len(x), dtype=bool)
    for m, (w, b) in enumerate(zip(ws[:-1], bs[:-1])):
        z = h @ w.T + b
        for i, s in split_signs.get(m, {}).items():
            keep &= s * z[:, i] >= 0
        pre.append(z)
        h = np.maximum(z, 0)
    return [z[keep] for z in pre]


def test_split_lp_bounds_contain_sampled_pre_activations_and_match_the_lp_optimum():
    net = _net(7, (3, 8, 7, 2))
    ws, bs = _weights(net)
    low, high = -np.ones(3), np.ones(3)
    rng = np.random.default_rng(1)
    base = _sampled_node(ws, bs, low, high, {}, 20000, rng)
    # interval bounds of the whole box, widened: valid (loose) starting bounds
    pre, h_lo, h_hi = [], low, high
    for w, b in zip(ws[:-1], bs[:-1]):
        c, r = w @ ((h_lo + h_hi) / 2) + b, np.abs(w) @ ((h_hi - h_lo) / 2)
        pre.append((c - r - 1e-9, c + r + 1e-9))
        h_lo, h_hi = np.maximum(pre[-1][0], 0), np.maximum(pre[-1][1], 0)
    unstable0 = np.flatnonzero((pre[0][0] < 0) & (pre[0][1] > 0))
    i0 = int(unstable0[0])
    signs = {0: {i0: 1.0}}
    pre[0][0][i0] = 0.0
    split = [np.zeros(8, bool), np.zeros(7, bool)]
    split[0][i0] = True
    lp = SplitLP(_layers(ws[:-1], bs[:-1]), pre, split, low, high)
    samples = _sampled_node(ws, bs, low, high, signs, 20000, rng)
    assert len(samples[1]) > 100 and len(samples[1]) < len(base[1])
    for m in (0, 1):
        for i in range(ws[m].shape[0]):
            lo_i, hi_i, _ = lp.bound(m, i)
            assert (samples[m][:, i] >= lo_i).all() and (samples[m][:, i] <= hi_i).all()
            # one side at a time (a node's one-sided LPs): that side's bound, nothing on the other
            (lo_1, hi_1, _), (lo_2, hi_2, _) = lp.bound(m, i, (1.0,)), lp.bound(m, i, (-1.0,))
            assert hi_1 == math.inf and lo_2 == -math.inf
            assert lo_1 == pytest.approx(lo_i, abs=1e-9) and hi_2 == pytest.approx(hi_i, abs=1e-9)
            # the bound is the LP's optimum up to solver tolerance (scipy, an independent solve)
            c, b = lp.target(m, i)
            a = lp.rows.a.toarray()
            eq = np.isfinite(lp.rows.row_lo)
            res = linprog(c, A_ub=a[~eq], b_ub=lp.rows.row_hi[~eq], A_eq=a[eq], b_eq=lp.rows.row_hi[eq],
                          bounds=list(zip(lp.v_lo, lp.v_hi)), method="highs")
            assert res.status == 0 and lo_i == pytest.approx(res.fun + b, abs=1e-6)


def test_split_lp_with_enclosed_weights_bounds_the_exact_network():
    """The LP gets float weights ``W = W* + d``, ``|d| <= E`` (biases likewise, within ``e``): its bounds
    must hold for the exact network ``(W*, b*)``, evaluated at random points, the box's corners and
    the LP's own optimal points (where the float form is extreme, and the exact one is past it by
    ``d x`` about half the time)."""
    net = _net(7, (3, 8, 7, 2))
    ws, bs = _weights(net)
    low, high = -np.ones(3), np.ones(3)
    rng = np.random.default_rng(5)
    pre, h_lo, h_hi = [], low, high  # interval bounds of the exact network, widened: valid for it
    for w, b in zip(ws[:-1], bs[:-1]):
        c, r = w @ ((h_lo + h_hi) / 2) + b, np.abs(w) @ ((h_hi - h_lo) / 2)
        pre.append((c - r - 1e-9, c + r + 1e-9))
        h_lo, h_hi = np.maximum(pre[-1][0], 0), np.maximum(pre[-1][1], 0)
    layers = []
    for w, b in zip(ws[:-1], bs[:-1]):
        E, e = 0.02 * np.abs(w) + 1e-3, np.full(len(b), 1e-3)
        W, c = w + rng.uniform(-1, 1, w.shape) * E, b + rng.uniform(-1, 1, len(b)) * e
        layers.append(Layer(*(torch.from_numpy(t) for t in (W, E, c, e))))
    lp = SplitLP(layers, pre, [np.zeros(8, bool), np.zeros(7, bool)], low, high)
    corners = np.array(list(itertools.product(*zip(low, high))))
    bounds, points = {}, [rng.uniform(low, high, size=(20000, 3)), corners]
    for m in (0, 1):
        for i in range(ws[m].shape[0]):
            lo_i, hi_i, found = lp.bound(m, i)
            bounds[m, i] = (lo_i, hi_i)
            points += [np.clip(p, low, high)[None] for p in found]
    zs = _sampled_node(ws, bs, low, high, {}, 0, rng, np.concatenate(points))
    for (m, i), (lo_i, hi_i) in bounds.items():
        assert (zs[m][:, i] >= lo_i).all() and (zs[m][:, i] <= hi_i).all(), (m, i)


def _layer(w, e_w, b) -> Layer:
    w, e_w, b = (np.array(t, dtype=np.float64) for t in (w, e_w, b))
    return Layer(*(torch.from_numpy(t) for t in (w, e_w, b, np.zeros_like(b))))


@pytest.mark.parametrize("case", ["active", "free", "cut"])
def test_split_lp_rows_hold_for_the_exact_network(case):
    """Hand cases, one per kind of row, whose extremes are worked out by hand for the exact network:
    a first-layer neuron whose float weight misses the exact one by its enclosure ``E = 0.1`` (the
    LP's relaxation of the float network alone would cut the exact network's extreme off), read
    by one second-layer neuron ``z_1``.

    * active: ``z* = x`` on ``x in [0.5, 1]`` (float ``0.9 x``): ``z_1 = x`` spans ``[0.5, 1]``;
    * free: ``z* = x`` on ``[-1, 1]`` with bounds ``[-1, 1]`` (float ``0.9 x``): ``z_1 = relu(x)`` reaches 1;
    * cut: the first neuron ``z* = x - 0.5`` split inactive (float ``1.1 x - 0.5``), the second ``x + 1``
      (exact, active): ``z_1 = x + 1`` reaches 1.5 at ``x = 0.5``."""
    out = _layer([[1.0]], [[0.0]], [0.0])
    if case == "active":
        low, high, first = np.array([0.5]), np.array([1.0]), _layer([[0.9]], [[0.1]], [0.0])
        pre, split, span = [(np.array([0.0]), np.array([2.0]))], [np.zeros(1, bool)], (0.5, 1.0)
    elif case == "free":
        low, high, first = np.array([-1.0]), np.array([1.0]), _layer([[0.9]], [[0.1]], [0.0])
        pre, split, span = [(np.array([-1.0]), np.array([1.0]))], [np.zeros(1, bool)], (0.0, 1.0)
    else:
        low, high, first = np.array([-1.0]), np.array([1.0]), _layer([[1.1], [1.0]], [[0.1], [0.0]], [-0.5, 1.0])
        pre, split, span = [(np.array([-2.0, 0.0]), np.array([0.0, 2.0]))], [np.array([True, False])], (0.0, 1.5)
        out = _layer([[0.0, 1.0]], [[0.0, 0.0]], [0.0])
    pre.append((np.array([-1.0]), np.array([3.0])))  # valid for the exact z_1 in every case
    lp = SplitLP([first, out], pre, split + [np.zeros(1, bool)], low, high)
    lo_1, hi_1, _ = lp.bound(1, 0)
    assert lo_1 <= span[0] and hi_1 >= span[1], (lo_1, hi_1, span)


def test_split_lp_proves_contradicting_splits_empty_and_keeps_compatible_ones():
    net = _net(8, (2, 6, 3))
    ws, bs = _weights(net)
    w, b = ws[0].copy(), bs[0].copy()
    w[1], b[1] = -w[0], -b[0] - 0.5  # z_1 = -z_0 - 0.5: z_0 >= 0 and z_1 >= 0 never hold together
    low, high = -np.ones(2), np.ones(2)
    reach = np.abs(w).sum(1) + 1e-9
    for second, empty in ((1.0, True), (-1.0, False)):
        pre = [(b - reach, b + reach)]
        pre[0][0][0] = 0.0  # neuron 0 split active
        if second > 0:
            pre[0][0][1] = 0.0  # neuron 1 split active: impossible with neuron 0's
        else:
            pre[0][1][1] = 0.0  # neuron 1 split inactive: compatible
        split = [np.zeros(6, bool)]
        split[0][:2] = True
        lp = SplitLP(_layers([w], [b]), pre, split, low, high)
        assert (lp.bound(0, 2) is None) == empty


def test_refuses_bad_input():
    g = as_graph(_net(0, (2, 4, 2)), (2,))
    with pytest.raises(NotApplicable):
        METHODS["neuron-bab"](g, time_budget=1)  # no box
    with pytest.raises(InvalidInput):
        METHODS["neuron-bab"](g, domain=(-torch.ones(2), torch.ones(2)), time_budget=0)
    with pytest.raises(InvalidInput):
        METHODS["neuron-bab"](g, domain=(-torch.ones(2), torch.ones(2)), time_budget=1, root_bounds="ibp")
    with pytest.raises(NotApplicable):
        METHODS["neuron-bab"](as_graph(_net(0, (2, 4, 2), act=torch.nn.Tanh), (2,)),
                              domain=(-torch.ones(2), torch.ones(2)), time_budget=1)
    with pytest.raises(NotApplicable, match="no ReLU"):  # an affine net (the soundness fuzz found the crash)
        METHODS["neuron-bab"](as_graph(torch.nn.Linear(2, 3), (2,)), domain=(-torch.ones(2), torch.ones(2)),
                              time_budget=1)


@pytest.mark.parametrize("name,prop", [("mnistfc_256x6", "mnistfc_prop_0_0.03"),
                                       ("eran_mnist_relu_9x200", "eran_9x200_mnist_spec_idx_225_eps_0.01500")])
def test_runs_capped_on_deep_real_nets(realnets, name, prop):
    import lipbound
    from lipbound.methods.region import as_region
    g = lipbound.as_graph(str(realnets / f"{name}.onnx"))
    region = as_region(lipbound.load_vnnlib(str(realnets / "vnnlib" / f"{prop}.vnnlib")).region, g.input_shape)
    res = METHODS["neuron-bab"](g, domain=region, time_budget=1, lower_share=0.0, ascent_share=0)
    assert res.kind in ("certified_upper", "exact") and math.isfinite(res.value)
    assert res.details["lower"] is None or res.details["lower"] <= res.value


def test_a_split_s_children_cover_every_input_of_their_parent():
    net = _net(9, (3, 6, 5, 2))
    ws, bs = _weights(net)
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(4000, 3))
    z = [x @ ws[0].T + bs[0]]
    z.append(np.maximum(z[0], 0) @ ws[1].T + bs[1])
    pre = [(zm.min(0) - 1e-9, zm.max(0) + 1e-9) for zm in z]  # bounds holding at every sample
    split = [np.zeros(6, bool), np.zeros(5, bool)]
    for m in (0, 1):
        i = int(np.flatnonzero((pre[m][0] < 0) & (pre[m][1] > 0))[0])
        kids = children(pre, split, m, i)
        inside = [np.logical_and.reduce([((zm >= l) & (zm <= u)).all(1) for zm, (l, u) in zip(z, kid)])
                  for kid, _ in kids]
        assert (inside[0] | inside[1]).all() and inside[0].any() and inside[1].any()
        assert all(s[m][i] for _, s in kids)


def test_a_leaf_whose_pattern_has_no_region_in_the_box_is_dropped():
    from lipbound.methods.exact_search import BranchAndBound
    from lipbound.methods.neuron_bab_search import NodeSearch
    from lipbound.methods.piecewise import mlp_layers
    net = _net(8, (2, 6, 3))
    with torch.no_grad():  # z_1 = -z_0 - 0.5: z_0 >= 0 and z_1 >= 0 never hold together
        net[0].weight[1], net[0].bias[1] = -net[0].weight[0], -net[0].bias[0] - 0.5
    box = Box(-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    bb = BranchAndBound(mlp_layers(as_graph(net, (2,)), method="test"), box, 1e-9)
    x = np.zeros(2)
    z = net[0].weight.detach().numpy() @ x + net[0].bias.detach().numpy()
    for both_active, dropped in ((True, True), (False, False)):
        on = z > 0
        on[:2] = (True, True) if both_active else (z[0] > 0, z[1] > 0)
        pre = [(np.where(on, 0.0, -5.0), np.where(on, 5.0, 0.0))]
        search = NodeSearch(bb, weight_enclosures(as_graph(net, (2,)), bb.w), [], pre, 1e-9, 0)
        assert (not search._leaf(pre)) == dropped


def test_split_lp_solves_after_another_highs_model_has_run():
    """HiGHS's scheduler is process-wide: once another ``Highs`` object has run (``exact``,
    ``lower-milp``), a model that sets its own ``threads`` option gets no solve (status "other"),
    and every LP bound silently fell back to ``-inf``/``inf`` (found when test_exact ran first)."""
    highspy = pytest.importorskip("highspy")
    first = highspy.Highs()
    first.setOptionValue("output_flag", False)
    first.passModel(_tiny_highs_lp(highspy))
    first.run()
    net = _net(7, (3, 8, 7, 2))
    ws, bs = _weights(net)
    low, high = -np.ones(3), np.ones(3)
    pre, h_lo, h_hi = [], low, high
    for w, b in zip(ws[:-1], bs[:-1]):
        c, r = w @ ((h_lo + h_hi) / 2) + b, np.abs(w) @ ((h_hi - h_lo) / 2)
        pre.append((c - r - 1e-9, c + r + 1e-9))
        h_lo, h_hi = np.maximum(pre[-1][0], 0), np.maximum(pre[-1][1], 0)
    lp = SplitLP(_layers(ws[:-1], bs[:-1]), pre, [np.zeros(8, bool), np.zeros(7, bool)], low, high)
    lo_i, hi_i, _ = lp.bound(1, 0)
    assert math.isfinite(lo_i) and math.isfinite(hi_i)


def _tiny_highs_lp(highspy):
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = 1, 0
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = np.array([1.0]), np.array([0.0]), np.array([1.0])
    return lp


def _cube(r: float, n: int) -> Box:
    return Box(-r * torch.ones(n, dtype=torch.float64), r * torch.ones(n, dtype=torch.float64))


def test_the_root_keeps_the_tighter_bounds_the_graph_carries():
    """A graph localized by split-crown (CROWN refined by a split tree, sound by split_bounds) on the
    box, or on a box containing it, carries bounds that leave fewer neurons unstable than CROWN;
    neuron-bab's root keeps them (intersected with CROWN's), and its upper bound stays above the
    Jacobian norms sampled in the box."""
    from lipbound.methods.propagation import localize
    from oracles import jacobian_norms
    widths = (5, 12, 12, 12, 3)  # seed 1 on [-0.6, 0.6]^5: CROWN leaves 30 neurons unstable, split-crown 22
    net = _net(1, widths)
    g = as_graph(net, (5,))
    box = _cube(0.6, 5)
    split = localize(g, box, method="split-crown")
    quick = dict(time_budget=10, max_nodes=20, node_sdp=False, ascent_share=0.0, root_lp_units=0)
    plain = METHODS["neuron-bab"](g, domain=box, root_bounds="crown", **quick)
    kept = METHODS["neuron-bab"](split, domain=box, **quick)
    assert plain.details["root_bounds"] == "crown" and kept.details["root_bounds"].startswith("carried")
    assert kept.details["unstable_neurons"] <= len(split.unstable_neurons()) < plain.details["unstable_neurons"]
    sub = Box(box.low * torch.tensor([1, 0.8, 1, 0.5, 1.0], dtype=torch.float64), box.high)
    inner = METHODS["neuron-bab"](split, domain=sub, **quick)
    assert inner.details["unstable_neurons"] < METHODS["neuron-bab"](g, domain=sub, root_bounds="crown",
                                                                  **quick).details["unstable_neurons"]
    gen = torch.Generator().manual_seed(0)
    for b, res in ((box, kept), (sub, inner)):
        xs = b.low + torch.rand((300, 5), generator=gen, dtype=torch.float64) * (b.high - b.low)
        assert res.details["upper"] >= jacobian_norms(net, xs).max().item() * (1 - 1e-9)


@pytest.mark.parametrize("how", ["carried", "root"])
def test_closes_on_the_brute_force_constant_from_a_refined_root(how):
    """Seed 6, widths (3, 4, 4, 4, 2) on [-2, 2]^3: split-crown leaves 5 neurons unstable, CROWN 8.
    From the refined root (carried by the graph, or the root localized with ``root_bounds="split-crown"``)
    neuron-bab still closes on the brute-force constant."""
    from lipbound.methods.propagation import localize
    net = _net(6, (3, 4, 4, 4, 2))
    g = as_graph(net, (3,))
    box = _cube(2.0, 3)
    truth = _exact_local(net, box.low.numpy(), box.high.numpy())
    graph, extra = (localize(g, box, method="split-crown"), {}) if how == "carried" else (g, {"root_bounds": "split-crown"})
    res = METHODS["neuron-bab"](graph, domain=box, time_budget=20, ascent_share=0.0, **extra)
    assert res.details["unstable_neurons"] <= 5
    assert res.details["upper"] >= truth * (1 - 1e-9)
    assert res.kind == "exact" and res.value == pytest.approx(truth, rel=1e-6), (res.kind, res.value, truth)
