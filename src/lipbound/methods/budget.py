"""Work caps and the wall-clock cap of a method: same seed, same numbers.

Every method stops on iteration counts, work caps and tolerances, which depend on the graph and
the options only, never on how fast the machine is. The wall-clock ``time_budget`` is an **outer
cap**: it only ever stops a method earlier than its own counts would, and when it does, the
result says ``details["stopped_by"] = "time"`` (its numbers may then differ from run to run).
Otherwise ``stopped_by`` says what ended the run: ``"work"`` (a deterministic work cap),
``"iterations"`` (an iteration count ran out) or ``"converged"`` (a tolerance was met, or the
problem was solved exactly).

* :class:`Clock` — the outer cap of one call; it remembers whether it ever cut anything.
* :func:`graph_macs` — the multiply-accumulates of one forward pass, the unit of ``lower``'s
  work cap.
* :func:`stopped_by` — the reason of a run made of several parts.
"""

from __future__ import annotations

import time
from typing import Iterable

from ..graph.ir import Affine, Graph
from ..linalg.linear_operator import LinearOperator
from ..linalg.operators import Compose

__all__ = ["Clock", "graph_macs", "stopped_by", "STOPPED_BY"]

#: The reasons, from the least to the most telling (a run made of parts reports its last one).
STOPPED_BY = ("converged", "iterations", "work", "time")

#: Weight of a convolution's multiply-accumulate against a dense one (batched double backward on
#: CPU runs a convolution about this many times slower per MAC; measured on the demo CNN).
CONV_WEIGHT = 4


class Clock:
    """The wall-clock cap of one call, started at creation. ``seconds`` may be ``inf``."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds
        self.cut = False  # True once the cap stopped anything

    def deadline(self, fraction: float = 1.0) -> float:
        """The ``time.perf_counter()`` value at ``fraction`` of the budget."""
        return self.start + fraction * self.seconds

    def expired(self, fraction: float = 1.0) -> bool:
        """True once ``fraction`` of the budget is spent; the clock then remembers that it cut the
        call short (the caller must stop what it was doing)."""
        if time.perf_counter() >= self.deadline(fraction):
            self.cut = True
            return True
        return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def op_macs(op: LinearOperator) -> int:
    """Multiply-accumulates of ``op`` on one input: a dense matrix its entries, a convolution its
    weight's entries times its output positions (times :data:`CONV_WEIGHT`), anything else one per
    output element."""
    if isinstance(op, Compose):
        return sum(op_macs(o) for o in op.ops)
    total = op.out_numel
    positions = op.out_numel // op.out_shape[0] if op.out_shape else 1
    for t in op.tensors():
        total += t.numel() * (CONV_WEIGHT * positions if t.dim() > 2 else 1)
    return total


def graph_macs(graph: Graph) -> int:
    """Multiply-accumulates of one forward pass of ``graph`` (its affine nodes, :func:`op_macs`),
    at least 1: a deterministic measure of its cost."""
    return max(1, sum(op_macs(n.op) for n in graph if isinstance(n, Affine)))


def stopped_by(reasons: Iterable[str], clock: Clock | None = None) -> str:
    """What stopped a run made of parts: ``"time"`` when ``clock`` cut it, else the most telling
    of the parts' ``reasons`` (:data:`STOPPED_BY`; ``"converged"`` when there is none)."""
    if clock is not None and clock.cut:
        return "time"
    return max(reasons, key=STOPPED_BY.index, default="converged")

