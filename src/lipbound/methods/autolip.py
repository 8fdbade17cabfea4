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
from typing import Any

import torch
from tqdm.auto import tqdm

from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool
from ..linalg.spectral import operator_norms
from ..report import Result


def layer_norms(graph: Graph, *, seed: int = 0, progress: bool = False, **power_options: Any) -> dict[str, Any]:
    """Power-method and certified norms of every affine node of the fused graph (cached)."""
    g = graph.fused()
    nodes = g.affine_nodes()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    bar = tqdm(nodes, desc="layer norms", unit="layer", disable=not progress, leave=False)
    for node in bar:
        bar.set_postfix_str(node.name)
        out[node.name] = operator_norms(node.op, generator=gen, **power_options)
    return out


def autolip(graph: Graph, *, certified: bool = True, seed: int = 0, progress: bool = False,
            **power_options: Any) -> Result:
    """AutoLip on ``graph``: certified (certified layer norms) or the paper's estimate
    (power-method norms). ``details["nodes"]`` lists each node's factor and running bound."""
    t0 = time.perf_counter()
    g = graph.fused()
    norms = layer_norms(graph, seed=seed, progress=progress, **power_options)
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
        row.update(factor=factor, L=L[node.name])
        rows.append(row)
    value = L[g.output]
    return Result("autolip" if certified else "autolip-power", value,
                  "certified_upper" if certified else "estimate", time.perf_counter() - t0,
                  details={"nodes": rows})
