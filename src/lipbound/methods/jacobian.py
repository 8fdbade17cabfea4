"""Batched Jacobian tools shared by the lower-bound searches.

A graph acts on each element of a batch independently, so the Jacobian of the batched map is
block diagonal: one backward pass gives ``J_b^T u_b`` and one forward-mode pass ``J_b v_b`` for
every batch element ``b`` at once. :func:`power` runs the power method on every ``J_b^T J_b``
together; ``||J_b v_b||`` with a unit ``v_b`` is a lower bound of ``||J_b||_2`` whatever the
number of steps.
"""

from __future__ import annotations

import dataclasses

import torch

from ..graph.ir import Activation, Graph

__all__ = ["unit", "Linearization", "power", "tangents", "recording", "through_pieces"]


def unit(v: torch.Tensor) -> torch.Tensor:
    """Each batch element scaled to norm 1 (zero stays zero)."""
    n = v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return torch.nan_to_num(v / n.reshape(-1, *([1] * (v.dim() - 1))), nan=0.0, posinf=0.0, neginf=0.0)


class Linearization:
    """``J v`` and ``J^T u`` at a batch ``x`` from one recorded forward pass: ``J^T u`` by a
    backward pass, ``J v`` as the derivative of ``u -> J^T u`` (double backward, which every
    operation of the graph supports, unlike forward mode)."""

    def __init__(self, fn, x: torch.Tensor) -> None:
        with torch.enable_grad():
            self.x = x.detach().requires_grad_(True)
            self.y = fn(self.x)
            self.u = torch.zeros_like(self.y, requires_grad=True)
            (self.jtu,) = torch.autograd.grad(self.y, self.x, self.u, create_graph=True)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(self.jtu, self.u, v, retain_graph=True)[0]

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(self.y, self.x, u, retain_graph=True)[0]


def tangents(outputs: list[torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
    """``D o(x) v`` for each tensor ``o`` of ``outputs`` computed from ``x`` (which requires grad)
    by double backward; zeros for an output that does not depend on ``x``."""
    out = []
    for o in outputs:
        w = torch.zeros_like(o, requires_grad=True)
        (g,) = torch.autograd.grad(o, x, w, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            out.append(torch.zeros_like(o))
            continue
        out.append(torch.autograd.grad(g, w, v, retain_graph=True)[0])
    return out


def power(fn, x: torch.Tensor, v: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` power iterations on ``J_b^T J_b`` for every batch element ``b`` at once, from
    ``v``; returns ``(||J_b v_b||, v_b)`` with ``v_b`` unit (a zero ``v_b``, as ``J_b^T J_b`` leaves
    where ``J_b`` is zero, is replaced by the normalised all-ones vector)."""
    v = _nonzero(unit(v))
    lin = Linearization(fn, x)
    for _ in range(steps):
        v = _nonzero(unit(lin.vjp(lin.jvp(v)).detach()))
    jv = lin.jvp(v).detach()
    return jv.flatten(1).norm(dim=1), v


def _nonzero(v: torch.Tensor) -> torch.Tensor:
    dead = v.flatten(1).norm(dim=1) == 0
    if not dead.any():
        return v
    return torch.where(dead.reshape(-1, *([1] * (v.dim() - 1))), unit(torch.ones_like(v)), v)


def recording(graph: Graph, names: list[str], store: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Graph:
    """A copy of ``graph`` whose activation nodes ``names`` store ``(input, output)`` of their
    last evaluation in ``store[name]``."""
    def wrap(fn, name):
        def wrapped(z):
            y = fn(z)
            store[name] = (z, y)
            return y
        return wrapped

    nodes = {k: (dataclasses.replace(n, fn=wrap(n.fn, k)) if k in names else n) for k, n in graph.nodes.items()}
    return graph.rebuilt(nodes)


def through_pieces(graph: Graph) -> Graph:
    """A copy of ``graph`` whose piecewise-linear activations evaluate through their exact pieces
    (:class:`~lipbound.graph.activations.PiecewiseLinear`): the same function, written with
    indexing, products and sums, which double backward supports (torch's Hardsigmoid has no double
    backward). For the searches; witnesses are valued on the graph as given."""
    nodes = {k: (dataclasses.replace(n, fn=n.pieces) if isinstance(n, Activation) and n.pieces is not None else n)
             for k, n in graph.nodes.items()}
    return graph.rebuilt(nodes)
