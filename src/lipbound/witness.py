"""Input domains and re-checkable witnesses of lower bounds (DESIGN §1, §6).

A **witness** is a plain dict that anyone can re-check with :func:`witness_value`, in float64,
from the model alone:

* ``{"form": "jacobian", "x": x, "v": v}``: the value is ``||Df(x) v|| / ||v||``, a lower bound of
  ``||Df(x)||_2`` and so of ``L(f)`` wherever ``f`` is differentiable at ``x`` (almost everywhere;
  for a ReLU network at a kink the autograd Jacobian is the one of an adjacent linear region, whose
  norm is also ``<= L(f)``).
* ``{"form": "pair", "x": x, "y": y}``: the value is ``||f(x) - f(y)|| / ||x - y||``, a lower bound
  of ``L(f)`` by definition, with no differentiability needed.

``x``, ``y``, ``v`` have the input shape (no batch axis). On a :class:`Box` domain the witness
points lie in the box, so the value also bounds the Lipschitz constant of ``f`` restricted to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .errors import InvalidInput
from .jacobian import Linearization

__all__ = ["Box", "as_box", "witness_value", "jacobian_values", "pair_values"]


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

    def contains(self, x: torch.Tensor) -> bool:
        return bool(((x >= self.low.to(x)) & (x <= self.high.to(x))).all())

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


def jacobian_values(fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``||Df(x_b) v_b|| / ||v_b||`` for a batch (:class:`~lipbound.jacobian.Linearization`)."""
    jv = Linearization(fn, x).jvp(v).detach()
    return jv.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)


def pair_values(fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||f(x_b) - f(y_b)|| / ||x_b - y_b||`` for a batch."""
    d = (fn(x) - fn(y)).flatten(1).norm(dim=1)
    return d / (x - y).flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)


def witness_value(model, witness: dict[str, Any], input_shape: Sequence[int] | None = None) -> float:
    """Recompute, in float64 and from the model alone, the value a witness shows (module docstring).

    Args:
        model: the ``nn.Module`` or :class:`~lipbound.graph.Graph` the witness is for.
        witness: a ``Result.witness`` of the ``lower`` or ``exact`` method (a dict with ``form``).
        input_shape: the input shape without batch axis (default: the shape of ``witness["x"]``).
    """
    from .api import as_graph  # the api imports the methods, which import this module

    if not isinstance(witness, dict) or witness.get("form") not in ("jacobian", "pair"):
        raise InvalidInput("a witness is a dict with form 'jacobian' (x, v) or 'pair' (x, y)")
    x = torch.as_tensor(witness["x"], dtype=torch.float64)
    shape = tuple(input_shape) if input_shape is not None else tuple(x.shape)
    graph = as_graph(model, shape).to(dtype=torch.float64)
    x = x.reshape(1, *shape).to(graph.device)
    with torch.no_grad():
        if witness["form"] == "jacobian":
            v = torch.as_tensor(witness["v"], dtype=torch.float64).reshape(1, *shape).to(graph.device)
            return float(jacobian_values(graph.forward, x, v)[0])
        y = torch.as_tensor(witness["y"], dtype=torch.float64).reshape(1, *shape).to(graph.device)
        return float(pair_values(graph.forward, x, y)[0])
