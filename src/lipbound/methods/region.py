"""Input regions on which a method bounds the Lipschitz constant (DESIGN §7).

A region ``X`` gives the local constant ``L_X(f) = sup over x != y in X of ||f(x) - f(y)|| / ||x - y||``.
Today: all of ``R^n`` (``None``) and boxes.
"""

from __future__ import annotations

from typing import Any, Sequence

from dataclasses import dataclass

import torch

from ..errors import InvalidInput

__all__ = ["Box", "as_box"]


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
        return self.low + u * (self.high - self.low)

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """For a batch ``(B, *shape)``: which points lie in the closed box, ``(B,)`` booleans."""
        return ((x >= self.low.to(x)) & (x <= self.high.to(x))).flatten(1).all(dim=1)

    @property
    def center(self) -> torch.Tensor:
        return (self.low + self.high) / 2

    def describe(self) -> str:
        lo, hi = self.low.min().item(), self.high.max().item()
        same = bool((self.low == lo).all() and (self.high == hi).all())
        return f"box [{lo:g}, {hi:g}]^n" if same else f"box [{lo:g} .. , .. {hi:g}] (per element)"


def as_box(domain: Any, input_shape: Sequence[int]) -> Box | None:
    """``None`` (all of ``R^n``) or a :class:`Box` from ``domain = (low, high)``, each a number or a
    tensor broadcastable to ``input_shape``."""
    if domain is None:
        return None
    if isinstance(domain, Box):
        low, high = domain.low, domain.high
    else:
        try:
            low, high = domain
        except (TypeError, ValueError):
            raise InvalidInput(f"domain must be None or a pair (low, high), got {domain!r}") from None
    shape = tuple(input_shape)
    try:
        low = torch.broadcast_to(torch.as_tensor(low, dtype=torch.float64).cpu(), shape).clone()
        high = torch.broadcast_to(torch.as_tensor(high, dtype=torch.float64).cpu(), shape).clone()
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"domain bounds must be numbers or tensors broadcastable to the input shape {shape}: "
                           f"{exc}") from None
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise InvalidInput("domain bounds must be finite (use domain=None for all of R^n)")
    if not bool((low < high).all()):
        raise InvalidInput("domain must have low < high in every element")
    return Box(low, high)

