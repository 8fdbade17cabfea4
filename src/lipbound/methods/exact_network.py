"""The network behind ``exact`` (:mod:`~lipbound.methods.exact`): an MLP of continuous
piecewise-linear activations as float64 arrays, evaluated at points with rigorous rounding bounds
(:meth:`PiecewiseNet.pieces_at`), and as affine forms of the input on the region of a partial
piece pattern (:meth:`PiecewiseNet.forms`), in float64 or in exact integers.

On a region (layers with ``pre`` bounds: :func:`~lipbound.methods.piecewise.piece_range`) each
neuron may only use the pieces ``first[j] .. last[j]``; its slope interval ``[slope_lo[j],
slope_hi[j]]`` is the hull of those pieces' slopes. Without a region every neuron may use every
piece of its activation (the global case).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np

from ..linalg.float_units import TINY64, gamma
from .piecewise import DenseLayer, piece_range
from .region import Box

__all__ = ["PiecewiseNet", "WitnessedNet", "Numbers", "spectral"]

_FORMS_CACHED = 4096  # most layers' forms that :meth:`PiecewiseNet.forms` remembers


@dataclass
class Numbers:
    """The network's numbers in one arithmetic: float64 arrays (``unit = 1``), or exact integers
    ``value * unit`` (Python ints in object arrays, ``unit = 2^E``: products of integers are exact
    and about 50 times faster than of fractions). Per hidden layer ``m``, its activation's
    ``breakpoints[m]`` and, per piece, ``slopes[m]`` and ``offsets[m]``."""

    w: list[np.ndarray]
    b: list[np.ndarray]
    breakpoints: list[np.ndarray]
    slopes: list[np.ndarray]
    offsets: list[np.ndarray]
    unit: float | int = 1.0

    @staticmethod
    def of(layers: list[DenseLayer]) -> "Numbers":
        hidden = [l.pieces for l in layers[:-1]]
        return Numbers([l.weight.numpy() for l in layers], [l.bias.numpy() for l in layers],
                        [np.array(p.breakpoints, dtype=np.float64) for p in hidden],
                        [np.array(p.slopes, dtype=np.float64) for p in hidden],
                        [np.array(p.offsets, dtype=np.float64) for p in hidden])

    def integer(self) -> "Numbers":
        """The same numbers as exact integers ``value * 2^E``, ``E`` the least exponent that makes
        every float64 value here an integer."""
        groups = (self.w, self.b, self.breakpoints, self.slopes, self.offsets)
        ratios = [[[float(v).as_integer_ratio() for v in np.ravel(x)] for x in group] for group in groups]
        unit = max((q for group in ratios for x in group for _, q in x), default=1)  # powers of 2
        return Numbers(*([np.array([p * (unit // q) for p, q in r], dtype=object).reshape(np.shape(x))
                           for x, r in zip(group, group_ratios)]
                          for group, group_ratios in zip(groups, ratios)), unit=unit)


class PiecewiseNet:
    """An MLP ``W_K s(W_{K-1} ... s(W_0 x + c_0) ...) + c_K`` (hidden layer ``m``: ``sizes[m]``
    neurons, numbered ``offsets[m] .. offsets[m+1]-1`` across layers) with its per-neuron pieces
    (module doc)."""

    def __init__(self, layers: list[DenseLayer]) -> None:
        self.num = Numbers.of(layers)
        self._integers: Numbers | None = None  # exact, built on first use
        self._forms_cache: dict[tuple[bool, bytes], tuple[np.ndarray, np.ndarray, object]] = {}
        self.w = self.num.w
        self.sizes = [w.shape[0] for w in self.w[:-1]]
        self.offsets = np.cumsum([0] + self.sizes)
        self.n_neurons = int(self.offsets[-1])
        self.layer = np.repeat(np.arange(len(self.sizes)), self.sizes)  # hidden layer of each neuron
        self.dim = self.w[0].shape[1]
        # the activation's Lipschitz constant on all of R (rounding bounds hold at any point)
        self.act_lips = [float(np.abs(s).max(initial=0.0)) for s in self.num.slopes]
        # the float pieces' total jump at the breakpoints (pieces_at)
        self.jumps = [_jump_bound(*p) for p in zip(self.num.breakpoints, self.num.slopes, self.num.offsets)]
        ranges = [self._piece_ranges(layer, m) for m, layer in enumerate(layers[:-1])]
        self.first, self.last, self.slope_lo, self.slope_hi = (
            np.concatenate([r[k] for r in ranges]) if ranges else np.zeros(0, dtype=int if k < 2 else float)
            for k in range(4))
        self.stable = self.first == self.last
        self.kinked = not self.stable.all()
        self.norms = [spectral(w) for w in self.w]

    def _piece_ranges(self, layer: DenseLayer, m: int) -> tuple[np.ndarray, ...]:
        """``(first, last, slope_lo, slope_hi)`` of the neurons of hidden layer ``m``."""
        bps, slopes = self.num.breakpoints[m], self.num.slopes[m]
        if layer.pre is None:
            first, last = np.zeros(self.sizes[m], dtype=int), np.full(self.sizes[m], len(bps))
        else:
            first, last = piece_range(bps, layer.pre[0].numpy(), layer.pre[1].numpy())
        usable = (np.arange(len(slopes)) >= first[:, None]) & (np.arange(len(slopes)) <= last[:, None])
        return (first, last, np.where(usable, slopes, np.inf).min(1), np.where(usable, slopes, -np.inf).max(1))

    @property
    def integers(self) -> Numbers:
        """The network's numbers as exact integers (:meth:`Numbers.integer`), built once."""
        if self._integers is None:
            self._integers = self.num.integer()
        return self._integers

    def share_integers(self, numbers: Numbers) -> None:
        """Take ``numbers`` as :attr:`integers`: built by a net with the same weights, biases and
        activations (only the pre bounds differ), so that parts of one network build them once."""
        self._integers = numbers
        self._forms_cache.clear()

    def slopes(self, pieces: np.ndarray) -> np.ndarray:
        """Slopes of the first ``pieces.shape[-1]`` neurons in the given pieces (any batch shape)."""
        out = np.empty(pieces.shape, dtype=np.float64)
        for m in range(len(self.sizes)):
            lo, hi = self.offsets[m], min(self.offsets[m + 1], pieces.shape[-1])
            if hi > lo:
                out[..., lo:hi] = self.num.slopes[m][pieces[..., lo:hi]]
        return out

    def pieces_at(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(piece, clear, varies)`` of every neuron at a batch ``x (B, n)``: the piece of the
        float64 pre-activation ``z^``; whether ``z^`` is off every breakpoint by more than a bound
        ``e_z`` of ``|z^ - z|``, ``z`` the exact pre-activation (which then lies strictly inside that
        piece); and whether ``z`` may vary near ``x`` (False: constant on a neighbourhood, as
        :meth:`varying` decides from the pieces found).

        Forward error analysis (Higham §2.2, §3.1), ``u = 2^-53``, ``gamma_k = k u / (1 - k u)``; an
        operation's result is correctly rounded or, below the least normal number ``T``, off by at
        most ``T`` (gradual or flushed underflow). With ``h^`` the float input of a layer ``W h + c``
        (fan-in ``k``) and ``|h^ - h| <= e_h`` (``e_h = 0`` for ``x``),
        ``|fl(W h^ + c) - (W h + c)| <= e_z = |W| e_h + gamma_{k+1} (|W| |h^| + |c|) + (2k+1) T``
        (its ``2k`` operations each lose at most ``T``, grown by at most ``(1+u)^k``). Since
        ``fl(|z^ - bp|)`` is monotone in ``|z^ - bp|`` and ``e_z`` is a float, ``fl(|z^ - bp|) > e_z``
        proves ``|z^ - bp| > e_z >= |z^ - z|``: ``z`` is strictly on ``z^``'s side of ``bp``.

        Here ``s`` is the activation of the float64 pieces as stored (``Numbers``): ``s(t) = a_k t +
        o_k`` with ``k`` the number of breakpoints below ``t`` (``np.searchsorted``), the function
        whose regions and Jacobians the exact methods analyse. Its pieces need not meet exactly: at
        ``bp_k`` it jumps by ``J_k = (a_{k+1} - a_k) bp_k + o_{k+1} - o_k`` (0 for ReLU, LeakyReLU,
        Hardtanh, ReLU6; ``2.8e-17`` for HardSigmoid: ``fl(1/6) 3 != 1/2``). So for
        ``t <= t'``, ``|s(t') - s(t)| <= L (t' - t) + J``, ``L`` the largest ``|a_k|`` and ``J = sum_k
        |J_k|`` (the jumps at the breakpoints in ``[t, t')``, at most all of them), computed exactly
        in rationals and rounded up (:func:`_jump_bound`). The activation ``h^' = fl(a z^ + o)``
        (slope and offset of ``z^``'s piece: ``a z^ + o = s(z^)`` by the definition of ``s``) has
        ``|h^' - s(z)| <= |h^' - s(z^)| + |s(z^) - s(z)| <= gamma_2 (|a z^| + |o|) + 3 T + slope e_z
        + jump``: for a clear neuron (``z`` and ``z^`` in one piece: ``s(z^) - s(z) = a (z^ - z)``)
        ``slope = |a|`` (0 for an off ReLU) and ``jump = 0``; otherwise ``slope = L`` and ``jump =
        J``. Each bound is evaluated in float64 and rounded up by :func:`_rounded_up`.
        """
        moving = np.ones_like(x, dtype=bool)
        out = [[np.zeros((len(x), 0), dtype=int)], [np.ones((len(x), 0), dtype=bool)],
               [np.ones((len(x), 0), dtype=bool)]]
        for m, (_, _, piece, clear) in enumerate(self.rounded_layers(x)):
            varies = moving.astype(np.float64) @ (self.w[m] != 0).T > 0
            for part, value in zip(out, (piece, clear, varies)):
                part.append(value)
            moving = varies & (self.num.slopes[m][piece] != 0)
        return tuple(np.concatenate(part, 1) for part in out)

    def rounded_layers(self, x: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per hidden layer, ``(z^, e_z, piece, clear)`` at a batch ``x (B, n)``: the float64
        pre-activations, the rigorous bound of ``|z^ - z|``, ``z^``'s pieces and which neurons are
        clear of every breakpoint (:meth:`pieces_at` gives the argument)."""
        h, e = x, np.zeros_like(x)
        for m in range(len(self.sizes)):
            w, b, bp = self.w[m], self.num.b[m], self.num.breakpoints[m]
            aw, k = np.abs(w), w.shape[1]
            z = h @ w.T + b
            # depth: a |W| |h^| term's product, k - 1 sums, + |c|, * gamma (and gamma's own rounding), + |W| e_h
            ez = _rounded_up(e @ aw.T + gamma(k + 1) * (np.abs(h) @ aw.T + np.abs(b)),
                             depth=k + 4, ops=4 * k + 1, tiny=2 * k + 1)
            piece = np.searchsorted(bp, z)
            clear = (np.abs(z[..., None] - bp) > ez[..., None]).all(-1)
            yield z, ez, piece, clear
            a, o = self.num.slopes[m][piece], self.num.offsets[m][piece]
            h = a * z + o
            slope = np.where(clear, np.abs(a), self.act_lips[m])
            jump = np.where(clear, 0.0, self.jumps[m])
            # depth: a z^, + |o|, * gamma (and gamma's own rounding), + (slope e_z + jump)
            e = _rounded_up(slope * ez + jump + gamma(2) * (np.abs(a * z) + np.abs(o)), depth=5, ops=6, tiny=3)

    def varying(self, pieces: np.ndarray) -> np.ndarray:
        """Whether each neuron up to the end of the layer of neuron ``len(pieces)`` may depend on
        ``x`` on the region of ``pieces``. False is exact: no path of non-zero weights and slopes
        reaches it from the input, so its pre-activation is a constant there (its row of ``A`` in
        :meth:`forms` is zero)."""
        moving, out = np.ones(self.dim, dtype=bool), []
        for m in range(len(self.sizes)):
            varies = (self.w[m] != 0).astype(np.float64) @ moving > 0
            out.append(varies)
            lo, hi = self.offsets[m], self.offsets[m + 1]
            if len(pieces) < hi:
                break
            moving = varies & (self.num.slopes[m][pieces[lo:hi]] != 0)
        return np.concatenate(out)

    def jacobians(self, d: np.ndarray) -> np.ndarray:
        """``W_K D_{K-1} ... D_0 W_0`` for each row of slopes ``d (B, n_neurons)``, ``(B, out, in)``:
        multiplied from the narrower end (from the output when it has fewer entries than the
        input), so no ``(B, n_m, in)`` intermediate is formed for a narrow output."""
        if not self.sizes:
            return np.broadcast_to(self.w[0], (len(d), *self.w[0].shape)).copy()
        if self._from_output:  # (B, out, n_m) from the output down
            j = self.w[-1]
            for m in reversed(range(len(self.sizes))):
                j = (j * d[:, None, self.offsets[m]:self.offsets[m + 1]]) @ self.w[m]
            return j
        j = self.w[0]
        for m in range(len(self.sizes)):
            j = self.w[m + 1] @ (d[:, self.offsets[m]:self.offsets[m + 1], None] * j)
        return j

    def jacobian_macs(self, batch: int) -> int:
        """Multiply-accumulates of :meth:`jacobians` on ``batch`` rows of slopes."""
        dims = [self.dim] + self.sizes + [self.w[-1].shape[0]]
        if self._from_output:  # out * n_m * n_{m-1} per layer
            return batch * dims[-1] * sum(a * b for a, b in zip(dims[1:-1], dims[:-2]))
        return batch * dims[0] * sum(a * b for a, b in zip(dims[1:-1], dims[2:]))

    @property
    def _from_output(self) -> bool:
        """Whether :meth:`jacobians` multiplies from the output (narrower than the input)."""
        return self.w[-1].shape[0] < self.dim

    def forms(self, pieces: np.ndarray, num: Numbers) -> tuple[np.ndarray, np.ndarray, list]:
        """``(A, c, scale)`` with ``z_j(x) = (A_j . x + c_j) / scale_j`` the pre-activation of each
        fixed neuron ``j`` on the region of ``pieces`` (the layers before ``j``'s are fully
        fixed), in ``num``'s arithmetic (``scale`` is a power of ``num.unit``: 1 in float64)."""
        forms_a, forms_c, scales = [], [], []
        for m in range(len(self.sizes)):
            k = min(len(pieces), self.offsets[m + 1]) - self.offsets[m]
            if k <= 0:
                break
            a, c, scale = self._layer_forms(m, pieces[:self.offsets[m]], num)
            forms_a.append(a[:k])
            forms_c.append(c[:k])
            scales += [scale] * k
        return np.concatenate(forms_a), np.concatenate(forms_c), scales

    def _layer_forms(self, m: int, prefix: np.ndarray, num: Numbers) -> tuple[np.ndarray, np.ndarray, object]:
        """:meth:`forms` of every neuron of hidden layer ``m`` on the region of ``prefix`` (the pieces
        of the layers before it), remembered per prefix: a search's nodes share their ancestors'
        layers, and the products of exact integers are the costly part (at most ``_FORMS_CACHED``
        kept; the cache is emptied when full)."""
        key = (num is self.num, prefix.tobytes())
        hit = self._forms_cache.get(key)
        if hit is not None:
            return hit
        w, b = num.w[m], num.b[m]
        if m == 0:
            out = (w, b, num.unit)
        else:
            lo = self.offsets[m - 1]
            a, c, scale = self._layer_forms(m - 1, prefix[:lo], num)
            d, o = num.slopes[m - 1][prefix[lo:]], num.offsets[m - 1][prefix[lo:]]
            a, c, scale = d[:, None] * a, d * c + o * scale, scale * num.unit
            out = (w @ a, w @ c + b * scale, scale * num.unit)
        if len(self._forms_cache) >= _FORMS_CACHED:
            self._forms_cache.clear()
        self._forms_cache[key] = out
        return out


class WitnessedNet(PiecewiseNet):
    """A :class:`PiecewiseNet` on a ``box`` (None: ``R^n``) that keeps the best witnessed lower bound
    seen: ``best`` (``||Df(x)||_2``), its point ``best_x`` and top right singular vector ``best_v``.
    A witness must also satisfy ``admits`` (a region inside the box, e.g. an L2 ball), when given."""

    def __init__(self, layers: list[DenseLayer], box: Box | None,
                 admits: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(layers)
        self.admits = admits
        self.lo = np.full(self.dim, -np.inf) if box is None else box.low.flatten().numpy()
        self.hi = np.full(self.dim, np.inf) if box is None else box.high.flatten().numpy()
        self.best = -math.inf
        self.best_x: np.ndarray | None = None
        self.best_v: np.ndarray | None = None

    def _accepted(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(keep, piece)`` for a batch ``x (B, n)``: which points are witnesses (in the closed box,
        admitted by the region, every pre-activation clear of every breakpoint or constant nearby:
        :meth:`pieces_at`), and their pieces. There ``f`` is affine on a neighbourhood, with the
        Jacobian of those pieces (a constant neuron's slope multiplies a zero row) (DESIGN §8)."""
        piece, clear, varies = self.pieces_at(x)
        keep = ((x >= self.lo) & (x <= self.hi)).all(-1) & (clear | ~varies).all(1)
        if self.admits is not None and keep.any():
            keep &= self.admits(x)
        return keep, piece

    def sample(self, x: np.ndarray) -> None:
        """Lower bound from the Jacobians at the witnesses among ``x (B, n)`` (:meth:`_accepted`)."""
        keep, piece = self._accepted(x)
        if not keep.any():
            return
        x = x[keep]
        _, s, vh = np.linalg.svd(self.jacobians(self.slopes(piece[keep])), full_matrices=False)
        i = int(np.argmax(s[:, 0]))
        if s[i, 0] > self.best:
            self.best, self.best_x, self.best_v = float(s[i, 0]), x[i].copy(), vh[i, 0].copy()


def _rounded_up(t: np.ndarray, depth: int, ops: int, tiny: int) -> np.ndarray:
    """A float64 upper bound of ``X + tiny T`` (``T = 2^-1022``), ``t`` the float64 evaluation of a
    non-negative expression ``X`` of float64 numbers by ``ops`` additions and multiplications,
    where every term of ``X`` multiplied out meets at most ``depth`` roundings (a ``gamma``
    computed in float64 counted as one) and every product is of two given floats or of a computed
    value by a factor at most 1: ``fl(fl(t + (tiny + 2 ops) T) (1 + 2 gamma_{depth+2}))``.

    Proof: every rounding of a non-negative value is ``(1 + d) v + eta``, ``d >= -u``,
    ``|eta| <= T``, and the factors applied after it are at most ``1 + u`` each, so ``t >= (1 -
    u)^depth X - L`` with ``L <= ops T (1 + u)^depth <= 2 ops T``. The sum ``t + (tiny + 2 ops) T``
    is at least ``T``, hence no underflow: its float is at least ``(1 - u)^(depth+1) (X + tiny
    T)``, and its product by ``F`` at least ``(1 - u)^(depth+2) F (X + tiny T)``. ``F =
    fl(1 + 2 fl(gamma_{depth+2})) >= 1 + 2 (1 - u) gamma_{depth+2} - u >= 1 + gamma_{depth+2} >=
    (1 - u)^-(depth+2)`` (``gamma_j >= 3 u``, ``(1 - u)^j >= 1 - j u``) closes the bound."""
    return (t + (tiny + 2 * ops) * TINY64) * (1 + 2 * gamma(depth + 2))


def _jump_bound(breakpoints: np.ndarray, slopes: np.ndarray, offsets: np.ndarray) -> float:
    """A float64 upper bound of ``sum_k |(a_{k+1} - a_k) bp_k + o_{k+1} - o_k|``, the pieces' total
    jump at their breakpoints: the sum in exact rationals, converted to the nearest float64 and
    moved up one ulp when that is below it."""
    total = sum((abs((Fraction(float(a1)) - Fraction(float(a0))) * Fraction(float(bp))
                     + Fraction(float(o1)) - Fraction(float(o0)))
                 for bp, a0, a1, o0, o1 in zip(breakpoints, slopes[:-1], slopes[1:], offsets[:-1], offsets[1:])),
                Fraction(0))
    up = float(total)
    return up if Fraction(up) >= total else math.nextafter(up, math.inf)


def spectral(m: np.ndarray) -> float:
    """``||M||_2`` by a float64 SVD (LAPACK, accurate to a few ulps)."""
    return float(np.linalg.svd(m, compute_uv=False)[0]) if m.size else 0.0
