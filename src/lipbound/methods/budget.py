"""Work caps and the wall-clock cap of a method: same seed, same numbers.

Every method stops on iteration counts, work caps and tolerances, which depend on the graph and
the options only, never on how fast the machine is. The wall-clock ``time_budget`` is an **outer
cap**: it only ever stops a method earlier than its own counts would, and when it does, the
result says ``details["stopped_by"] = "time"`` (its numbers may then differ from run to run).
Otherwise ``stopped_by`` says what ended the run: ``"work"`` (a deterministic work cap),
``"iterations"`` (an iteration count ran out) or ``"converged"`` (a tolerance was met, or the
problem was solved exactly).

* :class:`Clock` — the outer cap of one call; it remembers whether it ever cut anything, and the
  pace of the steps it timed (:meth:`Clock.timed`), so that a step predicted at the nominal rates
  of :mod:`lipbound.methods.machine` is not started when, at the pace measured so far on this
  (possibly loaded) machine, it would not finish in time (:meth:`Clock.affords`).
* :func:`cancel_after`, :func:`checkpoint`, :class:`TimeUp` — cooperative cancellation inside long
  loops: a step run under ``with cancel_after(clock)`` calls :func:`checkpoint` between its
  iterations (a block of a recursion, of an elimination), which raises :class:`TimeUp` once a
  clock in force has expired. The caller that set the clock catches it and returns what it had
  already certified (never a value whose check the cut interrupted), with ``stopped_by="time"``.
* :func:`graph_macs` — the multiply-accumulates of one forward pass, the unit of ``lower``'s
  work cap.
* :func:`stopped_by` — the reason of a run made of several parts.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterable, Iterator

from ..graph.ir import Affine, Graph
from ..linalg.linear_operator import LinearOperator
from ..linalg.operators import Compose
from .machine import STEP_SECONDS  # added to each step's prediction: microsecond steps would skew the pace

__all__ = ["Clock", "TimeUp", "cancel_after", "checkpoint", "graph_macs", "stopped_by", "STOPPED_BY"]

#: The reasons, from the least to the most telling (a run made of parts reports its last one).
STOPPED_BY = ("converged", "iterations", "work", "time")

#: Weight of a convolution's multiply-accumulate against a dense one (batched double backward on
#: CPU runs a convolution about this many times slower per MAC; measured on the demo CNN).
CONV_WEIGHT = 4

#: the least pace :meth:`Clock.affords` assumes: a step is never priced below this fraction of its
#: nominal seconds (the first timed steps can be short, or partly cached, and their ratio noisy)
PACE_FLOOR = 0.5


class TimeUp(Exception):
    """A clock in force (:func:`cancel_after`) expired inside a step (:func:`checkpoint`)."""


class Clock:
    """The wall-clock cap of one call, started at creation. ``seconds`` may be ``inf``."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds
        self.cut = False  # True once the cap stopped anything
        self._predicted = 0.0  # nominal seconds of the steps timed so far (:meth:`timed`)
        self._measured = 0.0  # their wall seconds

    def left(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline() - time.perf_counter()

    def pace(self) -> float:
        """Measured over predicted seconds of the steps timed so far (1 before any), at least
        :data:`PACE_FLOOR`: about 2.5 on a 2-core CPU running five busy processes."""
        return max(self._measured / self._predicted, PACE_FLOOR) if self._predicted > 0 else 1.0

    def affords(self, seconds: float, paced: bool = True) -> bool:
        """True when a step predicted at ``seconds`` (nominal rates; plus :data:`STEP_SECONDS`)
        finishes before the deadline at :meth:`pace` (at the nominal rates when not ``paced``: for a
        step that :func:`checkpoint` can stop, whose own pace may differ from the steps timed so far);
        otherwise the clock cuts (it remembers it) and the caller must not start the step."""
        if (seconds + STEP_SECONDS) * (self.pace() if paced else 1.0) <= self.left():
            return True
        self.cut = True
        return False

    @contextmanager
    def timed(self, predicted: float) -> Iterator[None]:
        """Time the block as a step predicted at ``predicted`` nominal seconds (plus
        :data:`STEP_SECONDS`), for :meth:`pace`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._predicted += predicted + STEP_SECONDS
            self._measured += time.perf_counter() - t0

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


_IN_FORCE: ContextVar[tuple[Clock, ...]] = ContextVar("lipbound_clocks_in_force", default=())


@contextmanager
def cancel_after(clock: Clock) -> Iterator[Clock]:
    """Put ``clock`` in force for the block: every :func:`checkpoint` reached inside it (at any
    depth, in this thread) raises :class:`TimeUp` once ``clock`` or an outer clock in force has
    expired. The caller catches :class:`TimeUp` around the block."""
    token = _IN_FORCE.set(_IN_FORCE.get() + (clock,))
    try:
        yield clock
    finally:
        _IN_FORCE.reset(token)


def checkpoint() -> None:
    """Raise :class:`TimeUp` if a clock in force (:func:`cancel_after`) has expired; called between
    the iterations of long loops. Without a clock in force it does nothing."""
    if any(clock.expired() for clock in _IN_FORCE.get()):
        raise TimeUp


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

