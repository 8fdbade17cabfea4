"""Witnesses checked against rounding (DESIGN §8): rigorous values of pair and Jacobian witnesses
of a graph evaluated in float64, the entry point of the witness checks.

Three layers, one module each:

* :mod:`lipbound.methods.float_error` — the rounding model's primitives (``u``, ``gamma_k``, the
  error of an affine map, of an activation, upward rounding);
* :mod:`lipbound.methods.enclosure` — :func:`enclose`: the float64 value of every node with a
  rigorous element-wise (and, on deep nets, norm-wise) bound of its rounding error;
* :mod:`lipbound.methods.witness_region` — :func:`region_check`: where a Jacobian witness is
  valid (in a linear region, off every kink by more than the rounding error);

and here the values of witnesses: :func:`pair_bounds` brackets ``||f(x) - f(y)|| / ||x - y||``
and :func:`jacobian_witness_values` gives the rigorous lower end of ``||Df(x) v|| / ||v||`` where
the region check passes and a central difference agrees. :class:`Enclosure`, :func:`enclose`,
:class:`RegionCheck` and :func:`region_check` stay importable from here.

**Exact fallback.** Past about 30 layers even the norm-wise bound outgrows the values. Where a
witness fails and some node's error bound passes ``1e-6`` of its values (:data:`_WIDE`), or a pair's
interval is that wide, :func:`pair_bounds` and :func:`jacobian_witness_values` re-check it in exact
dyadic arithmetic (:mod:`~lipbound.methods.rounding_exact`: piecewise-linear graphs, ties declined,
capped work); a witness it declines keeps its float64 verdict, with the exact reason appended.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ..graph.ir import Graph
from .enclosure import Enclosure, enclose
from .float_error import UNIT_ROUNDOFF, gamma, round_up
from .region import Region
from .rounding_exact import exact_jacobian_values, exact_pair_bounds
from .witness_region import RegionCheck, region_check, step_along

__all__ = ["Enclosure", "enclose", "exact_fallback", "RegionCheck", "region_check", "pair_bounds", "jacobian_witness_values"]

_RTOL = 1e-6  # agreement required between the tangent and the central difference
_H_REL = 1e-6  # central difference step, relative to max(1, ||x||), at most
_WIDE = 1e-6  # relative width of a float64 enclosure past which a witness is re-checked exactly
_EXACT_FALLBACK: ContextVar[bool] = ContextVar("exact_fallback", default=True)


@contextmanager
def exact_fallback(enabled: bool) -> Iterator[None]:
    """Within the block, witnesses whose float64 enclosure is wider than :data:`_WIDE` are re-checked
    exactly (``enabled``, the default everywhere else) or declined (``False``: their value is NaN).
    Declining never makes a value wrong, only missing; benchmarks use it to time the exact step."""
    token = _EXACT_FALLBACK.set(enabled)
    try:
        yield
    finally:
        _EXACT_FALLBACK.reset(token)


def pair_bounds(graph: Graph, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous ``(low, high)`` per pair of the batches ``x, y`` with
    ``low <= ||f(x) - f(y)|| / ||x - y|| <= high`` for the exact ``f`` (:func:`enclose`):
    with ``d = fl(f~(x) - f~(y))`` and ``E = e(x) + e(y) + 2 u |d|``,
    ``||f(x) - f(y)|| in ||d|| -+ ||E||``, and ``||x - y|| = ||fl(x - y)|| (1 +- 2u)``, each norm
    rounded outwards. ``low`` is clamped at 0; both are NaN where ``x == y``. Where that interval
    is wider than :data:`_WIDE` of ``high`` (deep nets), the pair is evaluated exactly instead
    (:func:`~lipbound.methods.rounding_exact.exact_pair_bounds`, piecewise-linear graphs, capped)."""
    low, high = _float_pair_bounds(graph, x, y)
    wide = ~(high - low <= _WIDE * high) & _EXACT_FALLBACK.get() & (x != y).flatten(1).any(dim=1) & _finite(x) & _finite(y)
    if wide.any():
        e_low, e_high, _ = exact_pair_bounds(graph, x[wide], y[wide])
        done = torch.isfinite(e_low)
        low[wide], high[wide] = torch.where(done, e_low, low[wide]), torch.where(done, e_high, high[wide])
    return low, high


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x).flatten(1).all(dim=1)


