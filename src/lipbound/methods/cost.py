"""The cost model: what a method is predicted to cost on a graph, from the graph's sizes alone.

The default set (:mod:`lipbound.methods.selection`) keeps every method whose predicted time fits
the run's budget, and the budget is shared so that a method predicted to be cheap does not take a
big share from an expensive one. A prediction is a function of :class:`GraphSizes` (neurons, LMI
order, unstable neurons, input size, layer widths, convolution sizes), never of a measured wall
time, so the choice is the same on every run: same graph, same budget, same methods, same numbers.

Each model predicts the seconds a method needs to **return its bound**: to finish, for the methods
that stop on their own (AutoLip, ECLipsE-Fast, exact), and to its first useful bound for those
that improve until their budget ends (LipSDP's first-order solver: its set-up and
:data:`SDP_USEFUL_ITERATIONS` iterations; ``lower``: one round of starts; SeqLip: the SVDs and one
pass over the pairs). The constants (:data:`CONSTANTS`, seconds per unit of work, on one CPU thread)
are the machine's (:data:`lipbound.methods.machine.METHOD_SECONDS`, their one home, fitted by
``benchmarks/cost_model.py`` on this project's 2-core CPU machine); a GPU or a faster CPU only
makes the predictions pessimistic, which keeps the choice on the safe side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..graph.ir import Activation, Add, Concat, Graph, MaxPool
from ..linalg.conv import Conv
from ..linalg.operators import Dense
from .lipsdp import _cvxpy_available, ipm_routes
from .lipsdp_banded import BlockStructure, structure_of_graph
from .lipsdp_conv import blocks_plan, chain_orders, start_flops, start_seconds, structure_routes_to_blocks
from .lmi_build import MAX_WORK
from .machine import CHAIN_IPM_SECONDS, METHOD_SECONDS
from .piecewise import count_two_slope_neurons

__all__ = ["GraphSizes", "graph_sizes", "CONSTANTS", "autolip_cost", "power_cost", "seqlip_cost", "eclipse_cost",
           "lipsdp_cost", "lipsdp_path", "LIPSDP_PATHS", "lower_cost", "exact_cost", "total"]


@dataclass(frozen=True)
class GraphSizes:
    """What the cost models read from a graph.

    Attributes:
        kind: ``"mlp"`` (a chain of dense layers and activations), ``"residual"`` (dense layers
            with sums or concatenations), ``"cnn"`` (any convolution or max-pooling).
        input_size: elements of the input.
        neurons: elements of all activation outputs.
        unstable: neurons whose slope interval is not a point (all of them without a region).
        widths: the unstable neurons of each activation node, in topological order.
        lmi_order: the order of the LipSDP LMI, ``input_size + unstable``.
        chain_work: ``sum_j w_j^2 (w_j + w_{j-1})`` over the activation widths (``w_0`` the input):
            the flops of one pass of dense block operations along a chain (one Cholesky of the
            block-tridiagonal LMI, one ECLipsE-Fast recursion); on residual nets the same sum
            over the LMI's blocks, each with the blocks it reads (``w_k^2 (w_k + sum_{j read} w_j)``:
            ECLipsE-Fast works block by block there too; measured on FC-R18, order 1872:
            eclipse-fast 0.44 s, where ``lmi_order^3`` predicted 294 s); ``lmi_order^3`` for CNNs.
        svd_work: ``sum m n min(m, n)`` over the linear layers, convolutions materialised (their SVDs).
        dense_svd_work: the same over the dense layers only.
        matvec_work: multiply-adds of one forward pass through the linear layers.
        conv_work: ``sum`` over convolutions of output elements times input channels times kernel
            taps (their part of a forward pass).
        relu_units: ReLU units of the equivalent ReLU network when the graph is an MLP of
            piecewise-linear activations (:func:`~lipbound.methods.piecewise.count_two_slope_neurons`,
            stable ones left out), else None.
        chain_orders: the block orders ``[input, activation 1, ...]`` of the fused graph when it is
            a chain of affine nodes and activations (every neuron counted but those of constant
            output, :func:`~lipbound.methods.lipsdp_conv.chain_orders`), else None.
        pooled: the graph has max pooling (no LMI holds it: LipSDP refuses it).
        output_size: elements of the output.
        folded: some neuron's slope interval is a nonzero point (a stable neuron on a region): the LMI
            builder folds it into the maps that read it, which joins non-neighbouring blocks, so the
            LMI of a chain graph is then no chain (:func:`lipsdp_path` prices its dense interior point).
        blocks: the block structure of the LMI (chains and residual nets,
            :func:`~lipbound.methods.lipsdp_banded.structure_of_graph`), None with max pooling: what
            LipSDP's ``"blocks"`` path reads to route, refuse and price a network.
    """

    kind: str
    input_size: int
    neurons: int
    unstable: int
    widths: tuple[int, ...]
    lmi_order: int
    chain_work: float
    svd_work: float
    dense_svd_work: float
    matvec_work: float
    conv_work: float
    relu_units: int | None
    chain_orders: tuple[int, ...] | None = None
    pooled: bool = False
    blocks: BlockStructure | None = None
    folded: bool = False
    output_size: int = 0


def graph_sizes(graph: Graph) -> GraphSizes:
    """The :class:`GraphSizes` of ``graph`` (cheap: nothing is materialised or evaluated)."""
    nodes = list(graph)
    acts = [n for n in nodes if isinstance(n, Activation)]
    widths = tuple(_unstable(n) for n in acts)
    convs = [op for op in _ops(graph, Conv) if math.prod(op.out_shape[1:]) > 1]  # a 1x1 output is a dense layer
    kind = ("cnn" if convs or any(isinstance(n, MaxPool) for n in nodes)
            else "residual" if any(isinstance(n, (Add, Concat)) for n in nodes) else "mlp")
    input_size = math.prod(graph.input_shape)
    unstable = sum(widths)
    order = input_size + unstable
    chain = [input_size, *widths]
    structure = structure_of_graph(graph)
    chain_work = (sum(w * w * (w + v) for v, w in zip(chain, chain[1:])) if kind == "mlp"
                  else _block_chain_work(structure) if kind == "residual" and structure is not None
                  else float(order) ** 3)
    dense = [op for op in [*_ops(graph, Dense), *_ops(graph, Conv)] if op not in convs]
    dense_svd = sum(_svd(op) for op in dense)
    conv_work = sum(math.prod(op.out_shape) * op.weight.shape[1] * math.prod(op.weight.shape[2:]) for op in convs)
    matvec = sum(math.prod(op.out_shape) * math.prod(op.in_shape) for op in dense) + conv_work
    units = count_two_slope_neurons(graph) if kind == "mlp" else None
    orders = chain_orders(structure)
    return GraphSizes(kind, input_size, sum(math.prod(n.shape) for n in acts), unstable, widths, order,
                      float(chain_work), float(dense_svd + sum(_svd(op) for op in convs)), float(dense_svd),
                      float(matvec), float(conv_work), units, None if orders is None else tuple(orders),
                      any(isinstance(n, MaxPool) for n in nodes), structure, any(_folds(n) for n in acts),
                      math.prod(graph.output_shape))


def _block_chain_work(structure: BlockStructure) -> float:
    """``sum_k w_k^2 (w_k + sum of the widths of the blocks k reads)`` over the activation blocks of
    an LMI's block structure (the chain formula of :attr:`GraphSizes.chain_work` where each block may
    read several earlier ones)."""
    w = structure.sizes
    return float(sum(w[k] ** 2 * (w[k] + sum(w[j] for j in structure.reads[k])) for k in range(1, len(w))))


def _svd(op) -> int:
    """Flops of the SVD of ``op`` materialised, ``m n min(m, n)``."""
    m, n = math.prod(op.out_shape), math.prod(op.in_shape)
    return m * n * min(m, n)


def _folds(node: Activation) -> bool:
    """Some neuron of ``node`` has a slope interval that is a nonzero point (:attr:`GraphSizes.folded`)."""
    lo, hi = node.slope_bounds()
    return bool(((lo == hi) & (lo != 0)).any())


def _unstable(node: Activation) -> int:
    """Neurons of ``node`` whose slope interval is not a point."""
    lo, hi = node.slope_bounds()
    return int((lo != hi).sum())


def _ops(graph: Graph, cls: type) -> list:
    """The operators of class ``cls`` in the graph's affine nodes, composed ones included."""
    def walk(op):
        return [op] if isinstance(op, cls) else [q for p in getattr(op, "ops", ()) for q in walk(p)]
    return [op for node in graph.affine_nodes() for op in walk(node.op)]


