"""alpha-CROWN (Xu et al., ICLR 2021): CROWN whose relaxation slopes are optimised per bound.

CROWN (:mod:`.propagation`) bounds a linear form ``<c, z>`` of a target node's value from below
by back-substitution through linear relaxations ``a_L z + b_L <= s(z) <= a_U z + b_U`` of the
earlier activations. For a neuron whose input interval ``[l, u]`` holds a breakpoint, the slope
of a line is free: **any** slope ``a`` gives a valid line once its offset is the exact
``min`` (lower) or ``max`` (upper) of ``s(z) - a z`` over ``[l, u]``, which for a piecewise-linear
activation is reached at ``l``, ``u`` or a breakpoint inside (:func:`.relaxations._pwl_offsets`,
with its rigorous rounding margin). alpha-CROWN makes the slope a parameter
``a = lo + alpha (hi - lo)``, ``alpha in [0, 1]``, ``[lo, hi]`` the activation's slope range on
``[l, u]`` (for ReLU: the lower line ``alpha z``, the textbook alpha-CROWN), one ``alpha`` per
target row and per unstable neuron of every earlier activation (batched over the target's rows),
and maximises each row's bound by projected gradient ascent (Adam, then a clip to ``[0, 1]``).

* Free sides: the lower line of an activation that is not concave, the upper line of one that
  is not convex (for a convex activation, ReLU included, the chord is the least upper line on
  ``[l, u]`` pointwise, so moving it never helps; likewise the lower chord of a concave one).
  Smooth activations keep CROWN's fixed lines.
* Start: CROWN's own slopes (``alpha`` read back from them), so the first iterate is CROWN.
* Stop: a fixed number of iterations; a deadline (the caller's time budget) cuts it short. No
  randomness: the same inputs give the same bounds, unless the deadline cuts.

**Soundness.** The optimiser is only a way of choosing numbers: every iterate's slopes, whatever
they are, go through the sound back-substitution (:class:`.propagation._Backward`, float64 with
the rigorous rounding of :mod:`.propagation`), each with its exact, outward-rounded offset, so every
iterate's bound is a rigorous lower bound of its row. The result is the largest bound of the
iterates per row (the iterates are evaluated, not extrapolated), intersected by the caller with
CROWN's and IBP's bounds: it is never looser than either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from ..graph.ir import Activation
from .relaxations import Relaxation, _pwl_offsets, _pwl_points, slopes_on

__all__ = ["AlphaOptions", "FreeLines", "free_lines", "optimise"]


@dataclass(frozen=True)
class AlphaOptions:
    """Settings of alpha-CROWN: ``iterations`` of Adam (step ``lr`` on ``alpha``) per target
    layer; ``max_work`` caps a layer's optimisation (rows x elements back-substituted per
    iteration x iterations); a larger one keeps CROWN's bounds there (a deterministic cap)."""

    iterations: int = 20
    lr: float = 0.25
    max_work: float = 4e9


class FreeLines(NamedTuple):
    """One piecewise-linear activation's free lines: the slope range ``[lo, hi]`` per neuron,
    the points ``p`` where ``s(z) - a z`` can be extreme (``l``, breakpoints inside, ``u``; first
    axis) with ``s(p)`` and its error bound ``e``, CROWN's lines, and which sides are free."""

    lo: torch.Tensor
    hi: torch.Tensor
    p: torch.Tensor
    s: torch.Tensor
    e: torch.Tensor
    crown: Relaxation
    low: bool
    up: bool


def free_lines(node: Activation, l: torch.Tensor, u: torch.Tensor, crown: Relaxation) -> FreeLines | None:
    """The free lines of ``node`` on ``[l, u]`` (module doc), or None when it has none: a smooth
    activation, every neuron on one piece, or no free side (an affine activation)."""
    pieces = node.pieces
    if pieces is None:
        return None
    unstable = torch.zeros_like(l, dtype=torch.bool)
    for b in pieces.breakpoints:
        unstable |= (l < b) & (b < u)
    slopes = list(pieces.slopes)
    convex = all(x <= y for x, y in zip(slopes, slopes[1:]))
    concave = all(x >= y for x, y in zip(slopes, slopes[1:]))
    if not bool(unstable.any()) or (convex and concave):
        return None
    lo, hi = slopes_on(node, l, u)
    return FreeLines(lo, hi, *_pwl_points(node, l, u), crown, low=not concave, up=not convex)


def _alpha(free: FreeLines, slope: torch.Tensor) -> torch.Tensor:
    """``alpha`` with ``lo + alpha (hi - lo) = slope`` (0 where ``lo = hi``), clipped to ``[0, 1]``."""
    span = free.hi - free.lo
    return torch.where(span > 0, (slope - free.lo) / torch.where(span > 0, span, 1.0), 0.0).clamp(0, 1)


def _lines(free: FreeLines, alpha_low: torch.Tensor | None, alpha_up: torch.Tensor | None) -> Relaxation:
    """The relaxation of a batch of rows (``alpha``: ``(R, *shape)``; None keeps CROWN's side):
    slopes ``lo + alpha (hi - lo)`` with their exact, outward-rounded offsets (module doc)."""
    p, s, e = free.p.unsqueeze(1), free.s.unsqueeze(1), free.e.unsqueeze(1)
    span = free.hi - free.lo
    a_low, b_low, a_up, b_up = free.crown
    if alpha_low is not None:
        a_low = free.lo + alpha_low * span
        b_low = _pwl_offsets(a_low, p, s, e)[0]
    if alpha_up is not None:
        a_up = free.lo + alpha_up * span
        b_up = _pwl_offsets(a_up, p, s, e)[1]
    return Relaxation(a_low, b_low, a_up, b_up)


def optimise(bound: Callable[[dict[str, Relaxation]], torch.Tensor], rows: int, frees: dict[str, FreeLines],
             options: AlphaOptions, deadline: float | None) -> tuple[torch.Tensor, str, int]:
    """Per row, the largest rigorous lower bound ``bound(relaxations)`` (shape ``(rows,)``) over
    the Adam iterates of the free slopes of ``frees`` (module doc), starting from CROWN's.
    Returns the bounds, what stopped the loop (``"iterations"`` or ``"time"``) and the number of
    iterates evaluated."""
    params: dict[str, list[torch.Tensor | None]] = {}
    for name, f in frees.items():
        sides = [(f.low, f.crown.a_low), (f.up, f.crown.a_up)]
        params[name] = [_alpha(f, a).expand(rows, *a.shape).clone().requires_grad_(True) if free else None
                        for free, a in sides]
    leaves = [t for pair in params.values() for t in pair if t is not None]
    adam = torch.optim.Adam(leaves, lr=options.lr) if leaves else None
    best: torch.Tensor | None = None
    stopped, done = "iterations", 0
    with torch.enable_grad():
        for it in range(options.iterations if adam is not None else 1):
            if it and deadline is not None and time.perf_counter() > deadline:
                stopped = "time"
                break
            low = bound({name: _lines(frees[name], *pair) for name, pair in params.items()})
            best = low.detach() if best is None else torch.maximum(best, low.detach())
            done += 1
            if adam is None or it == options.iterations - 1 or not low.requires_grad:
                break
            adam.zero_grad()
            (-low.sum()).backward()
            adam.step()
            with torch.no_grad():
                for t in leaves:
                    t.clamp_(0, 1)
    return best, stopped, done
