"""The lower end of ``neuron-bab`` (:mod:`~lipbound.methods.neuron_bab`): candidate witnesses from
the LPs it solves, and the witness searches seeded by them.

**Candidates.** Each LP that tightens a neuron's bound (:mod:`~lipbound.methods.split_lp`) ends at a
vertex of the relaxation whose input ``x`` lies in the box and drives a pre-activation to its
extreme: such points sit in regions with many neurons active at once, where ``||J(x)||_2`` tends to
be large. :class:`WitnessPool` offers each of them to the net at once (a point inside a linear
region, off every kink, is a witness of ``||J(x)||_2``:
:meth:`~lipbound.methods.exact_network.WitnessedNet.sample`) and keeps them (at most ``capacity``,
the first ones) as starts for :meth:`WitnessPool.search`.

**The search.** ``lower`` (:mod:`~lipbound.methods.lower`: smoothed ascent, region walk from the best
points, re-checked witnesses) with the kept points as its data (the best half of its starts begin
at the best of them), then ``lower-milp`` on its share. Each returned point witness is offered to the
net again, which accepts it only inside the box and off every kink: nothing here needs to be
trusted, the value stays a **witnessed lower** bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..graph.ir import Graph
from .budget import stopped_by
from .exact_network import WitnessedNet
from .region import Box

__all__ = ["WitnessPool"]


class WitnessPool:
    """Candidate witnesses of ``net`` (module doc), kept up to ``capacity`` points."""

    def __init__(self, net: WitnessedNet, capacity: int = 4096) -> None:
        self.net, self.capacity = net, capacity
        self.points: list[np.ndarray] = []

    @property
    def kept(self) -> int:
        """How many points are kept as starts (at most ``capacity``)."""
        return sum(len(p) for p in self.points)

    def add(self, x: np.ndarray) -> None:
        """Offer the points ``x (B, n)`` (clipped into the box) to the net and keep them as starts."""
        x = np.clip(np.asarray(x, dtype=np.float64).reshape(len(x), -1), self.net.lo, self.net.hi)
        self.net.sample(x)
        room = self.capacity - self.kept
        if room > 0:
            self.points.append(x[:room])

    def search(self, graph: Graph, box: Box, seed: int, shares: tuple[float, float], budget: float) -> str:
        """Run ``lower`` (on ``shares[0] * budget`` seconds, the kept points as its data) and
        ``lower-milp`` (on ``shares[1] * budget``) on ``graph`` over ``box``; offer their point
        witnesses to the net; return what stopped them (:func:`.budget.stopped_by`)."""
        from .lower import lower  # methods of their own: imported where used
        from .lower_milp import lower_milp
        stops = []
        for method, share, extra in ((lower, shares[0], self._data(graph)), (lower_milp, shares[1], {})):
            if share <= 0 or not self.net.kinked:
                continue
            found = method(graph, seed=seed, domain=box, time_budget=share * budget, **extra)
            stops.append(found.details.get("stopped_by", "converged"))
            x = getattr(found.witness, "x", None)  # a point witness (a pair gives no Jacobian)
            if x is not None:
                self.add(x.reshape(1, -1).to(torch.float64).numpy())
        return stopped_by(stops)

    def _data(self, graph: Graph) -> dict[str, Any]:
        if not self.points:
            return {}
        x = torch.from_numpy(np.concatenate(self.points))
        return {"data": x.reshape(len(x), *graph.input_shape)}