#: Seconds per unit of work of each model on one CPU thread (:data:`~.machine.METHOD_SECONDS`)
CONSTANTS = METHOD_SECONDS
SDP_USEFUL_ITERATIONS = 10   # L-BFGS iterations of LipSDP's first-order solver that make its bound worth it
ECLIPSE_PASSES = 16          # recursions of ECLipsE-Fast's search over theta (14) and its check
POWER_PASSES = 200           # forward and backward passes of AutoLip's power method per layer
LOWER_PASSES = 64 * 4        # starts x (power steps + 1) of the first ascent step of ``lower`` (its defaults)
IPM_MAX_ORDER = 60           # LipSDP's ``ipm_max_order``: interior point up to this reduced order
EXACT_LOG2_PATTERNS = 16      # log2 of the most patterns exact is predicted to visit (it prunes; its budget caps it)


def work(s: GraphSizes) -> dict[str, float]:
    """The unit of work each model counts on ``s`` (multiply by :data:`CONSTANTS`). LipSDP's terms
    count only the path ``solver="auto"`` takes with an unlimited budget (:func:`lipsdp_path`):
    ``ipm`` for Clarabel's interior point, ``lipsdp`` for the first-order path, ``blocks`` for
    networks too large to assemble (the flops of its checked ECLipsE-Fast start,
    :func:`~lipbound.methods.lipsdp_conv.start_flops`; the chain interior point's model is in
    :func:`lipsdp_cost`)."""
    path = lipsdp_path(s)
    dense = path == "first-order"
    return {
        "autolip": s.dense_svd_work + s.conv_work,
        "power": POWER_PASSES * s.matvec_work,
        "seqlip": s.svd_work + (s.chain_work if s.kind == "mlp" else 0.0),
        "eclipse": ECLIPSE_PASSES * s.chain_work,
        "lipsdp": (ECLIPSE_PASSES + 2 * SDP_USEFUL_ITERATIONS) * s.chain_work if dense else 0.0,
        "ipm": float(_reduced_orders(s)[0] + s.unstable) ** 3.5 if path == "clarabel" else 0.0,
        "blocks": start_flops(s.blocks) if path == "blocks" else 0.0,
        "lower": LOWER_PASSES * s.matvec_work,
        "exact": math.inf if s.relu_units is None else 2.0 ** min(s.relu_units, EXACT_LOG2_PATTERNS),
    }


