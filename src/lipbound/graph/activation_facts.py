"""Facts of an element-wise activation and the rules read from them (the registry in
:mod:`lipbound.graph.activations` builds them from each activation's definition): the exact pieces
of a piecewise-linear one, the slope rule on an interval, the smoothed form for ``lower``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

Slope = tuple[float, float]
Fn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["Slope", "Fn", "PiecewiseLinear", "ActivationFacts", "smoothed", "SLOPE_PAD"]

SLOPE_PAD = 1e-9  # outward rounding of a slope range on an interval (see ActivationFacts.slopes_on)
_SCAN = (-50.0, 50.0, 20_001)  # where critical points of s' are searched (ActivationFacts.critical_points)
_CLAMP = 1e6  # s' is evaluated at inputs clamped to [-_CLAMP, _CLAMP]: beyond, it is flat within SLOPE_PAD


@dataclass(frozen=True)
class PiecewiseLinear:
    """``s(t) = slopes[k] t + offsets[k]`` on the ``k``-th piece, the pieces separated by the
    sorted ``breakpoints`` (``len(slopes) == len(offsets) == len(breakpoints) + 1``). The activation
    it stands for is continuous; these float pieces may miss each other at a breakpoint by a rounding
    (HardSigmoid's ``fl(1/6) 3 + 1/2 != 1``: 2.8e-17), which
    :meth:`~lipbound.methods.exact_network.PiecewiseNet.pieces_at` bounds."""

    breakpoints: tuple[float, ...]
    slopes: tuple[float, ...]
    offsets: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.breakpoints)
        if len(self.slopes) != n + 1 or len(self.offsets) != n + 1 or list(self.breakpoints) != sorted(self.breakpoints):
            raise ValueError(f"inconsistent pieces {self}")

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """``s(t)`` from the pieces (an evaluation path independent of the activation's code)."""
        piece = torch.bucketize(t, torch.tensor(self.breakpoints, dtype=t.dtype, device=t.device))
        slopes = torch.tensor(self.slopes, dtype=t.dtype, device=t.device)
        offsets = torch.tensor(self.offsets, dtype=t.dtype, device=t.device)
        return slopes[piece] * t + offsets[piece]

    @property
    def two_slope(self) -> Slope | None:
        """``(a, b)`` when ``s(t) = b t`` for ``t >= 0`` and ``a t`` for ``t < 0`` (ReLU, LeakyReLU,
        a PReLU with one weight), else None."""
        if self.breakpoints == (0.0,) and self.offsets == (0.0, 0.0):
            return self.slopes[0], self.slopes[1]
        return None

    def slopes_on(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``[min, max]`` of the slopes of the pieces that ``s`` restricted to ``[l, u]`` uses:
        piece ``k``, the interval ``(bp[k-1], bp[k])``, counts when it meets ``(l, u)``; for
        ``l == u`` every piece whose closure holds ``l`` counts (the one-sided limits at a kink)."""
        lo = torch.full_like(l, math.inf)
        hi = torch.full_like(l, -math.inf)
        ends = (-math.inf, *self.breakpoints, math.inf)
        for k, slope in enumerate(self.slopes):
            a, b = ends[k], ends[k + 1]
            used = ((a < u) & (b > l)) | ((l == u) & (a <= l) & (l <= b))
            lo = torch.where(used, torch.clamp(lo, max=slope), lo)
            hi = torch.where(used, torch.clamp(hi, min=slope), hi)
        return lo, hi

    def smoothed(self, tau: float) -> Fn:
        """A smooth function within ``tau`` of ``s``: written ``c0 + a0 t + sum_k d_k relu(t - bp_k)``
        (``d_k`` the slope's jump at ``bp_k``), each ``relu(z)`` replaced by ``h softplus(z / h)``,
        which lies in ``[relu(z), relu(z) + h log 2]``; ``h = tau / (log 2 sum_k |d_k|)``."""
        jumps = [self.slopes[k + 1] - self.slopes[k] for k in range(len(self.breakpoints))]
        total = sum(abs(d) for d in jumps)
        a0, c0 = self.slopes[0], self.offsets[0]
        h = tau / (math.log(2.0) * total) if total else 1.0
        bps = self.breakpoints

        def fn(t: torch.Tensor) -> torch.Tensor:
            out = c0 + a0 * t
            for d, bp in zip(jumps, bps):
                if d:
                    out = out + d * h * torch.logaddexp((t - bp) / h, torch.zeros_like(t))
            return out
        return fn


def _critical_points(derivative: Fn) -> tuple[float, ...]:
    """The points in ``_SCAN`` where ``s''`` (autograd of ``derivative``, float64) changes sign:
    located on a grid of step 5e-3, then bisected until the bracket is two adjacent floats, whose
    midpoint is returned. Outside the scan, and between two grid points, the activations of the
    registry have no further sign change (their ``s'`` is monotone in each tail)."""
    t = torch.linspace(*_SCAN, dtype=torch.float64, requires_grad=True)
    (d2,) = torch.autograd.grad(derivative(t).sum(), t)
    t = t.detach()
    change = (torch.sign(d2[:-1]) * torch.sign(d2[1:]) < 0).nonzero().flatten().tolist()

    def second(x: float) -> float:
        x_ = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(derivative(x_), x_)
        return float(g)
    points = []
    for i in change:
        a, b = float(t[i]), float(t[i + 1])
        sa = math.copysign(1.0, second(a))
        while True:
            m = 0.5 * (a + b)
            if m in (a, b):
                break
            if math.copysign(1.0, second(m)) == sa:
                a = m
            else:
                b = m
        points.append(0.5 * (a + b))
    return tuple(points)


@dataclass(frozen=True)
class ActivationFacts:
    """What lipbound knows of one element-wise activation (module doc)."""

    slope: Slope
    kinks: tuple[float, ...] = ()
    pieces: PiecewiseLinear | None = None
    derivative: Fn | None = field(default=None, compare=False, repr=False)

    @property
    def lipschitz(self) -> float:
        """``max(|a|, |b|)`` of the slope range."""
        return max(abs(self.slope[0]), abs(self.slope[1]))

    @cached_property
    def critical_points(self) -> tuple[float, ...]:
        """Points where ``s''`` changes sign (local extrema of ``s'`` off the kinks)."""
        return _critical_points(self.derivative) if self.derivative is not None else ()

    def slopes_on(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The slope rule on an interval: per element, ``[min, max]`` of ``s'`` over ``[l, u]``
        (``l <= u``, per-neuron pre-activation bounds), a sound enclosure.

        Piecewise linear: exact, from the pieces (:meth:`PiecewiseLinear.slopes_on`). Otherwise
        ``s'`` (``derivative``, float64) is evaluated at the candidates of its extrema: just inside
        the ends (``nextafter(l, +inf)``, ``nextafter(u, -inf)``: the one-sided limits when an end
        is a kink) and on both sides of every kink and critical point strictly inside ``(l, u)``;
        ``l == u`` takes both sides. The result is widened by ``SLOPE_PAD (1 + |value|)``, which
        covers float64 evaluation and the critical points' bracket of two adjacent floats (the
        error there is second order), then intersected with the global ``slope``, itself sound.
        Without a derivative (PReLU with several weights) the global range is returned."""
        if bool((l > u).any()):
            raise ValueError("slopes_on needs l <= u")
        if self.pieces is not None:
            return self.pieces.slopes_on(l, u)
        a, b = self.slope
        if self.derivative is None:
            return torch.full_like(l, a), torch.full_like(u, b)
        l64, u64 = l.to(torch.float64), u.to(torch.float64)
        inf = torch.tensor(math.inf, dtype=torch.float64, device=l.device)
        lp, um = torch.nextafter(l64, inf), torch.nextafter(u64, -inf)
        points = [torch.where(l64 == u64, um, lp), torch.where(l64 == u64, lp, um)]
        for p in (*self.kinks, *self.critical_points):
            p_ = torch.full_like(l64, p)
            inside = (l64 < p_) & (p_ < u64)
            for q in (torch.nextafter(p_, -inf), torch.nextafter(p_, inf)):
                points.append(torch.where(inside, q, points[0]))
        values = torch.stack([self.derivative(q.clamp(-_CLAMP, _CLAMP)) for q in points])
        lo, hi = values.amin(0), values.amax(0)
        lo = torch.clamp(lo - SLOPE_PAD * (1 + lo.abs()), min=a)
        hi = torch.clamp(hi + SLOPE_PAD * (1 + hi.abs()), max=b)
        return lo.to(l.dtype), hi.to(u.dtype)


def smoothed(facts: ActivationFacts, fn: Fn, tau: float) -> Fn:
    """A smooth function within ``tau`` (sup norm) of the activation ``fn`` with ``facts``:
    piecewise linear ones by :meth:`PiecewiseLinear.smoothed`; ``fn`` itself when it has no kink
    (then it is already continuously differentiable). For ``lower``; not yet used."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if facts.pieces is not None:
        return facts.pieces.smoothed(tau)
    if not facts.kinks:
        return fn
    raise ValueError(f"no smoothed form for an activation with kinks {facts.kinks} and no pieces")
