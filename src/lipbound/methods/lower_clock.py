"""The wall-clock plan of ``lower``: phase shares, a reserve for the re-checks, and paced steps.

``lower``'s numbers come from its counts (``steps``, the work caps); its ``time_budget`` ``B`` is an
outer cap only (:mod:`~lipbound.methods.budget`). On a loaded machine one step of a CNN (an
ascent step, a batch of the region walk, the first re-check of a witness) can take seconds, so a
cap that only looks at the clock *between* steps overruns by a step, and the re-checks at the end
overrun by their cold cost. The plan therefore has three parts:

* **Priming**: before the search, ``lower`` re-checks one witness (a start point). That pays the
  re-check's one-time cost (the certified layer-norm bounds of the rounding analysis, cached on
  the float64 graph) and measures it: the **reserve** ``R`` (:meth:`LowerClock.primed`). The
  witness, when it passes, is the best one found so far.
* **Shares**: phase ``p`` starts no new step after ``t_R + f_p (t_0 + B - t_R)``, its *soft* end
  (``t_0``: the start of the call, ``t_R``: the end of the priming; ``f_p`` the phase's fraction:
  the ascent 0.5, the walk 0.7, ...): the fractions of before, of the time the priming left.
* **Hard end** ``t_0 + B - R``: no search step starts unless, at the measured duration of the
  previous step of the same loop (:class:`Loop`; the first step at an estimate the caller gives),
  it ends by then. What remains after it, ``R``, is what the cold re-check took, and the final
  re-checks are warm. So ``lower`` returns within about ``B`` plus the pace's error on one step.

Nothing here changes a number of a run that no clock cut: the soft ends cut a phase only where
the fractions of the budget did before, and the hard end only when the search would otherwise
run into the re-checks' time; every cut sets ``clock.cut`` (``stopped_by="time"``).
"""

from __future__ import annotations

import time
from typing import Iterator

from .budget import Clock

__all__ = ["LowerClock", "Loop"]


class LowerClock:
    """The plan (module doc) of one ``lower`` call under ``clock``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.origin = clock.start  # t_R once primed
        self.reserve = 0.0

    def primed(self, seconds: float) -> None:
        """Record the priming's duration: the shares count from now, the hard end leaves ``seconds``."""
        self.origin = time.perf_counter()
        self.reserve = seconds

    def soft_end(self, fraction: float) -> float:
        """``t_R + fraction * (t_0 + B - t_R)``, never past the hard end (``perf_counter`` time)."""
        return min(self.origin + fraction * (self.clock.deadline() - self.origin), self.hard_end())

    def hard_end(self) -> float:
        """``t_0 + B - R`` (``perf_counter`` time)."""
        return self.clock.deadline() - self.reserve

    def over(self, fraction: float) -> bool:
        """True (and the clock remembers a cut) once the soft end of ``fraction`` has passed."""
        if time.perf_counter() >= self.soft_end(fraction):
            self.clock.cut = True
            return True
        return False

    def loop(self, fraction: float, first: float) -> Loop:
        """The pacing of one loop of the phase ending softly at ``fraction``; ``first``: the
        predicted seconds of its first step."""
        return Loop(self.clock, self.soft_end(fraction), self.hard_end(), first)


class Loop:
    """Wall-clock pacing of a loop of similar steps: a step starts only before ``soft`` and when,
    at the duration of the previous step (``first`` for the first; :meth:`expect` resets it), it
    ends by ``hard``. A refusal sets ``clock.cut``."""

    def __init__(self, clock: Clock, soft: float, hard: float, first: float) -> None:
        self.clock, self.soft, self.hard, self.last = clock, soft, hard, first

    def expect(self, seconds: float) -> None:
        """Predict the next step at ``seconds``."""
        self.last = seconds

    def fits(self) -> bool:
        """Whether the next step may start (module doc); False marks the clock as having cut."""
        now = time.perf_counter()
        if now < self.soft and now + self.last <= self.hard:
            return True
        self.clock.cut = True
        return False

    def steps(self, n: int) -> Iterator[int]:
        """``range(n)``, stopped before the first step that does not :meth:`fit <fits>`; each
        step's duration (from its ``yield`` to the next request) predicts the next one."""
        for k in range(n):
            if not self.fits():
                return
            t = time.perf_counter()
            yield k
            self.last = time.perf_counter() - t
