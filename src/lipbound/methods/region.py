"""Input regions on which a method bounds the Lipschitz constant (DESIGN §7).

A region ``X`` gives the local constant ``L_X(f) = sup over x != y in X of ||f(x) - f(y)|| / ||x - y||``
(L2 on input and output). The regions:

* ``None``: all of ``R^n`` (the global constant);
* :class:`Box` ``{low <= x <= high}`` (element-wise);
* :class:`Ball` ``{||x - center|| <= radius}`` for the L2 or the L-infinity norm;
* :class:`BoxUnion`: a union of boxes (a VNN-LIB ``or``). It is **not convex**: a bound over its parts
  only holds for pairs inside one part, so methods never get one; :func:`lipbound.estimate` runs each
  part and bounds pairs across parts from the parts' bounds, or on a hull (:meth:`BoxUnion.hull`, the
  smallest box containing some parts) where parts touch (:mod:`.union_bound`).

Every region has ``low``/``high`` (its bounding box, float64 CPU tensors of the input shape),
``center``, ``contains(x)``, ``project(x)``, ``sample(n, generator)``, ``describe()`` and
``to_dict()``. ``contains`` is rigorous: a point counts only when it lies in the region for exact
real arithmetic on its float64 coordinates (points within a rounding error of the boundary may be
refused), so a witness accepted by it is inside the region. ``project`` returns points that
``contains`` accepts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import InvalidInput, NotApplicable
from ..linalg.float_units import ETA64, U64

__all__ = ["Box", "Ball", "BoxUnion", "Region", "as_region", "as_box", "along_region", "register_region_reader"]


def _rows(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return like.to(x).reshape(1, *like.shape)


@dataclass
class Box:
    """The box ``{x : low <= x <= high}`` (element-wise, tensors of the input shape, float64)."""

    low: torch.Tensor
    high: torch.Tensor

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest point of the box (Euclidean), for a batch ``(B, *shape)``."""
        return torch.maximum(torch.minimum(x, self.high.to(x)), self.low.to(x))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` points uniform in the box, float64."""
        u = torch.rand((n, *self.low.shape), generator=generator, dtype=torch.float64)
        return self.project(self.low + u * (self.high - self.low))

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """For a batch ``(B, *shape)``: which points lie in the closed box, ``(B,)`` booleans (exact:
        comparisons of floats round nothing)."""
        return ((x >= self.low.to(x)) & (x <= self.high.to(x))).flatten(1).all(dim=1)

    @property
    def center(self) -> torch.Tensor:
        return (self.low + self.high) / 2

    def describe(self) -> str:
        lo, hi = self.low.min().item(), self.high.max().item()
        same = bool((self.low == lo).all() and (self.high == hi).all())
        return f"box [{lo:g}, {hi:g}]^n" if same else f"box [{lo:g} .. , .. {hi:g}] (per element)"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "box", "shape": list(self.low.shape), "low": self.low.tolist(), "high": self.high.tolist()}


class Ball:
    """The closed ball ``{x : ||x - center|| <= radius}`` for ``norm`` 2 (Euclidean) or ``math.inf``
    (max norm; also accepted: ``"2"``, ``"inf"``). ``low``/``high`` is its bounding box, rounded
    outwards. Build it through :func:`as_region` (or directly) to get the input checks."""

    def __init__(self, center: Any, radius: float, norm: float | str = 2) -> None:
        self.center = _finite_tensor(center, "the ball's center")
        try:
            self.radius = float(radius)
        except (TypeError, ValueError):
            raise InvalidInput(f"the ball's radius must be a number, got {radius!r}") from None
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise InvalidInput(f"the ball's radius must be a positive finite number, got {radius!r}")
        self.norm = _as_norm(norm)
        lo, hi = self.center - self.radius, self.center + self.radius  # each within half an ulp
        self.low = torch.nextafter(lo, torch.full_like(lo, -math.inf))
        self.high = torch.nextafter(hi, torch.full_like(hi, math.inf))
        # the largest float box certainly inside [c - r, c + r]; where none exists, the center alone
        in_lo = torch.nextafter(lo, torch.full_like(lo, math.inf))
        in_hi = torch.nextafter(hi, torch.full_like(hi, -math.inf))
        empty = in_lo > in_hi
        self._inner = Box(torch.where(empty, self.center, in_lo), torch.where(empty, self.center, in_hi))

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Which points of the batch ``(B, *shape)`` lie in the closed ball, ``(B,)`` booleans,
        conservatively: L-infinity, ``x`` in the float box certainly inside ``[c - r, c + r]``;
        L2, ``fl(sum (x_i - c_i)^2)`` raised by its error bound (``(n + 3) u`` relative for the
        subtraction, square and sum, any summation order, plus ``n`` subnormals lost to underflow)
        is at most ``r^2`` lowered by its own. The center itself always counts."""
        at_center = (x == _rows(x, self.center)).flatten(1).all(dim=1)
        if self.norm == math.inf:
            return self._inner.contains(x) | at_center
        d = (x.to(torch.float64) - _rows(x, self.center).to(torch.float64)).flatten(1)
        n = d.shape[1]
        s_up = (d * d).sum(dim=1) * (1 + 2 * (n + 4) * U64) + n * ETA64
        return (s_up <= self.radius * self.radius * (1 - 4 * U64)) | at_center

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Points of the ball, for a batch ``(B, *shape)``: L-infinity, the nearest point of the inner
        float box; L2, the radial projection onto a sphere slightly inside (relative margins
        ``1e-12, 1e-9, ...``, the first that :meth:`contains` accepts; the center as the last resort)."""
        if self.norm == math.inf:
            return self._inner.project(x)
        c = _rows(x, self.center)
        d = x - c
        dist = d.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
        out = torch.where(self.contains(x).reshape(dist.shape), x, c.expand_as(x))
        todo = ~self.contains(x)
        for margin in (1e-12, 1e-9, 1e-6, 1e-3):
            if not todo.any():
                break
            y = c + d * (self.radius * (1 - margin) / dist.clamp_min(ETA64))
            ok = todo & self.contains(y)
            out[ok] = y[ok]
            todo &= ~ok
        return out

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` points uniform in the ball, float64 (L2: a Gaussian direction and the radius
        ``r U^(1/dim)``; L-infinity: uniform in its box)."""
        if self.norm == math.inf:
            return self._inner.sample(n, generator)
        shape = self.center.shape
        g = torch.randn((n, *shape), generator=generator, dtype=torch.float64).flatten(1)
        u = torch.rand((n, 1), generator=generator, dtype=torch.float64) ** (1.0 / g.shape[1])
        d = g / g.norm(dim=1, keepdim=True).clamp_min(ETA64) * (self.radius * u)
        return self.project(self.center + d.reshape(n, *shape))

    def describe(self) -> str:
        name = "L2" if self.norm == 2 else "L-inf"
        return f"{name} ball of radius {self.radius:g} around a center of shape {tuple(self.center.shape)}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ball", "norm": "2" if self.norm == 2 else "inf", "radius": self.radius,
                "shape": list(self.center.shape), "center": self.center.tolist()}

    def __repr__(self) -> str:
        return f"Ball(radius={self.radius:g}, norm={'2' if self.norm == 2 else 'inf'}, shape={tuple(self.center.shape)})"


@dataclass
class BoxUnion:
    """A union of boxes (a VNN-LIB ``or`` over the inputs). **Not convex**: the maximum of the parts'
    constants bounds only pairs inside one part; pairs across parts need more (module doc). The region methods (``contains``, ``project``, ...) act on the union where that
    is cheap and on :meth:`hull` otherwise."""

    parts: list[Box]

    def hull(self) -> Box:
        """The smallest box containing every part."""
        return Box(torch.stack([p.low for p in self.parts]).amin(0), torch.stack([p.high for p in self.parts]).amax(0))

    @property
    def low(self) -> torch.Tensor:
        return self.hull().low

    @property
    def high(self) -> torch.Tensor:
        return self.hull().high

    @property
    def center(self) -> torch.Tensor:
        return self.hull().center

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Points in some part (the union itself, not the hull)."""
        return torch.stack([p.contains(x) for p in self.parts]).any(dim=0)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest point of the union: the nearest of the parts' projections."""
        cand = torch.stack([p.project(x) for p in self.parts])  # (P, B, *shape)
        dist = (cand - x.unsqueeze(0)).flatten(2).norm(dim=2)
        return cand[dist.argmin(dim=0), torch.arange(x.shape[0])]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` points, each uniform in a part drawn uniformly (not uniform in the union)."""
        which = torch.randint(len(self.parts), (n,), generator=generator)
        pts = torch.stack([p.sample(n, generator) for p in self.parts])
        return pts[which, torch.arange(n)]

    def describe(self) -> str:
        return f"union of {len(self.parts)} boxes (not convex), hull {self.hull().describe()}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "box_union", "convex": False, "parts": [p.to_dict() for p in self.parts],
                "hull": self.hull().to_dict()}


Region = Box | Ball | BoxUnion


def as_region(domain: Any, input_shape: Sequence[int]) -> Region | None:
    """The region of ``domain``, checked against ``input_shape``:

    * ``None``: all of ``R^n`` (returns None);
    * ``(low, high)``: a box, numbers or tensors broadcastable to the input shape;
    * a :class:`Box`, :class:`Ball` or :class:`BoxUnion`;
    * a :class:`~lipbound.frontends.vnnlib.VnnlibProperty` or a path to a ``.vnnlib`` file: its input
      box (or union of boxes), reshaped to the input shape.

    Raises:
        InvalidInput: a shape that does not fit (both shapes named), ``low > high`` (where), a
            non-finite bound or center, a bad radius, an unreadable VNN-LIB file.
    """
    shape = tuple(input_shape)
    if domain is None:
        return None
    if isinstance(domain, str) or hasattr(domain, "__fspath__"):
        domain = _read_region_file(os.fspath(domain), shape)
    if isinstance(getattr(domain, "region", None), (Box, BoxUnion)):  # a VnnlibProperty
        domain = domain.region
    if isinstance(domain, BoxUnion):
        if not domain.parts:
            raise InvalidInput("a union of boxes needs at least one box")
        return BoxUnion([_checked_box(p.low, p.high, shape) for p in domain.parts])
    if isinstance(domain, Ball):
        center = _reshaped(domain.center, shape, "the ball's center")
        return domain if center is domain.center else Ball(center, domain.radius, domain.norm)
    if isinstance(domain, Box):
        return _checked_box(domain.low, domain.high, shape)
    try:
        low, high = domain
    except (TypeError, ValueError):
        raise InvalidInput(f"domain must be None, (low, high), a Box, a Ball, a BoxUnion or a .vnnlib file; "
                           f"got {type(domain).__name__}") from None
    return _checked_box(low, high, shape)


_READERS: dict[str, Callable[[str, tuple[int, ...]], Any]] = {}


def register_region_reader(suffix: str, reader: Callable[[str, tuple[int, ...]], Any]) -> None:
    """Let :func:`as_region` read files ending in ``suffix`` with ``reader(path, input_shape)``,
    which returns a region or an object with a ``region`` attribute. The frontends register theirs
    (:mod:`lipbound.frontends.vnnlib`: ``.vnnlib``); methods never import frontends."""
    _READERS[suffix.lower()] = reader


def _read_region_file(path: str, shape: tuple[int, ...]) -> Any:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _READERS:
        raise InvalidInput(f"domain {path!r}: a region file must end in one of {sorted(_READERS) or ['.vnnlib']} "
                           "(import lipbound to register the readers)")
    return _READERS[suffix](path, shape)


def along_region(region: Region | None, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """For a batch of points ``x`` of ``region`` and directions ``v``: whether ``v`` lies in the
    region's affine hull at ``x`` (``(B,)`` booleans), which a Jacobian witness ``||Df(x) v||`` needs
    to bound ``L_X``. Only a box flat in some elements (``low == high``) restricts it: ``v`` must be 0
    there (for a union of boxes, in some part that contains ``x``). Containment itself is checked
    elsewhere: a point outside every part passes here."""
    if region is None or isinstance(region, Ball):
        return torch.ones(x.shape[0], dtype=torch.bool)
    parts = region.parts if isinstance(region, BoxUnion) else [region]
    inside = torch.stack([p.contains(x) for p in parts])
    along = torch.stack([~((p.low == p.high).to(v.device) & (v != 0)).flatten(1).any(dim=1) for p in parts])
    return (inside & along).any(dim=0) | ~inside.any(dim=0)


def as_box(domain: Any, input_shape: Sequence[int]) -> Box | None:
    """:func:`as_region` for the methods that need a full-dimensional box (``exact``): None or a
    :class:`Box` with ``low < high`` in every element.

    Raises:
        NotApplicable: a ball, a union of boxes, or a box that is flat in some element.
    """
    region = as_region(domain, input_shape)
    if region is None:
        return None
    if not isinstance(region, Box):
        raise NotApplicable(f"this method needs a box, not a {region.describe()}")
    if not bool((region.low < region.high).all()):
        raise NotApplicable("this method needs a box with low < high in every element; the box is flat in "
                            f"{int((region.low == region.high).sum())} of them")
    return region


def _as_norm(norm: float | str) -> float:
    if norm in (2, "2", 2.0):
        return 2.0
    if norm in (math.inf, "inf", "Inf", "linf"):
        return math.inf
    raise InvalidInput(f"the ball's norm must be 2 or inf, got {norm!r}")


def _finite_tensor(value: Any, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be numbers or a tensor: {exc}") from None
    bad = ~torch.isfinite(t)
    if bad.any():
        where = tuple(torch.nonzero(bad)[0].tolist())
        raise InvalidInput(f"{what} has a NaN or infinite value (first at index {where}); "
                           "use domain=None for all of R^n")
    return t


def _reshaped(t: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """``t`` with the input ``shape``: as it is, broadcast from a scalar, or reshaped when only the
    layout differs (e.g. a VNN-LIB vector for an image)."""
    if tuple(t.shape) == shape:
        return t
    if t.dim() == 0:
        return torch.broadcast_to(t, shape).clone()
    if t.numel() == math.prod(shape):
        return t.reshape(shape).clone()
    try:
        return torch.broadcast_to(t, shape).clone()
    except RuntimeError:
        raise InvalidInput(f"{what} has shape {tuple(t.shape)} but the model's input shape is {shape}") from None


def _checked_box(low: Any, high: Any, shape: tuple[int, ...]) -> Box:
    low = _reshaped(_finite_tensor(low, "the domain's low bound"), shape, "the domain's low bound")
    high = _reshaped(_finite_tensor(high, "the domain's high bound"), shape, "the domain's high bound")
    bad = low > high
    if bad.any():
        where = tuple(torch.nonzero(bad)[0].tolist())
        raise InvalidInput(f"the domain has low > high at index {where} ({low[where].item():g} > "
                           f"{high[where].item():g}) and in {int(bad.sum()) - 1} other elements")
    if bool((low == high).all()):
        raise InvalidInput("the domain is a single point (low == high everywhere): it has no Lipschitz constant")
    return Box(low, high)