#: LipSDP's paths under ``solver="auto"`` (:func:`lipsdp_path`); ``"refused"``: it raises NotApplicable
LIPSDP_PATHS = ("clarabel", "ipm", "first-order", "blocks", "refused")
LIPSDP_MAX_SIZE = 20000  # LipSDP's ``max_size``: the dense paths refuse a larger LMI order
#: iterations of the chain interior point (:mod:`lipbound.methods.lipsdp_ipm`, each priced at
#: :data:`~.machine.CHAIN_IPM_SECONDS` per unit ``order^3 + 4 order^2 w``) to its first bound below
#: its start (ECLipsE-Fast's multipliers); it returns its best iterate when its budget ends
IPM_USEFUL_ITERATIONS = 1


def lipsdp_path(s: GraphSizes, budget: float = math.inf) -> str:
    """The path :func:`lipbound.methods.lipsdp.lipsdp` with ``solver="auto"`` takes on a graph of
    sizes ``s`` with ``time_budget=budget``, read from its routing:

    * a network whose assembled LMI needs ``order * bandwidth^2 > MAX_WORK`` operations, a chain
      or a residual net alike, goes to ``"blocks"`` (lipsdp's own rule on the LMI's block
      structure: :func:`~lipbound.methods.lipsdp_conv.structure_routes_to_blocks`), which refuses
      it on the same sizes as :func:`~lipbound.methods.lipsdp_conv.lipsdp_blocks` does
      (:func:`~lipbound.methods.lipsdp_conv.blocks_refusal`: its matrices' float64 entries, its
      checked start's predicted seconds against the budget, :func:`~lipbound.methods.lipsdp_conv.blocks_plan`);
    * the assembled LMI is refused with max pooling (no LMI holds it), without an unstable neuron,
      above order ``LIPSDP_MAX_SIZE``, or above ``MAX_WORK`` operations per factorisation (its
      bandwidth: the widest pair of neighbouring blocks on a chain, the whole order otherwise: a
      copy of :func:`~lipbound.methods.lmi_build.lmi_of_graph`'s rule on sizes);
    * else ``"clarabel"`` (with cvxpy) up to reduced order ``IPM_MAX_ORDER``, ``"ipm"`` (lipbound's
      own interior point) where :func:`~lipbound.methods.lipsdp.ipm_routes` sends the reduced LMI
      (a chain up to ``IPM_CHAIN_MAX_ORDER``; another LMI when its dense solve fits ``budget``),
      ``"first-order"`` otherwise (``"chordal"`` is never chosen by ``auto``: the chain interior point
      supersedes it).
    """
    if structure_routes_to_blocks(s.blocks):
        return "refused" if blocks_plan(s.blocks, budget) == "refused" else "blocks"
    orders = s.chain_orders
    blocks = [s.input_size, *s.widths]
    band = max(a + b for a, b in zip(blocks, blocks[1:])) if orders is not None and s.widths else s.lmi_order
    if s.pooled or s.unstable == 0 or s.lmi_order > LIPSDP_MAX_SIZE or s.lmi_order * (band + 1) ** 2 > MAX_WORK:
        return "refused"
    reduced = _reduced_orders(s)[0] + s.unstable
    if reduced <= IPM_MAX_ORDER and _cvxpy_available():
        return "clarabel"
    if ipm_routes(reduced, _lmi_is_chain(s), budget):
        return "ipm"
    return "first-order"


