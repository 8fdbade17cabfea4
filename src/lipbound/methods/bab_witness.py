"""The lower end of ``neuron-bab`` (:mod:`~lipbound.methods.neuron_bab`): candidate witnesses from
the LPs it solves, the witness searches seeded by them, and the graph's own re-check of the best.

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

**The graph's re-check** (:class:`Rechecked`). The net's acceptance test bounds the rounding of its
float64 pre-activations layer by layer (:meth:`~lipbound.methods.exact_network.PiecewiseNet.pieces_at`);
on deep nets that bound grows with depth (before session 10 it doubled at each layer and carried every
neuron's error with the activation's Lipschitz constant: on ERAN 9x200 it reached ``7`` after the eighth
layer and the net rejected every point; now ``5e-9`` there), and a point near a kink is rejected
whatever the depth. So the best candidates are also re-checked on
the graph, as ``lower``'s witnesses are (:func:`~lipbound.methods.lower.jacobian_witness`: the
central-difference re-check of :meth:`~lipbound.methods.witness.Witness.recheck`, points nudged off a
kink when needed): a witness it confirms is a **witnessed lower** bound whatever the net said. The
search prunes against the larger of the two lower ends (a node whose bound is at most a true lower
bound of the constant cannot carry a larger value).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..graph.ir import Graph
from .budget import Clock, stopped_by
from .exact_network import WitnessedNet
from .jacobian import power, through_pieces
from .region import Box
from .witness import PointWitness

__all__ = ["Rechecked", "WitnessPool"]

POWER_STEPS = 30  # power iterations for a point's direction when none is given (a fixed count: same numbers)
RECHECK_POINTS = 8  # the net's best candidates re-checked on the graph at each confirm (their Jacobians' norms)


class Rechecked:
    """The best Jacobian witness of ``graph`` on ``box`` confirmed by the graph's own re-check (module
    doc), independent of the net's acceptance test; ``seed``: the nudges' generator; ``seconds``: the
    cap of each re-check's nudges (only points the re-check rejected are nudged)."""

    def __init__(self, graph: Graph, box: Box, seed: int = 0, seconds: float = 5.0) -> None:
        self.checked = graph.to(device="cpu", dtype=torch.float64)
        self.g64 = through_pieces(graph.fused()).to(device="cpu", dtype=torch.float64)
        self.box, self.shape = box, graph.input_shape
        self.gen, self.seconds = torch.Generator().manual_seed(seed), seconds
        self.witness: PointWitness | None = None

    @property
    def value(self) -> float:
        """The confirmed lower end (``-inf`` without a witness)."""
        return self.witness.value if self.witness is not None else -float("inf")

    def offer(self, x: np.ndarray, v: np.ndarray | None = None) -> None:
        """Re-check the points ``x (B, n)`` with the directions ``v (B, n)`` (None: ``POWER_STEPS``
        power iterations from the all-ones vector) and keep the best confirmed witness."""
        from .lower import jacobian_witness  # a method of its own: imported where used
        x = torch.from_numpy(np.asarray(x, dtype=np.float64)).reshape(len(x), *self.shape)
        if v is None:
            v = power(self.g64.forward, x, torch.ones_like(x), POWER_STEPS)[1]
        else:
            v = torch.from_numpy(np.asarray(v, dtype=np.float64)).reshape(x.shape)
        self.keep(jacobian_witness(self.g64, self.checked, x, v, self.box, self.gen, Clock(self.seconds)))

    def keep(self, witness: Any) -> None:
        """Keep ``witness`` when it is a re-checked Jacobian witness better than the best so far."""
        if isinstance(witness, PointWitness) and witness.value is not None and witness.value > self.value:
            self.witness = witness


class WitnessPool:
    """Candidate witnesses of ``net`` (module doc), kept up to ``capacity`` points; ``rechecked``: the
    graph's re-check of the best of them (None: the net's acceptance alone)."""

    def __init__(self, net: WitnessedNet, capacity: int = 4096, rechecked: Rechecked | None = None) -> None:
        self.net, self.capacity, self.rechecked = net, capacity, rechecked
        self.points: list[np.ndarray] = []
        self.candidates = (np.zeros((0, net.dim)), np.zeros((0, net.dim)), np.zeros(0))  # x, v, norm: for confirm

    @property
    def best(self) -> float:
        """The lower end: the net's best witness or the graph's re-checked one, the larger."""
        return max(self.net.best, self.rechecked.value if self.rechecked is not None else -float("inf"))

    @property
    def kept(self) -> int:
        """How many points are kept as starts (at most ``capacity``)."""
        return sum(len(p) for p in self.points)

    def add(self, x: np.ndarray) -> None:
        """Offer the points ``x (B, n)`` (clipped into the box) to the net and keep them as starts."""
        x = np.clip(np.asarray(x, dtype=np.float64).reshape(len(x), -1), self.net.lo, self.net.hi)
        self.net.sample(x)
        if self.rechecked is not None:
            self._rank(x)
        room = self.capacity - self.kept
        if room > 0:
            self.points.append(x[:room])

    def confirm(self) -> None:
        """Re-check on the graph (:class:`Rechecked`) the ``RECHECK_POINTS`` points added since the
        last call whose float64 Jacobians (the net's, at the pieces of their float pre-activations:
        not yet a bound) have the largest norms, each with its top right singular vector."""
        x, v, _ = self.candidates
        if self.rechecked is None or not len(x):
            return
        self.candidates = (x[:0], v[:0], np.zeros(0))
        self.rechecked.offer(x, v)

    def _rank(self, x: np.ndarray) -> None:
        """Merge the points ``x`` into the ``RECHECK_POINTS`` candidates of :meth:`confirm`."""
        piece, _, _ = self.net.pieces_at(x)
        _, s, vh = np.linalg.svd(self.net.jacobians(self.net.slopes(piece)), full_matrices=False)
        xs, vs, norms = (np.concatenate(p) for p in zip(self.candidates, (x, vh[:, 0], s[:, 0])))
        top = np.argsort(-norms, kind="stable")[:RECHECK_POINTS]
        self.candidates = (xs[top], vs[top], norms[top])

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
            if self.rechecked is not None:
                self.rechecked.keep(found.witness)  # re-checked on the graph already
        return stopped_by(stops)

    def _data(self, graph: Graph) -> dict[str, Any]:
        if not self.points:
            return {}
        x = torch.from_numpy(np.concatenate(self.points))
        return {"data": x.reshape(len(x), *graph.input_shape)}
