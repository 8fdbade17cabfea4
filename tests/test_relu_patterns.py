"""The pattern-tree part bound (:mod:`lipbound.methods.relu_patterns`) against independent oracles:
``test_exact``'s brute force over activation patterns with scipy LPs (:func:`region_oracle`: the
constant on the box), the supremum over every slope vertex (``test_local_bab.vertex_sup``, numpy SVDs:
what the pattern bound must improve on by dropping empty patterns), Jacobian norms on a grid (numpy),
and, for the box cutting, points sampled in the box and kept when they satisfy the constraints."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lipbound.methods.relu_boxes import pre_bounds, relu_chain
from lipbound.methods.relu_patterns import _constraint, _empty, _ranges, _shrink, _slack, pattern_bound

from test_exact import graph_of, region_oracle
from test_local_bab import relu_jacobian_norms, relu_net, sub_boxes, vertex_sup


def part_of(seed: int, n: int = 2, widths=(5, 5), half: float = 0.5):
    """A random ReLU net, one box, the chain and the box's pre bounds (batch of one)."""
    net = relu_net(seed, n, widths=widths)
    centre = np.random.default_rng(seed).normal(size=n)
    lo, hi = torch.as_tensor(centre - half)[None], torch.as_tensor(centre + half)[None]
    chain = relu_chain(graph_of(net).to(dtype=torch.float64))
    return net, chain, lo, hi, pre_bounds(chain, lo, hi)


@functools.lru_cache(maxsize=None)
def constant_of(seed: int) -> tuple[float, float]:
    """The region oracle's bracket of the constant on :func:`part_of`'s box (shared by the tests)."""
    net, _, lo, hi, _ = part_of(seed)
    return region_oracle(net, (lo[0].tolist(), hi[0].tolist()))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("leaves", [1, 512])
def test_pattern_bound_covers_the_constant_and_never_exceeds_the_slope_vertices(seed, leaves):
    """Never below the constant on the box (the region oracle's witnessed patterns); with room for
    the whole tree never above the supremum over every slope vertex; ``leaves=1`` gives up at once
    (the open neurons in [0, 1]) and must still cover the constant."""
    net, chain, lo, hi, pre = part_of(seed)
    bound = float(pattern_bound(chain, pre, lo, hi, max_leaves=leaves)[0])
    truth, _ = constant_of(seed)
    assert bound >= truth * (1 - 1e-12), "a pattern of a point of the box was dropped"
    if leaves > 1:
        assert bound <= vertex_sup(net, [(l[0].numpy(), u[0].numpy()) for l, u in pre]) * (1 + 1e-8)


def test_pattern_bound_drops_empty_patterns_somewhere():
    """On some of these boxes the slope vertices' supremum is above the constant and the tree finds
    it: strictly below the vertices, within rounding of the region oracle's constant."""
    gaps, closed = [], 0
    for seed in range(8):
        net, chain, lo, hi, pre = part_of(seed)
        bound = float(pattern_bound(chain, pre, lo, hi)[0])
        gaps.append(vertex_sup(net, [(l[0].numpy(), u[0].numpy()) for l, u in pre]) / bound)
        closed += bound <= constant_of(seed)[1] * (1 + 1e-8)
    assert max(gaps) > 1.05, gaps
    assert closed >= 6


@pytest.mark.parametrize("seed", range(4))
def test_seeded_pattern_bound_stays_above_the_constant_and_the_seed(seed):
    """Rows bounded below the seed are pruned: the bound is at least the seed, and, seeded just below
    the constant, still at least the constant."""
    net, chain, lo, hi, pre = part_of(seed)
    truth, _ = constant_of(seed)
    for s in (0.5 * truth, truth * (1 - 1e-6), 2 * truth):
        bound = float(pattern_bound(chain, pre, lo, hi, seed=s)[0])
        assert bound >= max(s, truth * (1 - 1e-12))
    assert float(pattern_bound(chain, pre, lo, hi, seed=2 * truth)[0]) == 2 * truth


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("leaves", [4, 64])
def test_pattern_bound_stays_above_grid_jacobians_on_deeper_nets(seed, leaves):
    """Three hidden layers, many boxes (several per chunk): every bound is at least the largest
    Jacobian norm on a grid of its box, with and without giving up."""
    n = 3
    net = relu_net(seed, n, widths=(6, 6, 5))
    chain = relu_chain(graph_of(net).to(dtype=torch.float64))
    lows, highs = sub_boxes(seed, n, 10, 0.7)
    lo, hi = torch.from_numpy(lows), torch.from_numpy(highs)
    bounds = pattern_bound(chain, pre_bounds(chain, lo, hi), lo, hi, max_leaves=leaves, rows=4 * leaves)
    for b in range(len(lows)):
        grid = np.stack(np.meshgrid(*[np.linspace(lows[b][i], highs[b][i], 5) for i in range(n)]), -1).reshape(-1, n)
        assert float(bounds[b]) >= relu_jacobian_norms(net, grid).max() * (1 - 1e-12), b


def test_pattern_bound_is_the_jacobian_norm_when_every_neuron_is_stable():
    """Tiny boxes: one pattern, the bound is its Jacobian's norm (numpy, at the centre) up to rounding."""
    net = relu_net(1, 3, widths=(6, 5))
    chain = relu_chain(graph_of(net).to(dtype=torch.float64))
    lows, highs = sub_boxes(1, 3, 6, 1e-7)
    lo, hi = torch.from_numpy(lows), torch.from_numpy(highs)
    bounds = pattern_bound(chain, pre_bounds(chain, lo, hi), lo, hi)
    for b in range(len(lows)):
        exact = relu_jacobian_norms(net, ((lows[b] + highs[b]) / 2)[None])[0]
        assert exact <= float(bounds[b]) <= exact * (1 + 1e-8) + 1e-300