def _float_pair_bounds(graph: Graph, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_bounds` from the float64 enclosure alone."""
    n = x.shape[0]
    enc = enclose(graph, torch.cat([x, y]))
    out, err = enc.values[graph.output].flatten(1), enc.errors[graph.output].flatten(1)
    d = out[:n] - out[n:]
    m = d.shape[1]
    spread = round_up(err[:n] + err[n:] + 2 * UNIT_ROUNDOFF * d.abs(), 3).norm(dim=1)
    slack = round_up(spread, m)
    nd = d.norm(dim=1)
    g = 2 * gamma(m + 4)
    num_low, num_high = nd * (1 - g) - slack, nd * (1 + g) + slack
    dx = (x - y).flatten(1)
    nx = dx.norm(dim=1)
    gx = 2 * gamma(dx.shape[1] + 4) + 2 * UNIT_ROUNDOFF
    den_low, den_high = nx * (1 - gx), nx * (1 + gx)
    low = num_low.clamp_min(0) / den_high * (1 - 2 * UNIT_ROUNDOFF)
    high = num_high / den_low * (1 + 2 * UNIT_ROUNDOFF)
    same = ~(den_low > 0)
    return low.masked_fill(same, math.nan), high.masked_fill(same, math.nan)


def jacobian_witness_values(graph: Graph, x: torch.Tensor, v: torch.Tensor,
                            box: Region | None = None) -> tuple[torch.Tensor, list[str | None]]:
    """Values of the Jacobian witnesses ``(x_b, v_b)`` (module doc) and the reason of each failure:
    where :func:`region_check` passes, the rigorous lower end of ``||Df(x) v|| / ||v||`` from the
    forward tangent of :func:`enclose`, once the central difference pair ``(x - h v, x + h v)``
    (rigorous interval of :func:`pair_bounds`) agrees with that tangent's interval to a relative
    ``1e-6``; NaN elsewhere. ``graph`` must be float64 on the CPU."""
    enc = enclose(graph, x, v)
    check = region_check(graph, x, box, enc)
    reasons = list(check.reasons)
    t, e = enc.tangents[graph.output].flatten(1), enc.tangent_errors[graph.output].flatten(1)
    g = 2 * gamma(t.shape[1] + 4)
    spread = round_up(e, t.shape[1]).norm(dim=1) * (1 + g)
    nv = v.flatten(1).norm(dim=1)
    gv = 2 * gamma(v[0].numel() + 4)
    nv_low, nv_high = nv * (1 - gv), nv * (1 + gv)
    low = ((t.norm(dim=1) * (1 - g) - spread).clamp_min(0) / nv_high) * (1 - 2 * UNIT_ROUNDOFF)
    high = ((t.norm(dim=1) * (1 + g) + spread) / nv_low) * (1 + 2 * UNIT_ROUNDOFF)
    scale = x.flatten(1).norm(dim=1).clamp_min(1.0)
    h = torch.minimum(0.5 * step_along(graph, enc, check.room), _H_REL * scale / nv)
    h = torch.nan_to_num(h, nan=0.0, posinf=0.0).reshape(-1, *([1] * (x.dim() - 1)))
    q_low, q_high = _float_pair_bounds(graph, x - h * v, x + h * v)
    agree = (q_low <= high * (1 + _RTOL)) & (low <= q_high * (1 + _RTOL))
    ok = check.valid & agree & torch.isfinite(low) & torch.isfinite(high) & (nv > 0)
    for b in range(len(reasons)):
        if reasons[b] is None and not bool(ok[b]):
            reasons[b] = "v is zero or not finite" if not nv[b] > 0 else (
                f"its directional derivative, in [{float(low[b]):.17g}, {float(high[b]):.17g}], disagrees "
                f"with the central difference, in [{float(q_low[b]):.17g}, {float(q_high[b]):.17g}]")
    low = low.masked_fill(~ok, math.nan)
    # too wide to confirm: the exact re-check (rounding_exact), where x, v are fine and in the box
    wide = ~ok & _wide(enc) & _EXACT_FALLBACK.get() & _finite(x) & _finite(v) & (nv > 0) & (box.contains(x) if box is not None else True)
    if wide.any():
        at = torch.nonzero(wide).flatten().tolist()
        e_low, e_reasons = exact_jacobian_values(graph, x[wide], v[wide], box)
        for i, b in enumerate(at):
            low[b] = e_low[i]
            reasons[b] = None if e_reasons[i] is None else f"{reasons[b]}; exact re-check: {e_reasons[i]}"
    return low, reasons


def _wide(enc: Enclosure) -> torch.Tensor:
    """Per batch element, whether some node's error bound passes :data:`_WIDE` of its values' norm."""
    out = torch.zeros(next(iter(enc.values.values())).shape[0], dtype=torch.bool)
    for name, value in enc.values.items():
        out |= ~(enc.errors[name].flatten(1).norm(dim=1) <= _WIDE * value.flatten(1).norm(dim=1))
    return out