def _lmi_is_chain(s: GraphSizes) -> bool:
    """The LMI is a chain: the graph is one and no stable neuron is folded (:attr:`GraphSizes.folded`)."""
    return s.chain_orders is not None and not s.folded


def _reduced_orders(s: GraphSizes) -> list[int]:
    """Block orders of the reduced LMI (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced`): the input
    block cut to the rows of the maps that read it, then the unstable neurons of each activation. On a
    chain only the first layer reads the input (at most ``min(input, first width)``); where stable
    neurons are folded (:attr:`GraphSizes.folded`) the later layers and the output read it too, through
    them (at most ``min(input, unstable + output)``)."""
    readers = s.unstable + s.output_size if s.folded else (s.widths[0] if s.widths else 0)
    return [min(s.input_size, readers), *s.widths]


def _model(*keys: str) -> Callable[[GraphSizes], float]:
    def cost(s: GraphSizes) -> float:
        w = work(s)
        return CONSTANTS["start"] + sum(CONSTANTS[k] * w[k] for k in keys)
    return cost


autolip_cost = _model("autolip")
autolip_cost.__doc__ = "An SVD per dense layer and the DFT bound of each convolution: linear in the layers."
power_cost = _model("power")
power_cost.__doc__ = "Power iterations per layer, each a forward and a backward pass."
seqlip_cost = _model("seqlip")
seqlip_cost.__doc__ = "The SVDs (convolutions materialised), then one pass over the pairs (its search is capped)."
eclipse_cost = _model("eclipse")
eclipse_cost.__doc__ = "Recursions of dense block operations along the LMI, then a checked Cholesky."


def lipsdp_cost(s: GraphSizes) -> float:
    """The least budget in which ``solver="auto"`` returns its bound (:func:`lipsdp_path`): the
    Clarabel solve (~ reduced order^3.5); on a chain, ECLipsE-Fast (its start) and
    IPM_USEFUL_ITERATIONS iterations of the interior point (CHAIN_IPM_SECONDS each unit, the widest
    block the whole order where the LMI is no chain); the
    first-order solver's start (ECLipsE-Fast) and SDP_USEFUL_ITERATIONS iterations; the ``"blocks"``
    path's checked ECLipsE-Fast start (:func:`~lipbound.methods.lipsdp_conv.start_seconds`: its layer
    matrices, one recursion and the check; its solver runs only when the budget holds more,
    :func:`~lipbound.methods.lipsdp_conv.blocks_plan`);
    ``inf`` where every path refuses the graph, so that a refused LipSDP is never predicted cheap."""
    path = lipsdp_path(s)
    if path == "refused":
        return math.inf
    w = work(s)
    if path == "blocks":  # its first useful bound: the checked ECLipsE-Fast start
        return CONSTANTS["start"] + start_seconds(s.blocks)
    if path == "clarabel":
        return CONSTANTS["start"] + CONSTANTS["ipm"] * w["ipm"]
    if path == "ipm":  # its start (ECLipsE-Fast) and IPM_USEFUL_ITERATIONS iterations
        blocks = _reduced_orders(s)
        order = sum(blocks)
        widest = max(blocks) if _lmi_is_chain(s) else order
        iteration = CHAIN_IPM_SECONDS * (order ** 3 + 4 * order ** 2 * widest)
        return CONSTANTS["start"] + CONSTANTS["eclipse"] * w["eclipse"] + IPM_USEFUL_ITERATIONS * iteration
    return CONSTANTS["start"] + CONSTANTS["eclipse"] * w["eclipse"] + CONSTANTS["lipsdp"] * w["lipsdp"]


lower_cost = _model("lower")
lower_cost.__doc__ = ("Its first ascent step (it always runs; the rest is capped by its budget): forward and "
                      "backward passes of every start, linear in the model.")
exact_cost = _model("exact")
exact_cost.__doc__ = "Branch and bound over activation patterns: exponential in the unstable ReLU units."


def total(*models: Callable[[GraphSizes], float]) -> Callable[[GraphSizes], float]:
    """The cost model of a method that runs ``models`` one after the other (``best``, ``local-bab``)."""
    return lambda s: sum(m(s) for m in models)
