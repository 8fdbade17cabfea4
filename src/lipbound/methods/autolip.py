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
from ..linalg.operators import Dense, Diagonal, LinearOperator, compose
from ..linalg.spectral import DENSE_LIMIT, SpectralNorm, certified_norm, operator_norms
from ..report import LayerRow, Result
from .budget import Clock, stopped_by
from .work_plan import Allowance, dense_norm_seconds, gram_step_seconds, power_steps

__all__ = ["AutoLipRule", "autolip", "layer_norms", "propagate", "slope_scales"]

Number = TypeVar("Number", float, torch.Tensor)
BUDGET_CUT = "time budget spent: "  # prefix of ``SpectralNorm.how`` for a norm the clock cut short
PLANNED = "planned within the time budget: "  # prefix for a norm the budget's work plan reduced


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
                scales: dict[str, torch.Tensor] | None = None, time_budget: float | None = None,
                clock: Clock | None = None, **power_options: Any) -> dict[str, SpectralNorm]:
    """Norms of every affine node of the fused graph (cached on the operators): ``which`` is
    ``"both"``, ``"certified"`` or ``"power"`` (see :func:`~lipbound.linalg.spectral.operator_norms`).

    ``scales`` (:func:`slope_scales`): those nodes get the norms of ``diag(s) A``.

    ``time_budget`` (seconds; None: no limit) sets a **plan** made before any work from the
    layers' sizes only (:mod:`~lipbound.methods.work_plan`, :func:`_plan`), so that the same graph
    and budget give the same numbers: the certified norms of materialised matrices are taken in
    layer order while their predicted seconds fit (in the whole budget for ``"certified"``, in half
    of it for ``"both"``); a layer left out gets its structural bound (the DFT bound of a
    convolution, products for compositions), its ``how`` starting with :data:`PLANNED`. The power
    steps of every layer are capped (``max_iter``) so that all of them fit in what is left.
    ``clock`` (default: a :class:`~lipbound.methods.budget.Clock` of ``time_budget``) is the
    outer cap: once it has expired, each remaining layer gets only its cheap certified bound (the
    operator's structural bound, no materialised matrix) as ``upper`` and no ``lower``, its
    ``how`` starting with :data:`BUDGET_CUT`."""
    g = graph.fused()
    scales = scales or {}
    nodes = g.affine_nodes()
    ops = [scaled_operator(n.op, scales[n.name]) if n.name in scales else n.op for n in nodes]
    plans = _plan(ops, which, time_budget, power_options)
    if clock is None and time_budget is not None:
        clock = Clock(time_budget)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    bar = tqdm(total=len(nodes), desc=f"layer norms ({which})", unit="layer", disable=not progress, leave=False)
    for node, op, (options, prefix) in zip(nodes, ops, plans):
        bar.set_postfix_str(node.name)
        if clock is not None and clock.expired():
            cheap = certified_norm(op, dense_limit=0)
            out[node.name] = SpectralNorm(None, cheap.value, BUDGET_CUT + cheap.how, cheap.exact, 0)
        else:
            n = operator_norms(op, which=which, generator=gen, **options)
            planned_steps = options.get("max_iter", 1000) < power_options.get("max_iter", 1000)
            if planned_steps and not n.exact and n.iterations >= options["max_iter"]:
                prefix = PLANNED  # the plan's cap on the power steps ended this layer's iteration
            out[node.name] = replace(n, how=prefix + n.how) if prefix else n
        bar.update(1)
    bar.close()
    return out


def _plan(ops: list[LinearOperator], which: str, time_budget: float | None,
          power_options: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Per operator, the options of :func:`~lipbound.linalg.spectral.operator_norms` and the
    prefix of its ``how`` (:data:`PLANNED` when the plan left out its materialised matrix, else
    ``""``), from predicted seconds only (:func:`layer_norms`). A materialised matrix is kept
    whatever its cost when the operator has no structural bound to use instead (or an exact one)."""
    if time_budget is None:
        return [(dict(power_options), "") for _ in ops]
    dense_limit = power_options.get("dense_limit", DENSE_LIMIT)
    shares = {"certified": 1.0, "both": 0.5, "power": 0.0}
    allowance = Allowance(shares[which] * time_budget)
    plans = []
    for op in ops:
        options, prefix = dict(power_options), ""
        if which != "power" and (isinstance(op, Dense) or op.in_numel * op.out_numel <= dense_limit):
            if not allowance.take(dense_norm_seconds(op)) and not isinstance(op, Dense):
                bound = op.structural_bound()
                if bound is not None and not bound.exact:
                    options["dense_limit"], prefix = 0, PLANNED
        plans.append((options, prefix))
    if which != "certified":
        k, max_iter = power_options.get("k", 1), power_options.get("max_iter", 1000)
        spent = shares[which] * time_budget - allowance.left
        steps = power_steps((gram_step_seconds(op, k) for op in ops), time_budget - spent, max_iter)
        for options, _ in plans:
            options["max_iter"] = steps
    return plans


def autolip(graph: Graph, *, certified: bool = True, seed: int = 0, progress: bool = False,
            time_budget: float | None = None, **power_options: Any) -> Result:
    """AutoLip on ``graph``: certified (certified layer norms) or the paper's estimate
    (power-method norms). ``layers`` lists each node's factor and running bound. On a localized
    graph the per-neuron slopes enter as in the module doc (*Regions*).

    ``time_budget``: total seconds of the call (None: no limit). What is computed is planned from
    the layers' sizes and the budget (:func:`layer_norms`): a materialised SVD predicted not to fit
    gives way to the layer's structural bound, the power steps are capped so that all layers fit;
    the same graph and budget give the same numbers (``details["planned"]`` names the layers the
    plan changed, ``stopped_by`` is then ``"work"``). The clock is the outer cap: every layer
    reached after it gets its cheap certified bound (``details["budget_cut"]``, ``stopped_by``
    ``"time"``), so ``autolip`` stays a certified upper bound."""
    if time_budget is not None and not time_budget >= 0:
        raise InvalidInput(f"autolip: time_budget must be >= 0 seconds, got {time_budget}")
    t0 = time.perf_counter()
    g = graph.fused()
    scales = slope_scales(g)
    norms = layer_norms(graph, which="certified" if certified else "power", seed=seed, progress=progress,
                        scales=scales, time_budget=time_budget, **power_options)
    value, rows = propagate(g, norms, certified=certified, scales=scales)
    cut = [name for name, n in norms.items() if n.how.startswith(BUDGET_CUT)]
    planned = [name for name, n in norms.items() if n.how.startswith(PLANNED)]
    max_iter = power_options.get("max_iter", 1000)
    ran_out = [] if certified else [name for name, n in norms.items() if not n.exact and n.iterations >= max_iter]
    details: dict[str, Any] = {"stopped_by": stopped_by(["work"] * bool(planned) + ["iterations"] * bool(ran_out)
                                                        + ["time"] * bool(cut))}
    if scales:
        details["slope_scaled"] = sorted(scales)
    if planned:
        details["planned"] = planned
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
