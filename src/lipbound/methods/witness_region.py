"""Where a Jacobian witness is valid (DESIGN §8): the point lies in a linear region of the network,
off every kink by more than the rounding error, or on kinks of locally constant elements only.

``f`` is ``C^1`` near ``x`` when every activation input that is not locally constant sits farther
from the activation's kinks than its rigorous rounding error bound (:func:`~.enclosure.enclose`),
and every max-pooling window has a certain maximum (or only locally constant candidates): then the
activation pattern, hence the autograd Jacobian, is the same on a neighbourhood of ``x`` and is the
true ``Df(x)``. :func:`region_check` decides it per point; :func:`step_along` says how far along a
direction the pattern provably stays (first order, exact for piecewise-linear networks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..graph.ir import Activation, Affine, Graph, Input, MaxPool
from ..linalg.operators import Compose, LinearOperator
from .enclosure import Enclosure, enclose, piece_slopes
from .float_error import TINY, UNIT_ROUNDOFF, magnitude
from .jacobian import tangents
from .region import Region

__all__ = ["RegionCheck", "region_check", "step_along"]


@dataclass
class RegionCheck:
    """Outcome of :func:`region_check` for a batch: ``valid`` ``(B,)``; ``reasons[b]`` says why
    point ``b`` failed (None when valid); ``room[name]`` is, for each checked node, how far every
    element stays from a kink (activation inputs) or how much each window's maximum beats its
    runner-up (max pooling), beyond the rounding error bound: positive where certain."""

    valid: torch.Tensor
    reasons: list[str | None]
    room: dict[str, torch.Tensor]


def region_check(graph: Graph, x: torch.Tensor, box: Region | None = None,
                 enclosure: Enclosure | None = None) -> RegionCheck:
    """Decide, for each point of the batch ``x``, whether a Jacobian witness there is valid: ``x``
    is finite and in the closed region ``box`` (its rigorous ``contains``); every activation input that is not locally constant is
    farther from each of the activation's ``kinks`` than its rounding error bound (:func:`~.enclosure.enclose`); in every max-pooling
    window, either the largest input lowered by its error bound exceeds every other input raised by
    its bound, or every input that could be the largest is *locally constant* (a tie of inactive
    ReLUs: the maximum is then constant near ``x``). An element is locally constant when it
    depends on no input near ``x``: through affine maps only on locally constant elements (zero
    weights elsewhere), an activation on a certain piece of slope 0, a window whose maximum is
    certainly a constant one. Then ``f`` is ``C^1`` near ``x`` and its autograd Jacobian is the true
    one (:mod:`lipbound.methods.rounding`). ``graph`` must be float64 on the CPU; ``enclosure`` is :func:`~.enclosure.enclose` at
    ``x`` when already computed."""
    n = x.shape[0]
    valid = torch.ones(n, dtype=torch.bool)
    reasons: list[str | None] = [None] * n

    def fail(bad: torch.Tensor, why: str) -> None:
        for b in torch.nonzero(bad & valid).flatten().tolist():
            reasons[b] = why
        valid.logical_and_(~bad)

    fail(~torch.isfinite(x).flatten(1).all(dim=1), "x is not finite")
    if box is not None:
        fail(~box.contains(x), f"x lies outside the domain ({box.describe()})")
    enc = enclosure if enclosure is not None else enclose(graph, x)
    room: dict[str, torch.Tensor] = {}
    moving: dict[str, torch.Tensor] = {}  # elements that are not locally constant
    for node in graph:
        ins = [moving[i] for i in node.inputs]
        if isinstance(node, Input):
            moving[node.name] = torch.ones_like(x, dtype=torch.bool)
        elif isinstance(node, Affine):
            moving[node.name] = _reaches(node.op, ins[0])
        elif isinstance(node, Activation):
            z, e = enc.values[node.inputs[0]], enc.errors[node.inputs[0]]
            certain = torch.ones_like(z, dtype=torch.bool)
            if node.kinks:
                kinks = torch.tensor(node.kinks, dtype=z.dtype)
                dist = (z.unsqueeze(-1) - kinks).abs().amin(dim=-1)  # fl(|z - k|) is within u of it
                room[node.name] = dist * (1 - 4 * UNIT_ROUNDOFF) - e
                certain = room[node.name] > 0
                # a locally constant input may sit on a kink: the output is then locally constant too
                fail((~certain & ins[0]).flatten(1).any(dim=1),
                     f"an input of {node.label or 'activation'} '{node.origin}' is within its rounding error of a kink")
            flat = piece_slopes(node, z) == 0 if node.pieces is not None else torch.zeros_like(certain)
            moving[node.name] = ins[0] & ~(flat & certain)
        elif isinstance(node, MaxPool):
            room[node.name], moving[node.name] = _window_room(node, enc.values[node.inputs[0]],
                                                              enc.errors[node.inputs[0]], ins[0])
            fail(~(room[node.name] > 0).flatten(1).all(dim=1),
                 f"a window of max pooling '{node.origin}' has no certain maximum (a tie, up to rounding)")
        else:  # Add, Concat
            moving[node.name] = node.evaluate(*[m.to(x.dtype) for m in ins]) != 0
    return RegionCheck(valid, reasons, room)


def _reaches(op: LinearOperator, moving: torch.Tensor) -> torch.Tensor:
    """The outputs of ``A`` that have a non-zero weight on a moving input (all of them when ``|A|``
    is not known)."""
    if isinstance(op, Compose):
        for sub in op.ops:
            moving = _reaches(sub, moving)
        return moving
    mag = magnitude(op)
    if mag is None:
        return torch.ones((moving.shape[0], *op.out_shape), dtype=torch.bool)
    return mag.matvec(moving.to(torch.float64)) != 0


def _window_room(node: MaxPool, h: torch.Tensor, e: torch.Tensor,
                 moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window of ``node.fn`` at ``h`` (error bound ``e``; ``moving``: the inputs that are not
    locally constant), the larger of ``(h_top - e_top) - max over the other inputs j of
    (h_j + e_j)`` (a certain maximum) and ``(h_top - e_top) - max over the moving inputs j of
    (h_j + e_j)`` (only constant inputs can be the maximum), rounded to the safe side, NaN where it
    cannot be decided; and which windows' maxima are not locally constant.

    Works for any max-pooling function, from its values alone: the window's selected input ``top``
    is read by a forward-mode derivative along the tangent ``t_j = j`` (the flat index); the
    runner-up is the pooled maximum after masking ``top`` with ``-inf``. Windows may overlap, so
    masking is done for one class of windows at a time (output coordinates equal modulo ``K`` per
    axis, ``K = 1 .. 5``), and a window's result is used only when it is verified that no other
    masked input lies in it: pooling ``+id`` and ``-id`` of the masked inputs must both return its
    own ``top``."""
    batch, n = h.shape[0], h[0].numel()
    ids = torch.arange(n, dtype=h.dtype).reshape(1, *h.shape[1:]).expand_as(h).contiguous()
    with torch.enable_grad():
        hg = h.detach().requires_grad_(True)
        top_value = node.evaluate(hg)
        (picked,) = tangents([top_value], hg, ids)
    top_value = top_value.detach()
    integral = picked == picked.round()  # a tie split by the derivative (amax) gives a fraction
    top = picked.round().clamp(0, n - 1).long().flatten(1)
    e_top = node.evaluate(e)  # the window's largest error bounds the selected input's
    low_top = (top_value - e_top - 4 * UNIT_ROUNDOFF * (top_value.abs() + e_top) - TINY).flatten(1)
    raised = (h + e + 4 * UNIT_ROUNDOFF * (h.abs() + e) + TINY).flatten(1)
    minus_inf = torch.full_like(raised, -math.inf)
    runner = torch.full(top.shape, math.nan, dtype=h.dtype)
    pending = integral.flatten(1).clone()
    for k in range(1, 6):
        colour, colours = _colouring(top_value.shape[1:], k)
        for c in range(colours):
            members = pending & (colour == c)
            if not members.any():
                continue
            rows, cols = torch.nonzero(members, as_tuple=True)
            at = top[rows, cols]
            masked, hi, lo = raised.clone(), minus_inf.clone(), minus_inf.clone()
            masked[rows, at] = -math.inf
            hi[rows, at] = ids.flatten(1)[rows, at]
            lo[rows, at] = -ids.flatten(1)[rows, at]
            pooled = node.evaluate(torch.cat([masked, hi, lo]).reshape(3 * batch, *h.shape[1:])).flatten(1)
            r, own_hi, own_lo = pooled[:batch], pooled[batch:2 * batch], -pooled[2 * batch:]
            alone = members & (own_hi == top.to(h.dtype)) & (own_lo == top.to(h.dtype))
            runner[alone] = r[alone]
            pending &= ~alone
        if not pending.any():
            break
    moving_max = node.evaluate(torch.where(moving.flatten(1), raised, minus_inf).reshape(h.shape)).flatten(1)
    constant = low_top > moving_max
    room = torch.fmax(low_top - runner, low_top - moving_max)
    moving_out = ~constant & moving.flatten(1).gather(1, top)
    return room.reshape(top_value.shape), moving_out.reshape(top_value.shape)