@pytest.mark.parametrize("seed", range(4))
def test_cut_boxes_keep_every_sampled_point_that_satisfies_the_constraints(seed):
    """Random forms ``a . x + a_0`` (with a radius), one branched sign each: every sampled point of
    the box where all the signs hold (numpy) stays in the cut box; the ranges hold the forms' values
    at every sampled point; some cut is strict."""
    rng = np.random.default_rng(seed)
    d, m, rows = 3, 4, 6
    low = torch.as_tensor(rng.normal(size=(rows, d)) - 1.0)
    high = low + torch.as_tensor(rng.random((rows, d)) * 2 + 0.1)
    Z = torch.as_tensor(rng.normal(size=(rows, m, d + 1)))
    Zr = torch.as_tensor(rng.random((rows, m, d + 1)) * 1e-3)
    slack = _slack(Z, Zr, low, high)
    lo, hi = _ranges(Z, slack, low, high)
    A = torch.zeros(rows, 0, d + 1, dtype=torch.float64)
    signs = []
    for i in range(2):
        pick = torch.zeros(rows, m, dtype=torch.bool)
        pick[:, i] = True
        on = torch.as_tensor(rng.random(rows) < 0.5)
        signs.append(on)
        A = torch.cat([A, _constraint(Z, slack, pick, on)[:, None]], dim=1)
    c_low, c_high = _shrink(A, low, high, passes=3)
    assert bool((c_high < high).any() | (c_low > low).any())
    for r in range(rows):
        x = low[r].numpy() + (high[r] - low[r]).numpy() * rng.random((4000, d))
        z = x @ Z[r, :, :-1].numpy().T + Z[r, :, -1].numpy()  # the centre form: within the radius of any
        assert (z >= lo[r].numpy()).all() and (z <= hi[r].numpy()).all()
        ok = np.ones(len(x), dtype=bool)
        for i, on in enumerate(signs):
            ok &= z[:, i] >= 0 if bool(on[r]) else z[:, i] <= 0
        inside = x[ok]
        assert (inside >= c_low[r].numpy()).all() and (inside <= c_high[r].numpy()).all(), r


@pytest.mark.parametrize("seed", range(3))
def test_farkas_emptiness_agrees_with_scipy_linprog(seed):
    """Random constraint sets ``c . x + c_0 <= 0`` on random boxes: every set proved empty is infeasible
    for scipy's LP (HiGHS), and most of the LP-infeasible sets are proved empty."""
    from scipy.optimize import linprog

    rng = np.random.default_rng(seed)
    rows, k, d = 60, 4, 3
    low = torch.as_tensor(rng.normal(size=(rows, d)))
    high = low + torch.as_tensor(rng.random((rows, d)) + 0.2)
    A = torch.as_tensor(rng.normal(size=(rows, k, d + 1)))
    A[..., -1] -= 1.0  # about half of the sets empty
    proved = _empty(A, low, high, steps=60)
    infeasible = []
    for r in range(rows):
        lp = linprog(np.zeros(d), A_ub=A[r, :, :-1].numpy(), b_ub=-A[r, :, -1].numpy(),
                     bounds=list(zip(low[r].tolist(), high[r].tolist())), method="highs")
        infeasible.append(lp.status == 2)
        assert not (bool(proved[r]) and lp.status == 0), r
    infeasible = np.array(infeasible)
    assert infeasible.sum() >= 10
    assert proved.numpy()[infeasible].mean() >= 0.9


def grid_jacobian_norms(net, x: np.ndarray) -> np.ndarray:
    """``||W_K D_{K-1}(x) ... D_1(x) W_1||_2`` at every point of ``x`` ``(P, n)`` at once (numpy)."""
    h, J = x, np.broadcast_to(np.eye(x.shape[1]), (len(x), x.shape[1], x.shape[1]))
    for k in range(len(net.acts)):
        z = h @ net.ws[k].T + net.bs[k]
        h, J = np.maximum(z, 0), (z > 0)[..., None] * (net.ws[k] @ J)
    return np.linalg.norm(net.ws[-1] @ J, ord=2, axis=(1, 2))


@pytest.mark.parametrize("seed", range(3))
def test_pattern_bound_stays_above_dense_grid_jacobians_on_many_small_boxes(seed):
    """Two inputs, two hidden layers of 8, 40 small boxes (neurons switching inside most of them): every
    bound is at least the largest Jacobian norm on a 60 x 60 grid of its box."""
    net = relu_net(seed, 2, widths=(8, 8))
    chain = relu_chain(graph_of(net).to(dtype=torch.float64))
    lows, highs = sub_boxes(seed, 2, 40, 0.3)
    lo, hi = torch.from_numpy(lows), torch.from_numpy(highs)
    pre = pre_bounds(chain, lo, hi)
    assert int(sum(((l < 0) & (u > 0)).sum() for l, u in pre)) >= 40
    bounds = pattern_bound(chain, pre, lo, hi)
    t = np.linspace(0, 1, 60)
    for b in range(len(lows)):
        grid = lows[b] + (highs[b] - lows[b]) * np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
        assert float(bounds[b]) >= grid_jacobian_norms(net, grid).max() * (1 - 1e-12), b
