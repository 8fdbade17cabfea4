"""One part of ``local-bab``'s part-by-part search (:mod:`.local_bab_serial`): its record
(:class:`Part`) and its **certified upper bound** (:class:`PartBounder`).

A part ``P = [low, high]`` (a box) is bounded on its own localized graph
(:func:`~lipbound.methods.carried_bounds.localize_keeping`: CROWN's pre-activation bounds on ``P``
intersected with those the region's graph carries, which hold on ``P`` too; so they hold on ``P``,
and every certified method run on it bounds the constant on ``P``) by the slope-box bound
(:func:`~lipbound.methods.slope_box.slope_box_bound`: interval Jacobians with the slope vertices
of the first ``vertex_units`` unstable neurons enumerated; exact when every neuron is stable) and
by the certified ``upper_methods``, the least value kept: each is ``>= L(P)``, so their minimum is.
The region bounded once (no split: ``vertex_units`` None) that no method bounds gets AutoLip's
bound, which applies to any graph.

A part whose neurons are all stable and whose bound is the slope-box one is **closed**: the network
is affine on it, its Jacobian is one matrix and the bound is that matrix's norm (up to rounding).
:meth:`PartBounder.settle` bounds a part by ``exact`` instead (its value is then the part's exact
constant; a tighter certified bound when ``exact`` runs out of time, never a larger one).

Every witness a method returns, and the best of the part's sampled Jacobians, is offered to the
search's lower end (:class:`~lipbound.methods.local_bab_witness.BestWitness`), which re-checks it.

:class:`Outcome` is what either search (part by part, or batched: :mod:`.local_bab_batch`) reached.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..errors import NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Kind, Result
from .local_bab_witness import BestWitness
from .carried_bounds import localize_keeping
from .region import Box
from .slope_box import slope_box_bound

__all__ = ["Outcome", "Part", "PartBounder"]

#: options of ``exact`` on one part: its own lower-bound search is left to the part samples'
#: Jacobians, and a part never takes more than a few seconds
_EXACT_OPTIONS: dict[str, Any] = {"lower_budget": 0.0, "samples": 16, "time_budget": 10.0, "max_nodes": 500}


@dataclass
class Outcome:
    """What a search reached: ``upper`` (certified on the region), the parts left (``parts``),
    bounded (``parts_bounded``), ``stopped`` (why, in words), ``stopped_by``, the largest parts, the
    bound methods and ``cut``: a method run by the search was cut short by its time budget."""

    upper: float
    parts: int
    parts_bounded: int
    stopped: str
    stopped_by: str
    largest: list[dict[str, Any]] = field(default_factory=list)
    bound_methods: list[str] = field(default_factory=lambda: ["slope-box"])
    cut: bool = False


@dataclass(order=True)
class Part:
    """A part of the region in the search's heap (largest upper bound first); ``unstable``: its
    unstable neurons (-1 once ``exact`` ran on it, or unknown); ``lower``: its witness re-checked
    when it raised the search's lower bound, else 0."""

    key: float
    order: int
    low: torch.Tensor = field(compare=False)
    high: torch.Tensor = field(compare=False)
    upper: float = field(compare=False)
    method: str = field(compare=False)
    exact: bool = field(compare=False)
    unstable: int = field(compare=False)
    graph: Graph = field(compare=False, repr=False)
    smear: torch.Tensor | None = field(compare=False, repr=False)
    lower: float = field(compare=False, default=0.0)


class PartBounder:
    """Bounds parts (module doc) until ``deadline``, offering every witness found to ``lower_end``;
    ``cut``: a method run here was cut short by its time budget."""

    def __init__(self, lower_end: BestWitness, registry: Mapping[str, Any], seed: int, upper_methods: Sequence[str],
                 vertex_units: int | None, deadline: float, samples: int) -> None:
        self.lower_end, self.graph, self.registry, self.seed = lower_end, lower_end.graph, registry, seed
        self.upper_methods, self.vertex_units, self.deadline = upper_methods, vertex_units, deadline
        self.samples = samples
        self.count = itertools.count()
        self.cut = False

    def bound(self, low: torch.Tensor, high: torch.Tensor, root: bool = False) -> Part | None:
        """The part ``[low, high]`` bounded by the slope-box bound
        (:func:`~lipbound.methods.slope_box.slope_box_bound`) and ``upper_methods`` on its localized
        graph, the least value kept; None when the budget ended before any bound finished (the
        ``root`` is bounded whatever the budget left)."""
        part = Box(low, high)
        left = self.deadline - time.perf_counter()
        if left <= 0 and not root:
            return None
        g = localize_keeping(self.graph, part)  # the bounds the root graph carries hold on every part
        best: tuple[float, str] | None = None
        unstable, smear = -1, None
        try:
            if self.vertex_units is None:
                unstable = len(g.unstable_neurons())
            else:
                sb = slope_box_bound(g, self.vertex_units)
                best, unstable, smear = (sb.value, "slope-box"), sb.unstable, sb.smear
        except (NotApplicable, UnsupportedOperation):
            pass
        for name in self.upper_methods:
            if time.perf_counter() >= self.deadline:
                break
            res = self._run(name, g, part, {"time_budget": (self.deadline - time.perf_counter()) / 2})
            if res is not None and res.upper is not None and (best is None or res.upper < best[0]):
                best = (res.upper, name)
        if best is None and root:  # the whole region always gets a bound: AutoLip applies to any graph
            res = self._run("autolip", g, part, {})
            if res is not None and res.upper is not None:
                best = (res.upper, "autolip")
        found = self.lower_end.sample(low, high, self.samples)
        if best is None:
            return None
        closed = unstable == 0 and best[1] == "slope-box"  # one Jacobian on the part: its bound is exact
        return Part(-best[0], next(self.count), low, high, best[0], best[1], closed, unstable, g, smear, found)

    def settle(self, top: Part) -> Part:
        """``top`` bounded by ``exact`` on its own localized graph: its value is then the part's
        exact constant (a tighter certified bound when exact runs out of time)."""
        part = Box(top.low, top.high)
        res = self._run("exact", top.graph, part, _EXACT_OPTIONS)
        if res is None or res.upper is None or res.upper > top.upper:
            return dataclasses.replace(top, unstable=-1)
        return dataclasses.replace(top, key=-res.upper, upper=res.upper, method="exact",
                                   exact=res.kind is Kind.EXACT, unstable=-1)

    def search_part(self, top: Part, budget: float) -> None:
        """``lower``'s search on the part ``top`` for ``budget`` seconds: lower bounds rise where
        the upper bounds are (its witness lies in the part, so in the region)."""
        if budget > 0:
            self._run("lower", self.graph, Box(top.low, top.high), {"time_budget": budget})

    def _run(self, name: str, g: Graph, part: Box, options: Mapping[str, Any]) -> Result | None:
        """Method ``name`` on a part's localized graph (None when it does not apply), its witness
        offered as a lower bound."""
        spec = self.registry[name]
        left = self.deadline - time.perf_counter()
        kwargs: dict[str, Any] = dict(options)
        if spec.takes_domain:
            kwargs["domain"] = part
        if spec.budgeted:
            kwargs["time_budget"] = max(1e-3, min(left, kwargs.get("time_budget", left)))
        try:
            res = spec(g, seed=self.seed, **kwargs)
        except (NotApplicable, UnsupportedOperation):
            return None
        self.cut |= res.details.get("stopped_by") == "time"
        if res.lower is not None and res.witness is not None:
            self.lower_end.offer(res.lower, res.witness, name)
        return res