def _colouring(shape: tuple[int, ...], k: int) -> tuple[torch.Tensor, int]:
    """Classes of the output positions of a pooling with output ``shape = (channels, *spatial)``:
    the spatial coordinates modulo ``k``, flattened to ``(1, numel)``; and the number of classes."""
    spatial = shape[1:]
    colour = torch.zeros(spatial, dtype=torch.long)
    if spatial:
        for coord in torch.meshgrid(*[torch.arange(s) for s in spatial], indexing="ij"):
            colour = colour * k + coord % k
    return colour.reshape(1, -1).expand(shape[0], -1).reshape(1, -1), k ** len(spatial)


def step_along(graph: Graph, enc: Enclosure, room: dict[str, torch.Tensor]) -> torch.Tensor:
    """Largest ``t`` per point such that the first-order motion of every checked quantity along
    ``x + s v``, ``|s| <= t``, stays within its ``room`` (exact for piecewise-linear networks, whose
    pre-activations are affine in ``s`` inside a region), from the tangents of ``enc``; ``inf``
    when nothing is checked."""
    step = torch.full((next(iter(enc.values.values())).shape[0],), math.inf, dtype=torch.float64)
    for name, r in room.items():
        node = graph.nodes[name]
        rate = enc.tangents[node.inputs[0]].abs()
        if isinstance(node, MaxPool):
            rate = 2 * node.evaluate(rate)  # the top and the runner-up move by at most the window's max
        ratio = torch.nan_to_num(r.clamp_min(0) / rate, nan=math.inf)
        step = torch.minimum(step, ratio.flatten(1).amin(dim=1))
    return step
