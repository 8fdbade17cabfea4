"""The rounding-error bounds of the LMI's data (:mod:`lipbound.methods.lmi_build`,
:meth:`~lipbound.methods.lmi.LipschitzLMI.data_margin`) on localized deep nets.

Oracle: the same maps recomputed in exact rational arithmetic (``fractions.Fraction``) from the
float64 weights, by a forward pass written here on a small algebra of block maps (stable neurons
folded with their slope, unstable ones cut into new basis blocks, from the slope intervals of the
localized graph). Checks: (a) every stored row's error is within its bound ``pre_err``/``out_err``;
(b) on a net whose composed map cancels to ~1e-10 of its factors (so that the rounding is large
and reaches later layers), the true error of ``N`` (exact maps against the stored ones, for
random multipliers) is within ``data_margin``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.graph.ir import Activation
from lipbound.methods.lmi_build import lmi_of_graph
from lipbound.methods.propagation import localize
from lipbound.methods.region import Box

Maps = dict[int, list[list[Fraction]]]  # basis block -> exact matrix (rows of the value, columns of the block)


# ---- the oracle: exact block maps --------------------------------------------------------------
def _exact(t: torch.Tensor) -> list[list[Fraction]]:
    return [[Fraction(float(v)) for v in row] for row in t.detach().double().tolist()]


def _matmul(a: list[list[Fraction]], b: list[list[Fraction]]) -> list[list[Fraction]]:
    cols = list(zip(*b))
    return [[sum((x * y for x, y in zip(row, col)), Fraction(0)) for col in cols] for row in a]


class ExactMaps:
    """Block maps of a ReLU network in rationals; ``pre[j]`` and ``out`` record what the LMI stores
    (up to each block's power-of-two unit)."""

    def __init__(self, n: int, slopes: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.sizes = [n]
        self.slopes = iter(slopes)
        self.pre: list[Maps] = []

    def input(self) -> Maps:
        return {0: [[Fraction(int(i == j)) for j in range(self.sizes[0])] for i in range(self.sizes[0])]}

    @staticmethod
    def linear(lin: nn.Linear, x: Maps) -> Maps:
        w = _exact(lin.weight)
        return {k: _matmul(w, m) for k, m in x.items()}

    @staticmethod
    def add(x: Maps, y: Maps) -> Maps:
        out = dict(x)
        for k, m in y.items():
            out[k] = [[a + b for a, b in zip(r, s)] for r, s in zip(out[k], m)] if k in out else m
        return out

    def relu(self, x: Maps) -> Maps:
        lo, hi = next(self.slopes)
        live = np.flatnonzero(lo != hi)
        fixed = np.where(lo != hi, 0.0, lo)
        out = {k: [[Fraction(float(fixed[i])) * v for v in row] for i, row in enumerate(m)] for k, m in x.items()
               if np.any(fixed)}
        if live.size:
            self.pre.append({k: [m[i] for i in live] for k, m in x.items()})
            idx = len(self.sizes)
            self.sizes.append(live.size)
            out[idx] = [[Fraction(int(i == live[c])) for c in range(live.size)] for i in range(lo.size)]
        return out


def _slopes(graph) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(v.reshape(-1).numpy() for v in n.slope_bounds()) for n in graph.nodes.values()
            if isinstance(n, Activation)]


def _unit(stored: np.ndarray, exact: list[list[Fraction]]) -> Fraction:
    """The power of two between a stored (scaled) map and the exact raw one."""
    norm = math.sqrt(sum(float(v) ** 2 for row in exact for v in row))
    return Fraction(2.0 ** round(math.log2(float(np.linalg.norm(stored)) / norm)))


def _row_errors(stored: np.ndarray, exact: list[list[Fraction]]) -> list[Fraction]:
    """Squared Euclidean norms of the rows of ``stored - unit * exact``, exactly."""
    unit = _unit(stored, exact)
    return [sum(((Fraction(float(s)) - unit * e) ** 2 for s, e in zip(srow, erow)), Fraction(0))
            for srow, erow in zip(stored, exact)]


# ---- the nets -----------------------------------------------------------------------------------
class Deep(nn.Module):
    """A ReLU MLP whose biases make about half of each layer stable on the box (on or off)."""

    def __init__(self, widths: list[int], seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        with torch.no_grad():
            for lin in self.layers[:-1]:
                lin.bias.copy_(torch.where(torch.rand(lin.out_features) < 0.5, 0.0, 3.0)
                               * torch.sign(torch.randn(lin.out_features)))

    def forward(self, x):
        for lin in self.layers[:-1]:
            x = torch.relu(lin(x))
        return self.layers[-1](x)

    def exact(self, ex: ExactMaps) -> Maps:
        x = ex.input()
        for lin in self.layers[:-1]:
            x = ex.relu(ex.linear(lin, x))
        return ex.linear(self.layers[-1], x)


class Residual(nn.Module):
    """``x -> L4(relu(L3(relu(L2(relu(L1 x)))) + S relu(L1 x)))``: a skip over two layers."""

    def __init__(self, n: int, h: int, m: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1, self.l2, self.l3, self.s, self.l4 = (nn.Linear(n, h), nn.Linear(h, h), nn.Linear(h, h),
                                                      nn.Linear(h, h), nn.Linear(h, m))
        with torch.no_grad():
            for lin in (self.l1, self.l2, self.l3):
                lin.bias.copy_(2.0 * torch.sign(torch.randn(h)) * (torch.rand(h) < 0.5))

    def forward(self, x):
        a = torch.relu(self.l1(x))
        return self.l4(torch.relu(self.l3(torch.relu(self.l2(a))) + self.s(a)))

    def exact(self, ex: ExactMaps) -> Maps:
        a = ex.relu(ex.linear(self.l1, ex.input()))
        b = ex.relu(ex.linear(self.l2, a))
        return ex.linear(self.l4, ex.relu(ex.add(ex.linear(self.l3, b), ex.linear(self.s, a))))


class Cancelling(nn.Module):
    """Three layers stable on (folded into one composed map) whose product ``W_3 W_2 W_1`` cancels
    to ~1e-10 of its factors (the rows of ``W_2`` are nearly orthogonal to the span of ``W_1``;
    ``W_3`` of norm 1e10 brings the product back to ~1), then an unstable layer: the composed
    map's rounding is large and carried through ``W_3``. Biases keep the first three layers on
    around ``centre`` (0) and put the fourth's pre-activations at 0 there."""

    centre = torch.zeros(3, dtype=torch.float64)

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.l1, self.l2, self.l3, self.l4, self.l5 = (nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3),
                                                       nn.Linear(3, 4), nn.Linear(4, 2))
        self.double().eval()
        span = torch.randn(3, 2, generator=gen, dtype=torch.float64)
        normal = torch.linalg.cross(span[:, 0], span[:, 1])
        with torch.no_grad():
            self.l1.weight.copy_(span @ torch.randn(2, 3, generator=gen, dtype=torch.float64))
            self.l2.weight.copy_(normal / normal.norm() + 1e-10 * torch.randn(3, 3, generator=gen, dtype=torch.float64))
            self.l3.weight.copy_(1e10 * torch.randn(3, 3, generator=gen, dtype=torch.float64))
            h = self.centre
            for lin in (self.l1, self.l2, self.l3):  # on at the centre by 1e3
                lin.bias.copy_(1e3 - lin.weight @ h)
                h = torch.relu(lin(h))
            self.l4.bias.copy_(-(self.l4.weight @ h))

    def forward(self, x):
        x = torch.relu(self.l3(torch.relu(self.l2(torch.relu(self.l1(x))))))
        return self.l5(torch.relu(self.l4(x)))

    def exact(self, ex: ExactMaps) -> Maps:
        x = ex.input()
        for lin in (self.l1, self.l2, self.l3, self.l4):
            x = ex.relu(ex.linear(lin, x))
        return ex.linear(self.l5, x)


def _built(net: nn.Module, n: int, radius: float, seed: int):
    net = net.double().eval()
    centre = getattr(net, "centre", None)
    if centre is None:
        centre = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    graph = localize(lipbound.as_graph(net, (n,)), Box(centre - radius, centre + radius))
    lmi = lmi_of_graph(graph)
    ex = ExactMaps(n, _slopes(graph))
    out = net.exact(ex)
    return lmi, ex, out


CASES = [("deep", lambda s: Deep([4, 9, 9, 9, 9, 9, 9, 3], s), 4, 0.5) for _ in range(1)] + \
        [("residual", lambda s: Residual(4, 8, 3, s), 4, 0.5), ("cancelling", Cancelling, 3, 1.0)]


@pytest.mark.parametrize("name,make,n,radius", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_stored_row_is_within_its_error_bound(name, make, n, radius, seed):
    lmi, ex, out = _built(make(seed), n, radius, seed)
    assert lmi.eliminated > 0 and len(lmi.blocks) == len(ex.sizes)  # localized: stable neurons folded
    assert lmi.sizes == ex.sizes
    worst = Fraction(0)
    pairs = [(blk.pre, blk.pre_err, exact) for blk, exact in zip(lmi.blocks[1:], ex.pre)] + [(lmi.out, lmi.out_err, out)]
    for stored, bound, exact in pairs:
        assert set(stored) == set(exact)
        for k, m in stored.items():
            for err2, e in zip(_row_errors(m, exact[k]), bound[k]):
                assert err2 <= Fraction(float(e)) ** 2
                worst = max(worst, err2)
    if name == "cancelling":  # the composed map's rounding is real: the check is not vacuous
        assert worst > Fraction(1e-24)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_data_margin_bounds_the_exact_lmi_error(seed):
    """``||N(exact maps) - N(stored maps)||_2 <= data_margin(t)`` for random multipliers, the
    difference formed exactly (ReLU sectors ``[0, 1]``: the data enter ``N`` through
    ``-A_out^T A_out`` and the off-diagonal blocks ``-t P``)."""
    lmi, ex, out = _built(Cancelling(seed), 3, 1.0, seed)
    t = np.random.default_rng(seed).uniform(0.0, 5.0, lmi.n_neurons)
    size, off = lmi.size, lmi.offsets
    diff = [[Fraction(0)] * size for _ in range(size)]

    def exact_map(stored: np.ndarray, raw: list[list[Fraction]]) -> list[list[Fraction]]:
        unit = _unit(stored, raw)
        return [[unit * v for v in row] for row in raw]

    # output term: -(A^T A) with A the exact map, plus the stored one's A^^T A^
    for r in lmi.out:
        for c in lmi.out:
            a_r, a_c = exact_map(lmi.out[r], out[r]), exact_map(lmi.out[c], out[c])
            s_r, s_c = _exact(torch.tensor(lmi.out[r])), _exact(torch.tensor(lmi.out[c]))
            for i in range(lmi.sizes[r]):
                for j in range(lmi.sizes[c]):
                    d = sum((s_r[q][i] * s_c[q][j] - a_r[q][i] * a_c[q][j] for q in range(len(a_r))), Fraction(0))
                    diff[off[r] + i][off[c] + j] += d
    for j, (blk, sl, raw) in enumerate(zip(lmi.blocks[1:], lmi.neuron_slices, ex.pre), start=1):
        tj = t[sl]
        for r, m in blk.pre.items():
            exact = exact_map(m, raw[r])
            for i in range(blk.size):
                for c in range(lmi.sizes[r]):
                    d = Fraction(float(tj[i])) * (Fraction(float(m[i, c])) - exact[i][c])  # -(t P) - (-(t P^))
                    diff[off[j] + i][off[r] + c] += d
                    diff[off[r] + c][off[j] + i] += d
    true = float(np.abs(np.linalg.eigvalsh(np.array([[float(v) for v in row] for row in diff]))).max())
    assert 0 < true <= lmi.data_margin(t)
