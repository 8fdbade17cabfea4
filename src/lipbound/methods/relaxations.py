"""Linear relaxations of an element-wise activation on per-neuron input intervals, for CROWN
(:mod:`.propagation`): slopes and offsets ``(a_L, b_L, a_U, b_U)`` with

    ``a_L z + b_L <= s(z) <= a_U z + b_U``   for every real ``z`` in ``[l, u]``,

for the exact activation ``s``, per neuron.

* **Piecewise linear** (ReLU, LeakyReLU, Hardtanh, ...): for any slope ``a``, ``s(z) - a z`` is
  piecewise linear with its kinks at the breakpoints, so its min and max over ``[l, u]`` are
  taken at ``l``, ``u`` or a breakpoint inside: the tightest valid offsets are
  ``b_L = min_p (s(p) - a p)`` and ``b_U = max_p (s(p) - a p)`` over those points ``p``. The
  slope of each line is chosen among the smallest and largest slope of the pieces met and the
  chord ``(s(u) - s(l)) / (u - l)``, as the one whose band ``|s(z) - line(z)|`` has the least area
  on ``[l, u]`` (the trapezoid rule over the points ``p`` is exact for piecewise-linear gaps).
  For ReLU this is the triangle's upper chord ``u / (u - l) (z - l)`` and the usual CROWN lower
  line (slope 1 when ``u > -l``, else 0); a stable neuron gets its exact piece for both lines.
* **Any other** activation, from the slope interval ``[lo, hi]`` of ``s`` on ``[l, u]``
  (``facts.slopes_on``, which holds every secant slope there): ``s(z) >= s(l) + lo (z - l)`` and
  ``s(z) >= s(u) + hi (z - u)``; ``s(z) <= s(l) + hi (z - l)`` and ``s(z) <= s(u) + lo (z - u)``.
  Each side takes the line that is tighter at the midpoint.

**Rounding.** Slopes are any float64 numbers; only the offsets must be rigorous. ``s(p)`` carries
the error bound of :func:`.rounding._activation_rounding`; ``s(p) - a p`` is widened by
``gamma_4 (|s(p)| + |a p|) + 2^-1022`` on the safe side.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..graph.ir import Activation
from .rounding import _TINY, _activation_rounding, _gamma


class Relaxation(NamedTuple):
    """``a_L z + b_L <= s(z) <= a_U z + b_U`` on ``[l, u]``, per neuron (module doc)."""

    a_low: torch.Tensor
    b_low: torch.Tensor
    a_up: torch.Tensor
    b_up: torch.Tensor


def _offsets(a: torch.Tensor, p: torch.Tensor, s: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous lower and upper ends of ``s(p) - a p`` (``s`` within ``e`` of the exact values)."""
    d = s - a * p
    pad = e + _gamma(4) * (s.abs() + (a * p).abs()) + _TINY
    return d - pad, d + pad


def _area(p: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Trapezoid rule of ``gap`` over the sorted points ``p`` (first axis)."""
    return ((p[1:] - p[:-1]) * (gap[1:] + gap[:-1]) / 2).sum(0)


def _pwl(node: Activation, l: torch.Tensor, u: torch.Tensor, slopes: tuple[torch.Tensor, torch.Tensor]) -> Relaxation:
    """The relaxation of a piecewise-linear activation (module doc)."""
    points = [l] + [torch.clamp(torch.full_like(l, b), l, u) for b in node.pieces.breakpoints] + [u]
    p = torch.stack(points)  # sorted along the first axis: the breakpoints are sorted, clamping keeps order
    s = node.pieces(p)
    e = _activation_rounding(node, p, s)
    width = u - l
    chord = torch.where(width > 0, (s[-1] - s[0]) / torch.where(width > 0, width, 1.0), slopes[0])
    best: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for a in (slopes[0], slopes[1], chord):
        d_low, d_up = _offsets(a, p, s, e)
        b_low, b_up = d_low.amin(0), d_up.amax(0)
        exact = s - a * p
        for side, b, gap in (("low", b_low, exact - b_low), ("up", b_up, b_up - exact)):
            area = _area(p, gap)
            if side not in best:
                best[side] = (area, a, b)
                continue
            keep = area < best[side][0]
            best[side] = tuple(torch.where(keep, new, old) for new, old in zip((area, a, b), best[side]))
    return Relaxation(best["low"][1], best["low"][2], best["up"][1], best["up"][2])


def _smooth(node: Activation, l: torch.Tensor, u: torch.Tensor, slopes: tuple[torch.Tensor, torch.Tensor]) -> Relaxation:
    """The relaxation of an activation from its slope interval on ``[l, u]`` (module doc)."""
    lo, hi = slopes
    sl, su = node.evaluate(l), node.evaluate(u)
    el, eu = _activation_rounding(node, l, sl), _activation_rounding(node, u, su)
    low_l, _ = _offsets(lo, l, sl, el)  # s(l) + lo (z - l)
    low_u, _ = _offsets(hi, u, su, eu)  # s(u) + hi (z - u)
    _, up_l = _offsets(hi, l, sl, el)  # s(l) + hi (z - l)
    _, up_u = _offsets(lo, u, su, eu)  # s(u) + lo (z - u)
    m = (l + u) / 2
    use_l = lo * m + low_l >= hi * m + low_u
    use_up_l = hi * m + up_l <= lo * m + up_u
    return Relaxation(torch.where(use_l, lo, hi), torch.where(use_l, low_l, low_u),
                      torch.where(use_up_l, hi, lo), torch.where(use_up_l, up_l, up_u))


def relax(node: Activation, l: torch.Tensor, u: torch.Tensor, slopes: tuple[torch.Tensor, torch.Tensor]) -> Relaxation:
    """Lines below and above ``node``'s activation on ``[l, u]`` (float64, the node's shape), valid
    for the exact function (module doc); ``slopes`` is ``facts.slopes_on(l, u)``."""
    if node.pieces is not None:
        return _pwl(node, l, u, slopes)
    return _smooth(node, l, u, slopes)
