"""Folding stable neurons into a built LMI (:mod:`lipbound.methods.lmi_fold`).

Oracles: (a) the LMI that :func:`lipbound.methods.lmi_build.lmi_of_graph` builds from the graph with
the child's bounds (another code path, other units): LipSDP's optimum is invariant under the
blocks' units, so both must give the same value when solved by Clarabel; (b) the parent's
multipliers stay feasible on the folded LMI (least ``rho`` not above the parent's); (c) the fold's
rounding bounds against the fold in exact rational arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from lipbound import as_graph
from lipbound.graph.ir import Activation
from lipbound.methods.eclipse import balanced, fast_multipliers
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.lmi_fold import fold

pytest.importorskip("cvxpy")
from lipbound.methods.lipsdp import solve_cvxpy  # noqa: E402


def _graph(seed: int, sizes=(4, 7, 6, 3)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return as_graph(nn.Sequential(*layers[:-1]).double(), (sizes[0],))


def _localized(g, pre: list[tuple[np.ndarray, np.ndarray]]):
    names = [n for n, node in g.nodes.items() if isinstance(node, Activation)]
    return g.localized(None, {n: (torch.from_numpy(l), torch.from_numpy(u)) for n, (l, u) in zip(names, pre)})


def _node(seed: int):
    """Random pre bounds (every neuron unstable but one per layer) and a child: two neurons of each
    layer clamped at 0, one active and one inactive. Returns the parent's and child's bounds and the
    ``stable`` map of :func:`fold` (positions among the parent's unstable neurons, slopes)."""
    rng = np.random.default_rng(seed)
    parent, child, stable = [], [], {}
    for j, n in enumerate((7, 6), start=1):
        l, u = -rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
        l[0] = 0.3  # stably active in both
        parent.append((l, u))
        cl, cu = l.copy(), u.copy()
        cl[2], cu[4] = 0.0, 0.0  # neuron 2 active, neuron 4 inactive in the child
        child.append((cl, cu))
        stable[j] = (np.array([1, 3]), np.array([1.0, 0.0]))  # among the unstable ones (neuron 0 is not)
    return parent, child, stable


def _value(lmi) -> float:
    _, rho, _ = solve_cvxpy(lmi, time_budget=30)
    return lmi.scale * math.sqrt(rho)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_folded_lmi_has_the_optimum_of_the_lmi_built_for_the_child(seed):
    g = _graph(seed)
    parent, child, stable = _node(seed)
    plmi = balanced(lmi_of_graph(_localized(g, parent)))
    folded, kept = fold(plmi, stable)
    built = lmi_of_graph(_localized(g, child))
    assert folded.n_neurons == built.n_neurons == plmi.n_neurons - 4 and kept.sum() == folded.n_neurons
    assert _value(folded) == pytest.approx(_value(built), rel=1e-5)
    assert _value(folded) < _value(plmi)  # the split mattered: the test can tell the child from the parent


def test_a_layer_folded_away_entirely_leaves_the_later_maps_reading_the_input():
    g = _graph(2)
    parent, _, _ = _node(2)
    child = [(np.maximum(parent[0][0], 0.0), parent[0][1]), parent[1]]  # layer 1 all active
    plmi = balanced(lmi_of_graph(_localized(g, parent)))
    free = np.flatnonzero(parent[0][0] < 0)
    folded, _ = fold(plmi, {1: (np.arange(len(free)), np.ones(len(free)))})
    built = lmi_of_graph(_localized(g, child))
    assert len(folded.blocks) == len(built.blocks) == 2
    assert _value(folded) == pytest.approx(_value(built), rel=1e-5)


def test_the_parent_multipliers_stay_feasible_after_the_fold():
    g = _graph(3)
    parent, _, stable = _node(3)
    plmi = balanced(lmi_of_graph(_localized(g, parent)))
    t, _ = fast_multipliers(plmi)  # strictly feasible (eclipse's closed form)
    assert math.isfinite(plmi.schur(t).rho)
    folded, kept = fold(plmi, stable)
    assert folded.schur(t[kept]).rho <= plmi.schur(t).rho * (1 + 1e-9)


def test_the_rounding_bounds_cover_the_exact_fold():
    g = _graph(4, (5, 9, 8, 4))
    rng = np.random.default_rng(4)
    parent = [(-rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)) for n in (9, 8)]
    plmi = balanced(lmi_of_graph(_localized(g, parent)))
    for b in plmi.blocks[1:]:  # take the stored maps as exact: the bounds must then cover the fold's own rounding
        b.pre_err = {r: np.zeros(b.size) for r in b.pre}
    plmi.out_err = {r: np.zeros(m.shape[0]) for r, m in plmi.out.items()}
    idx, slopes = np.array([0, 2, 5]), np.array([1.0, 1.0, 1.0])
    folded, kept = fold(plmi, {1: (idx, slopes)})
    new, err, old, p1 = folded.blocks[2].pre[0], folded.blocks[2].pre_err[0], plmi.blocks[2].pre[1], plmi.blocks[1].pre[0]
    assert err.max() > 0
    for q in range(new.shape[0]):
        diff = [float(sum((Fraction(old[q, i]) * Fraction(p1[i, c]) for i in idx), Fraction(0)) - Fraction(new[q, c]))
                for c in range(new.shape[1])]
        assert np.linalg.norm(diff) <= err[q]
