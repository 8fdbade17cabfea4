"""LipSDP-Neuron bounds of the nodes of a neuron branch and bound (:mod:`lipbound.methods.neuron_bab`).

A node is the box with some ReLUs' pre-activation bounds tightened (split at 0, or by LPs and
CROWN); its LipSDP-Neuron bound (L2 -> L2, certified once its LMI is checked in float64) is that
of the graph whose ReLUs carry the node's bounds: the LMI (Fazlyab et al. 2019, Theorem 2) holds
for every increment ``(dx, dh = D W dx)`` with ``D`` in the per-neuron sectors, so it bounds
``||J(D)||_2`` for every ``D`` in the node's slope box. A node whose ancestor has a checked
certificate starts from its multipliers (:mod:`lipbound.methods.lipsdp_warm`: feasible for the
node, a few first-order steps, then the same float64 check); the others, and those where the warm
start does not apply, get a full solve (:func:`lipbound.methods.lipsdp.lipsdp_certificate`).
"""

from __future__ import annotations

import math

import torch

from ..errors import NotApplicable
from ..graph.ir import Activation, Graph
from ..report import Kind
from .lipsdp import lipsdp_certificate
from .lipsdp_warm import SdpState, warm_bound

__all__ = ["NodeSdp"]


class NodeSdp:
    """LipSDP-Neuron's certified bound of a node (module doc) on ``local`` with the ReLUs' pre bounds
    replaced by the node's: warm-started from an ancestor's certificate
    (:func:`.lipsdp_warm.warm_bound`, at most ``warm_iter`` first-order iterations) when there is
    one, else (or when the warm start does not apply) a full solve
    (:func:`.lipsdp.lipsdp_certificate`). ``full`` and ``warm`` count the bounds of each kind."""

    def __init__(self, local: Graph, warm_iter: int) -> None:
        self.local, self.warm_iter = local, warm_iter
        self.names = [n for n, node in local.nodes.items() if isinstance(node, Activation)]
        self.full = self.warm = 0

    def __call__(self, pre: list, seconds: float, parent: SdpState | None) -> tuple[float, SdpState | None]:
        """``(bound, its certificate)`` within ``seconds``; ``(inf, None)`` when nothing is certified
        or LipSDP does not apply (every neuron stable: the interval bound is then the Jacobian's norm)."""
        graph = self.local.localized(self.local.region, {
            n: (torch.from_numpy(l).reshape(self.local.nodes[n].pre[0].shape),
                torch.from_numpy(u).reshape(self.local.nodes[n].pre[0].shape)) for n, (l, u) in zip(self.names, pre)})
        slopes = [tuple(v.reshape(-1).numpy() for v in graph.nodes[n].slope_bounds()) for n in self.names]
        live = [lo != hi for lo, hi in slopes]  # the basis neurons of the node's LMI (lmi_build's rule)
        if parent is not None and self.warm_iter > 0:
            got = warm_bound(parent, live, [lo for lo, _ in slopes], max_iter=self.warm_iter, seconds=seconds)
            if got is not None:
                self.warm += 1
                return got.value, got
        try:
            res, lmi, cert = _full_solve(graph, seconds)
        except NotApplicable:
            return math.inf, None
        self.full += 1
        if res.kind not in (Kind.CERTIFIED_UPPER, Kind.EXACT):
            return math.inf, None
        usable = cert is not None and lmi.n_neurons == int(sum(m.sum() for m in live))
        return res.value, (SdpState(cert.value, lmi, cert.t, live) if usable else None)


def _full_solve(graph: Graph, seconds: float):
    """:func:`.lipsdp.lipsdp_certificate` by the interior point (module doc), else the automatic solver."""
    try:
        return lipsdp_certificate(graph, solver="ipm", time_budget=seconds)
    except NotApplicable:
        return lipsdp_certificate(graph, time_budget=seconds)
