"""Starting points of the lower-bound search ``lower`` (DESIGN §6): data points with the largest
Jacobian norms when data is given, random points otherwise (or for the remaining starts); in a
region, points of its bounding box projected into it. Nothing here is trusted: every start is only
a place where ``lower`` measures ``||Df(x) v||``."""

from __future__ import annotations

import math

import torch

from ..errors import InvalidInput
from ..graph.ir import Graph
from .jacobian import power, unit
from .region import Ball, Region

__all__ = ["starts"]


def _data_points(data, shape: tuple[int, ...], max_n: int) -> torch.Tensor:
    batches = [data] if isinstance(data, torch.Tensor) else data
    out, n = [], 0
    try:
        for b in batches:
            if isinstance(b, (list, tuple)):
                b = b[0]
            b = torch.as_tensor(b)
            if b.dim() >= 2 and math.prod(b.shape[1:]) == math.prod(shape):
                b = b.reshape(len(b), *shape)  # e.g. flattened images
            out.append(b)
            n += out[-1].shape[0]
            if n >= max_n:
                break
    except TypeError:
        raise InvalidInput(f"data must be a tensor (N, {', '.join(map(str, shape))}) or an iterable of batches, "
                           f"got {type(data).__name__}") from None
    if not out:
        raise InvalidInput("data is empty")
    x = torch.cat(out)[:max_n]
    if tuple(x.shape[1:]) != shape:
        raise InvalidInput(f"data points must have the input shape {shape}, got {tuple(x.shape[1:])}")
    if not torch.isfinite(x).all():
        raise InvalidInput("data contains NaN or infinite values")
    return x


def _random_points(n: int, shape: tuple[int, ...], region: Region | None, gen: torch.Generator) -> torch.Tensor:
    """In a region, a mixture over its bounding box ``[low, high]``: uniform (a ball: uniform in the
    ball), random vertices (each coordinate at ``low`` or ``high`` with probability 1/2, or at
    ``high`` with probability 0.2: sparse images), uniform in the middle tenth; all projected into
    the region. On ``R^n`` a mixture: N(0, 1), U[0, 1] (image-like inputs), N(0, 0.1^2), N(0, 10^2)."""
    kind = torch.arange(n) % 4
    if region is not None:
        u = torch.rand((n, *shape), generator=gen, dtype=torch.float64)
        u[kind == 1] = (u[kind == 1] < 0.5).to(u.dtype)
        u[kind == 2] = (u[kind == 2] < 0.2).to(u.dtype)
        u[kind == 3] = 0.45 + 0.1 * u[kind == 3]
        x = region.low + u * (region.high - region.low)
        if isinstance(region, Ball):
            x[kind == 0] = region.sample(int((kind == 0).sum()), gen)
        return region.project(x)
    x = torch.randn((n, *shape), generator=gen, dtype=torch.float64)
    x[kind == 1] = torch.rand(((kind == 1).sum(), *shape), generator=gen, dtype=torch.float64)
    x[kind == 2] *= 0.1
    x[kind == 3] *= 10.0
    return x


def starts(g: Graph, region: Region | None, data, n: int, max_data: int,
           gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """``n`` starts in ``g``'s dtype: the best half (by a few power iterations) of the first
    ``max_data`` data points when ``data`` is given, projected into the region, then random points
    (:func:`_random_points`); returns ``(starts, number of data starts)``."""
    shape = g.input_shape
    n_data = 0
    parts = []
    if data is not None:
        pts = _data_points(data, shape, max_data).to(device=g.device, dtype=g.dtype)
        if region is not None:
            pts = region.project(pts)
        sig = torch.cat([power(g.forward, c, unit(torch.randn(c.shape, generator=gen, dtype=torch.float64)
                                                     .to(c)), 8)[0] for c in pts.split(256)])
        n_data = min(len(pts), max(1, n // 2))
        parts.append(pts[torch.argsort(sig, descending=True)[:n_data]])
    parts.append(_random_points(n - n_data, shape, region, gen).to(device=g.device, dtype=g.dtype))
    return torch.cat(parts), n_data
