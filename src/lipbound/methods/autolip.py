"""AutoLip (paper, Algorithm 1): a Lipschitz bound propagated over the graph (DESIGN §4).

In topological order, with ``L(input) = 1``, each node gets ``L(node) <= sum_i c_i L(input_i)``
where ``c_i`` is the node's partial Lipschitz constant in its ``i``-th input:

* affine ``x -> A x + b``: ``c = ||A||_2`` (chains of affine nodes are fused first, BatchNorm and
  scalings folded into their convolution or dense layer, so the chain gets one norm);
* element-wise activation with slopes in ``[a, b]``: ``c = max(|a|, |b|)``;
* max pooling: ``c = sqrt(m)``, ``m`` the most windows containing one input
  (``prod_d ceil(k_d / s_d)`` without dilation);
* addition of branches: ``L = sum_i L_i`` (so a residual block ``x + f(x)`` gets ``1 + L(f)``);
* concatenation: ``L = sqrt(sum_i L_i^2)``, valid for the Euclidean norm since the squared
  distances of the parts add up.

With certified layer norms (:func:`~lipbound.linalg.spectral.certified_norm`) every step is an
upper bound, so the result is a **certified upper bound**. With power-method norms (each a lower
estimate of its layer's norm) it is the paper's AutoLip figure, an **estimate**.

The rule is written once, :class:`AutoLipRule`, a visitor of the graph walker
(:class:`~lipbound.graph.walk.GraphInterpreter`), generic in the number type: floats here and in
SeqLip, differentiable torch scalars in the training regulariser (:mod:`lipbound.regularizer`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from ..graph.ir import Activation, Affine, Graph, MaxPool, Node
from ..graph.walk import GraphInterpreter
from ..linalg.spectral import SpectralNorm, operator_norms
from ..report import LayerRow, Result

__all__ = ["AutoLipRule", "autolip", "layer_norms", "propagate"]

Number = TypeVar("Number", float, torch.Tensor)


class AutoLipRule(GraphInterpreter[Number]):
    """AutoLip's propagation (module doc): ``L(input) = 1``; affine: ``||A|| L`` with
    ``||A|| = affine_norm(node)``; activation, max pooling: ``node.lipschitz * L``; addition:
    ``sum_i L_i``; concatenation: ``sqrt(sum_i L_i^2)``. Valid for any number type with ``*``,
    ``+`` and a square root (floats, torch scalars with their gradients)."""

    name = "AutoLip"

    def __init__(self, affine_norm: Callable[[Affine], Number]) -> None:
        self.affine_norm = affine_norm

    def visit_input(self, node: Node) -> Number:
        return 1.0

    def visit_affine(self, node: Affine, L: Number) -> Number:
        return self.affine_norm(node) * L

    def visit_activation(self, node: Activation, L: Number) -> Number:
        return node.lipschitz * L

    visit_maxpool = visit_activation

    def visit_add(self, node: Node, *Ls: Number) -> Number:
        return sum(Ls)

    def visit_concat(self, node: Node, *Ls: Number) -> Number:
        squares = sum(L * L for L in Ls)
        return torch.sqrt(squares) if isinstance(squares, torch.Tensor) else math.sqrt(squares)


def layer_norms(graph: Graph, *, which: str = "both", seed: int = 0, progress: bool = False,
                **power_options: Any) -> dict[str, SpectralNorm]:
    """Norms of every affine node of the fused graph (cached on the operators): ``which`` is
    ``"both"``, ``"certified"`` or ``"power"`` (see :func:`~lipbound.linalg.spectral.operator_norms`)."""
    g = graph.fused()
    nodes = g.affine_nodes()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    bar = tqdm(nodes, desc=f"layer norms ({which})", unit="layer", disable=not progress, leave=False)
    for node in bar:
        bar.set_postfix_str(node.name)
        out[node.name] = operator_norms(node.op, which=which, generator=gen, **power_options)
    return out


def autolip(graph: Graph, *, certified: bool = True, seed: int = 0, progress: bool = False,
            **power_options: Any) -> Result:
    """AutoLip on ``graph``: certified (certified layer norms) or the paper's estimate
    (power-method norms). ``layers`` lists each node's factor and running bound."""
    t0 = time.perf_counter()
    g = graph.fused()
    norms = layer_norms(graph, which="certified" if certified else "power", seed=seed, progress=progress,
                        **power_options)
    value, rows = propagate(g, norms, certified=certified)
    return Result("autolip" if certified else "autolip-power", value,
                  "certified_upper" if certified else "estimate", time.perf_counter() - t0, layers=rows)


Chains = dict[str, tuple[str, float, Sequence[str]]]


def propagate(g: Graph, norms: dict[str, SpectralNorm], *, certified: bool = True,
              chains: Chains | None = None) -> tuple[float, list[LayerRow]]:
    """:class:`AutoLipRule` over the fused graph ``g``; returns ``(L(output), one row per node)``.

    ``norms`` maps each affine node to its :class:`~lipbound.linalg.spectral.SpectralNorm`
    (``upper`` is used when ``certified``, else ``lower``). ``chains`` (SeqLip) maps the last node
    of a sequential chain to ``(the chain's input node, the chain's constant, its interior nodes)``:
    that node then gets ``L = constant * L(input)`` instead of the product of the chain's factors,
    and the interior nodes (each read only by the next node of the chain) show no running bound.
    """
    walk = _Rows(norms, certified, chains or {})
    return walk.output(g), walk.rows


class _Rows(AutoLipRule[float]):
    """:func:`propagate`: the rule, SeqLip's chain constants, and a :class:`LayerRow` per node."""

    def __init__(self, norms: dict[str, SpectralNorm], certified: bool, chains: Chains) -> None:
        super().__init__(lambda node: norms[node.name].upper if certified else norms[node.name].lower)
        self.norms, self.chains = norms, chains
        self.interior = {n for _, _, names in chains.values() for n in names}
        self.L: dict[str, float] = {}
        self.rows: list[LayerRow] = []

    def visit_input(self, node: Node) -> float:
        self.L[node.name] = 1.0
        return 1.0

    def visit_affine(self, node: Affine, L: float) -> float:
        n = self.norms[node.name]
        return self._row(node, super().visit_affine(node, L), type=node.op.label, factor=self.affine_norm(node),
                         power=n.lower, certified=n.upper, certified_how=n.how, exact=n.exact,
                         iterations=n.iterations)

    def visit_activation(self, node: Activation, L: float) -> float:
        return self._row(node, super().visit_activation(node, L), type=node.label, factor=node.lipschitz)

    def visit_maxpool(self, node: MaxPool, L: float) -> float:
        return self._row(node, super().visit_maxpool(node, L), type="MaxPool", factor=node.lipschitz)

    def visit_add(self, node: Node, *Ls: float) -> float:
        return self._row(node, super().visit_add(node, *Ls), type=node.kind)

    def visit_concat(self, node: Node, *Ls: float) -> float:
        return self._row(node, super().visit_concat(node, *Ls), type=node.kind)

    def _row(self, node: Node, L: float, **fields: Any) -> float:
        """Apply a chain constant ending at ``node``, record ``node``'s row, return its bound."""
        constant = None
        if node.name in self.chains:
            start, constant, _ = self.chains[node.name]
            L = constant * self.L[start]
        self.L[node.name] = L
        self.rows.append(LayerRow(node.name, node.origin, shape=tuple(node.shape), chain_constant=constant,
                                  L=None if node.name in self.interior else L, **fields))
        return L
