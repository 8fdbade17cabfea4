"""``exact``'s branch and bound (:mod:`.exact_search`) on one part of ``local-bab``'s batched search
(:mod:`.local_bab_batch`): the part's own constant, with the infeasible slope combinations dropped.

A part ``P`` (a box) of a ReLU chain with sound pre bounds ``[l, u]`` on ``P``
(:func:`.relu_boxes.pre_bounds`) is searched as ``exact`` searches a localized graph: the network's
float64 layers (:func:`.piecewise.mlp_layers` of the search's graph, the convention of ``exact`` and of
witnesses: the function the float64 parameters define) with ``pre = [l, u]``, the box ``P``. The pre
bounds of :mod:`.relu_boxes` hold for every network within the chain's weight enclosures
(``|W - W*| <= E``), so for these float64 layers too; the layers are checked to be the chain's
matrices bit for bit (:class:`PartExact` refuses otherwise). Only the unstable neurons are branched
on; a pattern's region is kept unless an LP's dual, checked in exact arithmetic, proves it empty
(module doc of :mod:`.exact`).

**Seeded with the search's lower bound** ``t`` (:attr:`WitnessedNet.best`, no witness): a node
whose bound is at most ``t (1 + rtol)`` is pruned, which is all the search needs (a part bounded
by ``(1 + tol) t`` no longer widens the bracket). Every node dropped is either proved empty, a
witnessed leaf (``||J_P|| <=`` the best value), or pruned at ``<= best (1 + rtol)``; the nodes left
are bounded by ``upper()``, and ``best <= upper()``. So ``upper() (1 + rtol)`` bounds the constant
on ``P``, times :data:`~lipbound.linalg.spectral.CERTIFIED_RTOL`'s margin for the SVDs, as in
``exact``: that is :attr:`PartBound.upper`, certified. A point the search verified inside a region
with ``||J_P||`` above ``t`` is returned as a witness candidate (the caller re-checks it).

The search stops after ``max_nodes`` nodes (a work cap) or at the deadline (an outer cap); either
way its bound is certified, only looser.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..linalg.spectral import CERTIFIED_RTOL
from .exact_search import BranchAndBound
from .piecewise import DenseLayer, mlp_layers
from .region import Box
from .relu_boxes import Layer

__all__ = ["PartBound", "PartExact"]


@dataclass(frozen=True)
class PartBound:
    """What ``exact`` reached on one part: ``upper`` (certified on the part), ``solved`` (the search
    finished: ``upper`` is the part's constant or the seed, within ``rtol``), the witness candidate
    ``(x, v, value)`` (None when no verified point beat the seed), ``nodes`` and ``timed_out``."""

    upper: float
    solved: bool
    witness: tuple[torch.Tensor, torch.Tensor, float] | None
    nodes: int
    timed_out: bool


class PartExact:
    """``exact`` on parts of one ReLU chain (module doc): the float64 layers and their exact-integer
    numbers are built once and shared by every part."""

    def __init__(self, graph: Graph, chain: list[Layer], rtol: float, max_nodes: int) -> None:
        try:
            layers = mlp_layers(graph, method="local-bab")
        except UnsupportedOperation as exc:
            raise NotApplicable(f"local-bab: exact on parts: {exc}") from None
        same = len(layers) == len(chain) and all(
            torch.equal(a.weight, c.W) and torch.equal(a.bias, c.b) for a, c in zip(layers, chain))
        if not same:
            raise NotApplicable("local-bab: exact on parts needs the chain's float64 layers as exact builds them")
        self.layers: list[DenseLayer] = layers
        self.rtol, self.max_nodes = rtol, max_nodes
        self._integers = None  # the exact numbers of the first part's net, shared with the others

    def bound(self, low: torch.Tensor, high: torch.Tensor, pre: list[tuple[torch.Tensor, torch.Tensor]],
              seed: float, deadline: float) -> PartBound:
        """The part ``[low, high]`` (flat float64) with its pre bounds ``pre`` (one ``(l, u)`` pair of
        ``(n_k,)`` tensors per ReLU layer), the search seeded with the lower bound ``seed``."""
        hidden = [dataclasses.replace(layer, pre=lu) for layer, lu in zip(self.layers, pre)]
        bb = BranchAndBound([*hidden, self.layers[-1]], Box(low, high), self.rtol)
        if self._integers is None:
            self._integers = bb.integers
        bb.share_integers(self._integers)
        bb.best = seed
        status = bb.run(deadline, False, ((low + high) / 2).numpy(), self.max_nodes)
        upper = bb.upper() * (1 + self.rtol) * (1 + CERTIFIED_RTOL)
        witness = None
        if bb.best_x is not None:
            witness = (torch.from_numpy(bb.best_x), torch.from_numpy(np.asarray(bb.best_v)), bb.best)
        return PartBound(upper, status == "solved", witness, bb.nodes, status == "time budget spent")
