"""The lower end of ``local-bab`` (:mod:`.local_bab`): the best **witnessed lower bound** found on
the region so far, shared by both searches (:mod:`.local_bab_serial`, :mod:`.local_bab_batch`).

Every candidate is a :class:`~lipbound.methods.witness.Witness` re-checked on the network and in the
region itself before it is kept (:meth:`BestWitness.offer`): a part's box may stick out of the
region it bounds (the bounding box of an infinity ball, rounded outwards), so a point of a part is
not trusted to lie in the region. A re-checked witness's value is ``<= L`` on the region by
:meth:`~lipbound.methods.witness.Witness.recheck`; nothing else here needs to be trusted.

Candidates from sampling (:meth:`BestWitness.sample`): the Jacobian ``J(x)`` at a point of a part,
by float64 autograd, and its top right singular vector ``v``: ``||J(x) v|| = ||J(x)||_2``, a
:class:`~lipbound.methods.witness.PointWitness` wherever the network is ``C^1`` near ``x`` (the
re-check refuses it on a kink or a tie). The points are drawn from :attr:`BestWitness.generator`,
seeded: same seed, same points.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InvalidInput
from ..graph.ir import Graph
from .witness import PointWitness, Witness

__all__ = ["BestWitness"]


class BestWitness:
    """The best witnessed lower bound of ``graph``'s constant on ``region``: ``lower`` (0 until a
    witness re-checks), its ``witness`` and ``lower_from`` (which search or method found it)."""

    def __init__(self, graph: Graph, region: Any, seed: int) -> None:
        self.graph, self.region = graph, region
        self.generator = torch.Generator().manual_seed(seed)
        self.lower: float = 0.0
        self.witness: Witness | None = None
        self.lower_from: str | None = None

    def offer(self, value: float, witness: Witness, source: str = "lower", checked: bool = False) -> None:
        """Keep ``witness`` when it beats the best lower bound, re-checked in the region itself
        unless ``checked`` (a part's box may stick out of the region it bounds)."""
        if value <= self.lower:
            return
        if not checked:
            try:
                value = witness.recheck(self.graph, self.region)
            except InvalidInput:
                return
            if value <= self.lower:
                return
        self.lower, self.witness, self.lower_from = value, witness, source

    def sample(self, low: torch.Tensor, high: torch.Tensor, samples: int) -> float:
        """The largest Jacobian norm (float64 autograd, one backward pass per output) at the part's
        centre and ``samples - 1`` uniform points of it; the best point is re-checked as a witness
        on the whole region when it would raise the lower bound. Returns the re-checked value
        (0 when none was re-checked or it did not re-check: on a kink or a tie)."""
        n = max(1, samples)
        u = torch.rand((n - 1, *low.shape), generator=self.generator, dtype=torch.float64)
        x = torch.cat([((low + high) / 2)[None], low + (high - low) * u]).requires_grad_(True)
        out = self.graph(x).reshape(n, -1)
        rows = [torch.autograd.grad(out[:, k].sum(), x, retain_graph=k + 1 < out.shape[1])[0].reshape(n, -1)
                for k in range(out.shape[1])]
        J = torch.stack(rows, dim=1).detach()  # (n, outputs, inputs)
        norms = torch.linalg.matrix_norm(J, ord=2)
        best = int(norms.argmax())
        if not math.isfinite(float(norms[best])) or float(norms[best]) <= self.lower:
            return 0.0
        v = torch.linalg.svd(J[best], full_matrices=False).Vh[0].reshape(low.shape)
        point = x[best].detach()
        try:
            value = PointWitness(point, v).recheck(self.graph, self.region)
        except InvalidInput:
            return 0.0
        self.offer(value, PointWitness(point, v, value), "part samples", checked=True)
        return value
