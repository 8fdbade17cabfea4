"""Linear relaxations of an element-wise activation ``s`` on per-neuron input intervals, for IBP
and CROWN (:mod:`.propagation`): slopes and offsets ``(a_L, b_L, a_U, b_U)`` with

    ``a_L z + b_L <= s(z) <= a_U z + b_U``   for every real ``z`` in ``[l, u]``,

for the exact activation, per neuron. For a given slope ``a`` the offsets are (bounds of) the
``min`` and ``max`` of ``s(z) - a z`` over ``[l, u]``; with ``a = 0`` they are the range of ``s``
(:func:`value_range`, IBP's rule).

* **Piecewise linear** (ReLU, LeakyReLU, Hardtanh, ...): ``s(z) - a z`` is piecewise linear with
  its kinks at the breakpoints, so its extremes over ``[l, u]`` are at ``l``, ``u`` or a breakpoint
  inside: the offsets are exact. The slope of each line is chosen among the smallest and largest
  slope of the pieces met and the chord ``(s(u) - s(l)) / (u - l)``, as the one whose band
  ``|s(z) - line(z)|`` has the least area on ``[l, u]`` (the trapezoid rule over those points is
  exact). For ReLU this is the triangle's upper chord ``u / (u - l) (z - l)`` and the usual CROWN
  lower line (slope 1 when ``u > -l``, else 0); a stable neuron gets its exact piece.
* **Any other** activation, from slope intervals: ``[l, u]`` is cut into :data:`PIECES` equal
  pieces ``[p, q]``, each with the interval ``[lo', hi']`` of ``s'`` on it (``facts.slopes_on``, which
  holds every secant slope there). On a piece, ``s(p) + lo' (z - p) <= s(z) <= s(p) + hi' (z - p)``
  and ``s(q) + hi' (z - q) <= s(z) <= s(q) + lo' (z - q)``; for any ``t`` in ``[0, 1]`` the mix
  ``t (first) + (1 - t) (second)`` of the two lower lines is below ``s`` (a max is above any
  average), and of the two upper lines above it. So ``s(z) - a z`` is bounded on the piece by a
  linear function, whose extremes are at ``p`` and ``q``; the offsets are the min and max over the
  pieces. ``t`` only matters for tightness: it is chosen so that the mix has slope ``a`` (clamped
  to ``[0, 1]``). The candidate slopes are the smallest and largest slope on ``[l, u]``, the chord
  and each piece's middle slope; each side takes the line that is tighter at the midpoint
  ``(l + u) / 2`` (the larger average over ``[l, u]`` for a lower line, the smaller for an upper
  one). On a convex or concave stretch this approaches the tangent and the chord, as CROWN's
  sigmoid rules do.

**Rounding.** Slopes and cut points are any float64 numbers (the cut points are sorted and cover
``[l, u]``); only the offsets must be rigorous. ``s(p)`` carries the error bound of
:func:`.float_error.activation_rounding`; an offset computed by ``m`` operations on terms whose
absolute values sum to ``M`` is widened by ``gamma_{m+4} M + 2^-1022`` on the safe side.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..graph.ir import Activation
from .float_error import TINY, activation_rounding, gamma

__all__ = ["Relaxation", "relax", "value_range", "slopes_on", "PIECES"]

PIECES = 4  # equal pieces of [l, u] on which the slopes of a smooth activation are enclosed


class Relaxation(NamedTuple):
    """``a_L z + b_L <= s(z) <= a_U z + b_U`` on ``[l, u]``, per neuron (module doc)."""

    a_low: torch.Tensor
    b_low: torch.Tensor
    a_up: torch.Tensor
    b_up: torch.Tensor


def slopes_on(node: Activation, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``facts.slopes_on(l, u)`` on ``l``'s device (its first call locates ``s''``'s sign changes
    by autograd, hence the enabled grad)."""
    with torch.enable_grad():
        lo, hi = node.facts.slopes_on(l.cpu(), u.cpu())
    return lo.to(l.device), hi.to(l.device)


class _Pieces(NamedTuple):
    """Cut points ``p`` (``PIECES + 1`` on the first axis, ``p[0] = l``, ``p[-1] = u``), ``s`` there
    and its error bound, and the slope interval on each piece (``PIECES`` on the first axis)."""

    p: torch.Tensor
    s: torch.Tensor
    e: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def _pieces(node: Activation, l: torch.Tensor, u: torch.Tensor) -> _Pieces:
    frac = torch.linspace(0, 1, PIECES + 1, dtype=l.dtype, device=l.device).reshape(-1, *[1] * l.dim())
    p = torch.clamp(l + (u - l) * frac, l, u)
    p[0], p[-1] = l, u
    p = torch.cummax(p, dim=0).values
    s = node.evaluate(p)
    lo, hi = slopes_on(node, p[:-1], p[1:])
    return _Pieces(p, s, activation_rounding(node, p, s), lo, hi)


