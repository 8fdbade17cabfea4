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
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool
from ..linalg.spectral import operator_norms
from ..report import Result


def layer_norms(graph: Graph, *, which: str = "both", seed: int = 0, progress: bool = False,
                **power_options: Any) -> dict[str, Any]:
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
    (power-method norms). ``details["nodes"]`` lists each node's factor and running bound."""
    t0 = time.perf_counter()
    g = graph.fused()
    norms = layer_norms(graph, which="certified" if certified else "power", seed=seed, progress=progress,
                        **power_options)
    value, rows = propagate(g, norms, certified=certified)
    return Result("autolip" if certified else "autolip-power", value,
                  "certified_upper" if certified else "estimate", time.perf_counter() - t0,
                  details={"nodes": rows})


def propagate(g: Graph, norms: dict[str, Any], *, certified: bool = True,
              chains: dict[str, tuple[str, float, Sequence[str]]] | None = None) -> tuple[float, list[dict]]:
    """AutoLip's rules over the fused graph ``g`` in topological order; returns ``(L(output), rows)``.

    ``norms`` maps each affine node to its :class:`~lipbound.linalg.spectral.SpectralNorm`
    (``upper`` is used when ``certified``, else ``lower``). ``chains`` (SeqLip) maps the last node
    of a sequential chain to ``(the chain's input node, the chain's constant, its interior nodes)``:
    that node then gets ``L = constant * L(input)`` instead of the product of the chain's factors,
    and the interior nodes (each read only by the next node of the chain) show no running bound.
    """
    chains = chains or {}
    interior = {n for _, _, names in chains.values() for n in names}
    L: dict[str, float] = {}
    rows = []
    for node in g:
        row = {"name": node.name, "origin": node.origin, "shape": list(node.shape), "type": node.kind}
        if isinstance(node, Input):
            L[node.name] = 1.0
            continue
        ins = [L[i] for i in node.inputs]
        if isinstance(node, Affine):
            n = norms[node.name]
            factor = n.upper if certified else n.lower
            row.update(type=node.op.label, power=n.lower, certified=n.upper, certified_how=n.how,
                       exact=n.exact, iterations=n.iterations)
            L[node.name] = factor * ins[0]
        elif isinstance(node, (Activation, MaxPool)):
            factor = node.lipschitz
            row["type"] = node.label if isinstance(node, Activation) else "MaxPool"
            L[node.name] = factor * ins[0]
        elif isinstance(node, Add):
            factor = None
            L[node.name] = sum(ins)
        elif isinstance(node, Concat):
            factor = None
            L[node.name] = math.sqrt(sum(v * v for v in ins))
        else:  # pragma: no cover - every node kind of the IR is handled above
            raise TypeError(f"AutoLip has no rule for {type(node).__name__}")
        if node.name in chains:
            start, constant, _ = chains[node.name]
            L[node.name] = constant * L[start]
            row["chain_constant"] = constant
        row.update(factor=factor, L=None if node.name in interior else L[node.name])
        rows.append(row)
    return L[g.output], rows
