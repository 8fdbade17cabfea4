"""AutoLip (paper, Algorithm 1): a Lipschitz bound propagated over the graph (DESIGN §4).

In topological order, with ``L(input) = 1``, each node gets ``L(node) <= sum_i c_i L(input_i)``
where ``c_i`` is the node's partial Lipschitz constant in its ``i``-th input:

* affine ``x -> A x + b``: ``c = ||A||_2`` (chains of affine nodes are fused first, BatchNorm and
  scalings folded into their convolution or dense layer, so the chain gets one norm);
* element-wise activation with slopes in ``[a, b]``: ``c = max(|a|, |b|)``; on a region, with
  per-neuron constants ``s_i = max(|lo_i|, |hi_i|)`` (:meth:`~lipbound.graph.ir.Activation.lipschitz_bounds`),
  see *Regions* below;
* max pooling: ``c = sqrt(m)``, ``m`` the most windows containing one input
  (``prod_d ceil(k_d / s_d)`` without dilation);
* addition of branches: ``L = sum_i L_i`` (so a residual block ``x + f(x)`` gets ``1 + L(f)``);
* concatenation: ``L = sqrt(sum_i L_i^2)``, valid for the Euclidean norm since the squared
  distances of the parts add up.

**Regions.** On a localized graph (each activation's ``pre`` bounds hold on a convex region
``X``), for ``x, y`` in ``X`` every neuron's input stays in ``[l_i, u_i]`` along the segment, so
``s(z_x) - s(z_y) = d_i (z_x - z_y)`` with a secant slope ``|d_i| <= s_i`` (graph IR docstring).
When an activation's ``s`` are not all equal and its single input is an affine node ``A`` read by
it alone, the affine node's factor becomes the certified norm of ``diag(s) A`` and the
activation's factor 1: ``D A = diag(d / s) diag(s) A`` with ``||diag(d / s)|| <= 1`` (a neuron
stably off, ``s_i = 0``, has ``d_i = 0``: its row of ``diag(s) A`` is zero, removed). Otherwise the
activation's factor is ``max_i s_i``. Either way the chain of inequalities holds for every pair
``x, y`` in ``X``, so the result bounds the constant on ``X``. Max pooling keeps its global factor.
Without ``pre`` every ``s_i`` is the global ``max(|a|, |b|)``: the numbers are the global ones.

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
from dataclasses import replace
from typing import Any, Callable, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from ..errors import InvalidInput
from ..graph.ir import Activation, Affine, Graph, MaxPool, Node
from ..graph.walk import GraphInterpreter
from ..linalg.dense_gram import CHOLESKY_MIN_SIDE
from ..linalg.operators import Dense, Diagonal, LinearOperator, compose
from ..linalg.spectral import DENSE_LIMIT, SpectralNorm, certified_norm, operator_norms
from ..report import LayerRow, Result

__all__ = ["AutoLipRule", "autolip", "layer_norms", "propagate", "slope_scales"]

Number = TypeVar("Number", float, torch.Tensor)
BUDGET_CUT = "time budget spent: "  # prefix of ``SpectralNorm.how`` for a norm the budget cut short
SVD_RATE = 1e9  # m n min(m, n) per second: a float64 SVD on one slow core (measured 1.0-1.8e9), conservative
GRAM_RATE = 1e10  # the same for the Gram + shifted-Cholesky certificate (measured 2.6e10 at 4096 x 9216), conservative


def slope_scales(g: Graph) -> dict[str, torch.Tensor]:
    """Affine node name -> the per-neuron constants ``s`` of the activation that alone reads it,
    for every activation with ``pre`` bounds whose ``s`` are not all equal (module doc, *Regions*):
    that node's factor is the norm of ``diag(s) A`` and the activation's factor is 1."""
    users = g.users()
    out: dict[str, torch.Tensor] = {}
    for node in g:
        if not isinstance(node, Activation) or node.pre is None or len(node.inputs) != 1:
            continue
        src = g.nodes[node.inputs[0]]
        s = node.lipschitz_bounds()
        if isinstance(src, Affine) and users[src.name] == [node.name] and bool((s != s.flatten()[0]).any()):
            out[src.name] = s
    return out


def scaled_operator(op: LinearOperator, s: torch.Tensor) -> LinearOperator:
    """``diag(s) A`` in float64 (``s`` is not rounded down; a dense or per-channel factor folds into
    the layer's weight)."""
    op64 = op.to(dtype=torch.float64)
    return compose(op64, Diagonal(s.to(device=op64.device), op64.out_shape, "slopes"))


class AutoLipRule(GraphInterpreter[Number]):
    """AutoLip's propagation (module doc): ``L(input) = 1``; affine: ``||A|| L`` with
    ``||A|| = affine_norm(node)``; activation: its factor (:meth:`activation_factor`) times ``L``;
    max pooling: ``node.lipschitz * L``; addition: ``sum_i L_i``; concatenation:
    ``sqrt(sum_i L_i^2)``. Valid for any number type with ``*``, ``+`` and a square root (floats,
    torch scalars with their gradients). ``scales`` (:func:`slope_scales`) names the affine nodes
    whose ``affine_norm`` already holds their activation's per-neuron constants."""

    name = "AutoLip"

    def __init__(self, affine_norm: Callable[[Affine], Number], scales: dict[str, torch.Tensor] | None = None) -> None:
        self.affine_norm = affine_norm
        self.scales = scales or {}

    def activation_factor(self, node: Activation) -> float:
        """1 when its constants are in its input's norm; else ``max_i s_i`` on a region, and the
        global ``max(|a|, |b|)`` without ``pre``."""
        if node.pre is None:
            return node.lipschitz
        if node.inputs[0] in self.scales:
            return 1.0
        return float(node.lipschitz_bounds().max())

    def visit_input(self, node: Node) -> Number:
        return 1.0

    def visit_affine(self, node: Affine, L: Number) -> Number:
        return self.affine_norm(node) * L

    def visit_activation(self, node: Activation, L: Number) -> Number:
        return self.activation_factor(node) * L

    def visit_maxpool(self, node: MaxPool, L: Number) -> Number:
        return node.lipschitz * L

    def visit_add(self, node: Node, *Ls: Number) -> Number:
        return sum(Ls)

    def visit_concat(self, node: Node, *Ls: Number) -> Number:
        squares = sum(L * L for L in Ls)
        return torch.sqrt(squares) if isinstance(squares, torch.Tensor) else math.sqrt(squares)


def layer_norms(graph: Graph, *, which: str = "both", seed: int = 0, progress: bool = False,
                scales: dict[str, torch.Tensor] | None = None, deadline: float | None = None,
                **power_options: Any) -> dict[str, SpectralNorm]:
    """Norms of every affine node of the fused graph (cached on the operators): ``which`` is
    ``"both"``, ``"certified"`` or ``"power"`` (see :func:`~lipbound.linalg.spectral.operator_norms`).

    ``scales`` (:func:`slope_scales`): those nodes get the norms of ``diag(s) A``. ``deadline``
    (a ``time.perf_counter()`` value): power iterations are capped to the steps that fit before
    it (timed on one step of the layer), an SVD of a materialised matrix that is not expected to
    end before it is replaced by the structural bound (:func:`_svd_fits`), and after it each remaining layer gets only its cheap
    certified bound (the operator's structural bound: the DFT bound of a convolution, the SVD or
    Gram + Cholesky certificate of a dense weight, products for compositions; no materialised matrix), as ``upper`` and without
    ``lower``. The ``how`` of a norm the budget changed starts with :data:`BUDGET_CUT`."""
    g = graph.fused()
    scales = scales or {}
    nodes = g.affine_nodes()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    bar = tqdm(nodes, desc=f"layer norms ({which})", unit="layer", disable=not progress, leave=False)
    for node in bar:
        bar.set_postfix_str(node.name)
        op = scaled_operator(node.op, scales[node.name]) if node.name in scales else node.op
        if deadline is None:
            out[node.name] = operator_norms(op, which=which, generator=gen, **power_options)
        elif time.perf_counter() >= deadline:
            cheap = certified_norm(op, dense_limit=0)
            out[node.name] = SpectralNorm(None, cheap.value, BUDGET_CUT + cheap.how, cheap.exact, 0)
        else:
            options = dict(power_options)
            if which != "certified":
                options["max_iter"] = _steps_before(op, deadline, options.get("k", 1), options.get("max_iter", 1000))
            cut = which != "power" and not _svd_fits(op, deadline, options.get("dense_limit", DENSE_LIMIT))
            if cut:
                options["dense_limit"] = 0
            n = operator_norms(op, which=which, generator=gen, **options)
            out[node.name] = replace(n, how=BUDGET_CUT + n.how) if cut else n
    return out


def _svd_fits(op: LinearOperator, deadline: float, dense_limit: int) -> bool:
    """False when :func:`~lipbound.linalg.spectral.certified_norm` would take the SVD (or the Gram +
    shifted-Cholesky certificate, :mod:`~lipbound.linalg.dense_gram`) of ``op``'s materialised
    ``m x n`` matrix, that is not expected to end before ``deadline`` (``m n min(m, n) / SVD_RATE``
    seconds, ``/ GRAM_RATE`` for the certificate) and the operator has a structural bound to use instead."""
    m, n = op.out_numel, op.in_numel
    rate = GRAM_RATE if Dense.method != "svd" and min(m, n) >= CHOLESKY_MIN_SIDE else SVD_RATE
    if m * n > dense_limit or time.perf_counter() + m * n * min(m, n) / rate <= deadline:
        return True
    bound = op.structural_bound()
    return bound is None or bound.exact


def _steps_before(op: LinearOperator, deadline: float, k: int, max_iter: int) -> int:
    """``max_iter``, or fewer: the power steps (one ``gram`` of ``k`` vectors each, the faster of two timed calls)
    that fit before ``deadline``, at least 1. A layer that converges within them gets the same
    numbers as without a deadline."""
    v = torch.zeros((min(k, op.in_numel, op.out_numel), *op.in_shape), dtype=op.dtype, device=op.device)
    steps = []
    for _ in range(2):  # the first call may pay one-off costs (allocation, kernel choice)
        t = time.perf_counter()
        op.gram(v)
        steps.append(time.perf_counter() - t)
    step = max(min(steps), 1e-9)
    return max(1, min(max_iter, int((deadline - time.perf_counter()) / step)))


def autolip(graph: Graph, *, certified: bool = True, seed: int = 0, progress: bool = False,
            time_budget: float | None = None, **power_options: Any) -> Result:
    """AutoLip on ``graph``: certified (certified layer norms) or the paper's estimate
    (power-method norms). ``layers`` lists each node's factor and running bound. On a localized
    graph the per-neuron slopes enter as in the module doc (*Regions*).

    ``time_budget``: total seconds of the call (None: no limit). Power iterations stop at the
    deadline; an SVD that would overrun it, and every layer reached after it, get the layer's
    cheap certified bound instead (:func:`layer_norms`), so ``autolip`` stays a certified upper
    bound. ``details["budget_cut"]`` names those layers."""
    if time_budget is not None and not time_budget >= 0:
        raise InvalidInput(f"autolip: time_budget must be >= 0 seconds, got {time_budget}")
    t0 = time.perf_counter()
    g = graph.fused()
    scales = slope_scales(g)
    norms = layer_norms(graph, which="certified" if certified else "power", seed=seed, progress=progress,
                        scales=scales, deadline=None if time_budget is None else t0 + time_budget, **power_options)
    value, rows = propagate(g, norms, certified=certified, scales=scales)
    cut = [name for name, n in norms.items() if n.how.startswith(BUDGET_CUT)]
    details: dict[str, Any] = {}
    if scales:
        details["slope_scaled"] = sorted(scales)
    if cut:
        details["budget_cut"] = cut
        details["note"] = (f"the time budget ({time_budget} s) ran out: {len(cut)} layer(s) got their cheap certified "
                           "bound (structural, no SVD of the materialised matrix)")
    return Result("autolip" if certified else "autolip-power", value,
                  "certified_upper" if certified else "estimate", time.perf_counter() - t0, details=details,
                  layers=rows)


Chains = dict[str, tuple[str, float, Sequence[str]]]


def propagate(g: Graph, norms: dict[str, SpectralNorm], *, certified: bool = True,
              chains: Chains | None = None, scales: dict[str, torch.Tensor] | None = None) -> tuple[float, list[LayerRow]]:
    """:class:`AutoLipRule` over the fused graph ``g``; returns ``(L(output), one row per node)``.

    ``norms`` maps each affine node to its :class:`~lipbound.linalg.spectral.SpectralNorm`
    (``upper`` is used when ``certified`` or when the budget left no ``lower``, else ``lower``).
    ``scales``: the nodes whose norms are those of ``diag(s) A`` (:func:`slope_scales`, given to
    :func:`layer_norms` too). ``chains`` (SeqLip) maps the last node
    of a sequential chain to ``(the chain's input node, the chain's constant, its interior nodes)``:
    that node then gets ``L = constant * L(input)`` instead of the product of the chain's factors,
    and the interior nodes (each read only by the next node of the chain) show no running bound.
    """
    walk = _Rows(norms, certified, chains or {}, scales or {})
    return walk.output(g), walk.rows


class _Rows(AutoLipRule[float]):
    """:func:`propagate`: the rule, SeqLip's chain constants, and a :class:`LayerRow` per node."""

    def __init__(self, norms: dict[str, SpectralNorm], certified: bool, chains: Chains,
                 scales: dict[str, torch.Tensor]) -> None:
        def norm(node: Affine) -> float:
            n = norms[node.name]
            return n.upper if certified or n.lower is None else n.lower
        super().__init__(norm, scales)
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
        return self._row(node, super().visit_activation(node, L), type=node.label, factor=self.activation_factor(node))

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