def _smooth_offsets(pc: _Pieces, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous ``(b_L, b_U)`` for the slope ``a`` from the pieces (module doc)."""
    p, q = pc.p[:-1], pc.p[1:]
    sp, sq, ep, eq = pc.s[:-1], pc.s[1:], pc.e[:-1], pc.e[1:]
    span = torch.where(pc.hi > pc.lo, pc.hi - pc.lo, 1.0)
    t_up = torch.clamp((a - pc.lo) / span, 0, 1)  # slope of the mix: t hi + (1 - t) lo
    t_low = torch.clamp((pc.hi - a) / span, 0, 1)  # t lo + (1 - t) hi
    lows, ups = [], []
    for z in (p, q):
        mag = sp.abs() + sq.abs() + ep + eq + (pc.lo.abs() + pc.hi.abs()) * (z.abs() + p.abs() + q.abs()) + (a * z).abs()
        pad = gamma(12) * mag + TINY
        ups.append(t_up * (sp + ep + pc.hi * (z - p)) + (1 - t_up) * (sq + eq + pc.lo * (z - q)) - a * z + pad)
        lows.append(t_low * (sp - ep + pc.lo * (z - p)) + (1 - t_low) * (sq - eq + pc.hi * (z - q)) - a * z - pad)
    return torch.minimum(*lows).amin(0), torch.maximum(*ups).amax(0)


def _pwl_points(node: Activation, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``l``, the breakpoints clamped into ``[l, u]`` and ``u`` (sorted on the first axis), ``s``
    there from the exact pieces and its error bound."""
    p = torch.stack([l] + [torch.clamp(torch.full_like(l, b), l, u) for b in node.pieces.breakpoints] + [u])
    s = node.pieces(p)
    return p, s, activation_rounding(node, p, s)


def _pwl_offsets(a: torch.Tensor, p: torch.Tensor, s: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous ``(min, max)`` over the points of ``s(p) - a p``."""
    d = s - a * p
    pad = e + gamma(4) * (s.abs() + (a * p).abs()) + TINY
    return (d - pad).amin(0), (d + pad).amax(0)


def _area(p: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Trapezoid rule of ``gap`` over the sorted points ``p`` (first axis)."""
    return ((p[1:] - p[:-1]) * (gap[1:] + gap[:-1]) / 2).sum(0)


def _pick(better: torch.Tensor | bool, new: tuple[torch.Tensor, ...], old: tuple[torch.Tensor, ...] | None) -> tuple:
    """``new`` where ``better`` (all of it when there is no ``old``), else ``old``, per neuron."""
    return new if old is None else tuple(torch.where(better, n, o) for n, o in zip(new, old))


def relax(node: Activation, l: torch.Tensor, u: torch.Tensor) -> Relaxation:
    """Lines below and above ``node``'s activation on ``[l, u]`` (float64, the node's shape), valid
    for the exact function (module doc)."""
    width = u - l
    safe = torch.where(width > 0, width, 1.0)
    low = up = None  # (score, slope, offset) of the best line so far, per neuron
    if node.pieces is not None:
        p, s, e = _pwl_points(node, l, u)
        lo, hi = slopes_on(node, l, u)
        chord = torch.where(width > 0, (s[-1] - s[0]) / safe, lo)
        for a in (lo, hi, chord):
            b_low, b_up = _pwl_offsets(a, p, s, e)
            exact = s - a * p
            area_low, area_up = _area(p, exact - b_low), _area(p, b_up - exact)
            low = _pick(low is not None and area_low < low[0], (area_low, a, b_low), low)
            up = _pick(up is not None and area_up < up[0], (area_up, a, b_up), up)
    else:
        pc = _pieces(node, l, u)
        chord = torch.where(width > 0, (pc.s[-1] - pc.s[0]) / safe, pc.lo[0])
        mid = (l + u) / 2
        for a in (pc.lo.amin(0), pc.hi.amax(0), chord, *((pc.lo + pc.hi) / 2)):
            b_low, b_up = _smooth_offsets(pc, a)
            at_low, at_up = a * mid + b_low, a * mid + b_up
            low = _pick(low is not None and at_low > low[0], (at_low, a, b_low), low)
            up = _pick(up is not None and at_up < up[0], (at_up, a, b_up), up)
    return Relaxation(low[1], low[2], up[1], up[2])


def value_range(node: Activation, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous ``(min, max)`` of the exact activation over ``[l, u]``, per neuron: the offsets of
    the slope 0 (module doc; exact up to rounding for piecewise-linear activations)."""
    zero = torch.zeros_like(l)
    if node.pieces is not None:
        return _pwl_offsets(zero, *_pwl_points(node, l, u))
    return _smooth_offsets(_pieces(node, l, u), zero)
