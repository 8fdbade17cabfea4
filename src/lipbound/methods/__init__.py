"""The methods: each takes a Graph and options and returns a Result (one file each).

Every method is registered once, as a :class:`MethodSpec` in :data:`METHODS`: its public name, the
function, what its number guarantees, what it applies to, whether it takes an input region, whether
``best`` and the default set use it, and its cost model (:mod:`lipbound.methods.cost`: the seconds
it is predicted to need on a graph, from which :mod:`lipbound.methods.selection` chooses the
default set within the run's budget). :func:`lipbound.estimate`, ``best``, the
default selection, the CLI and ``lipbound methods`` all read this one table.

A method function has the signature ``fn(graph, *, seed, progress, **options) -> Result``. A method
that can run long takes ``time_budget``: total wall-clock seconds for the whole call. It stops on
its own iteration counts and tolerances, and the budget only caps it: when the budget ends the
search, the method returns the best bound found so far and says so in its details.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from ..errors import InvalidInput
from ..graph.ir import Graph
from ..report import Kind, Result
from . import autolip, best, eclipse, exact, lipsdp, local_bab, lower, lower_milp, neuron_bab, seqlip  # the modules keep their names
from . import cost
from .cost import GraphSizes
from .piecewise import count_two_slope_neurons

__all__ = ["MethodSpec", "METHODS", "SIZES", "get_method", "EXACT_DEFAULT_NEURONS"]

EXACT_DEFAULT_NEURONS = 32  # ``exact`` is a candidate of the default set up to this many unstable ReLU units

#: :attr:`MethodSpec.size`: the models a method is meant for
SIZES = {
    "any": "any size",
    "medium": "up to a few thousand neurons",
    "small": "tens of neurons or input elements",
}


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        name: its public name (``estimate(methods=[name])``, ``--method name``).
        fn: the function, ``fn(graph, *, seed, progress, **options) -> Result``.
        guarantee: the kind of its value when it succeeds.
        summary: one line: what it computes.
        applies_to: the models it takes (others raise ``NotApplicable``/``UnsupportedOperation``).
        scaling: how its cost grows with the model (``lipbound methods`` prints it).
        size: the largest models it is meant for, a key of :data:`SIZES` (``any``, ``medium``,
            ``small``); the guide's recommendation groups the methods by it.
        in_best: ``best`` tries it (in registry order, cheapest first).
        in_default: it is a candidate of the default set, for every model or for those the callable
            accepts; :mod:`lipbound.methods.selection` keeps it when its predicted time fits the budget.
        aggregate: it only reruns other methods (left out of ``"all"``).
        budget_weight: its weight when a run's time budget is shared (1: an equal share).
        cost: its cost model, :class:`~lipbound.methods.cost.GraphSizes` -> predicted seconds (to
            finish, or for an ``anytime`` method to its first useful bound); None: unknown, never
            chosen by default.
        anytime: it improves its bound until its budget ends (its budget caps a search), so a
            larger share helps; the others finish on their own and get only what they need.
    """

    name: str
    fn: Callable[..., Result]
    guarantee: Kind
    summary: str
    applies_to: str
    scaling: str
    size: str = "any"
    in_best: bool = False
    in_default: bool | Callable[[Graph], bool] = False
    aggregate: bool = False
    budget_weight: float = 1.0
    cost: Callable[[GraphSizes], float] | None = None
    anytime: bool = False
    parameters: dict[str, inspect.Parameter] = field(init=False, repr=False, compare=False)
    fixed: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"method {self.name!r}: size must be one of {', '.join(SIZES)}, got {self.size!r}")
        params = dict(inspect.signature(self.fn).parameters)
        fixed = self.fn.keywords if isinstance(self.fn, partial) else {}
        for name in ("graph", *fixed):  # the options a partial fixed (solver, variant, ...) are not the user's
            params.pop(name, None)
        object.__setattr__(self, "parameters", params)
        object.__setattr__(self, "fixed", tuple(fixed))

    def __call__(self, graph: Graph, **options: Any) -> Result:
        return self.fn(graph, **options)

    @property
    def takes_domain(self) -> bool:
        """It bounds the constant on an input region given as ``domain`` (the others bound it on
        all of ``R^n``, which is valid on any region too)."""
        return "domain" in self.parameters

    @property
    def budgeted(self) -> bool:
        """It takes ``time_budget`` (total seconds of the call)."""
        return "time_budget" in self.parameters

    @property
    def open_options(self) -> bool:
        """It passes unnamed options on (AutoLip's power-method options)."""
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.parameters.values())

    def options(self) -> list[str]:
        """Names of the options it accepts (besides ``seed`` and ``progress``)."""
        return [n for n, p in self.parameters.items()
                if p.kind is not inspect.Parameter.VAR_KEYWORD and n not in ("seed", "progress")]

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise :class:`~lipbound.errors.InvalidInput` for an option it does not know, or one that
        its registration fixes (e.g. ``solver`` of ``seqlip``: choose ``seqlip-greedy`` instead)."""
        taken = sorted(set(options) & set(self.fixed))
        if taken:
            raise InvalidInput(f"method {self.name!r} fixes {', '.join(map(repr, taken))}: choose another method name "
                               f"({', '.join(n for n in METHODS if n.startswith(self.name.split('-')[0]))})")
        if self.open_options:
            return
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            raise InvalidInput(f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                               f"its options: {', '.join(self.options()) or 'none'}")

    def default_for(self, graph: Graph) -> bool:
        """It is a candidate of the default set for ``graph`` (its structural rule; the cost is
        :mod:`lipbound.methods.selection`'s decision)."""
        return self.in_default(graph) if callable(self.in_default) else bool(self.in_default)

    def predicted_seconds(self, sizes: GraphSizes) -> float:
        """Its cost model's prediction on a graph of these sizes (``inf`` without one)."""
        return math.inf if self.cost is None else float(self.cost(sizes))


LOCAL_BAB_INPUTS = 32  # ``local-bab`` is a candidate on a region when the input is at most this large


def _small_input_region(graph: Graph) -> bool:
    return graph.region is not None and math.prod(graph.input_shape) <= LOCAL_BAB_INPUTS


#: shares of a run's budget (:func:`~lipbound.methods.selection.budget_share`): LipSDP's bound keeps
#: improving with time and is the tightest on MLPs (its interior point needs ~11 iterations of ~1.5 s,
#: one core, to come within 10% of its optimum on mnistfc_256x6: with 16, about 23 of a default run's
#: 30 s, against 14 with 4); the lower bound is the other end of the bracket
LIPSDP_WEIGHT = 16.0
LOWER_WEIGHT = 2.0


def _small_relu_net(graph: Graph) -> bool:
    n = count_two_slope_neurons(graph)
    return n is not None and n <= EXACT_DEFAULT_NEURONS


#: The registry: public name -> :class:`MethodSpec` (calling a spec calls its method); filled below.
METHODS: dict[str, MethodSpec] = {}

_SPECS = [
    MethodSpec("autolip", partial(autolip.autolip, certified=True), Kind.CERTIFIED_UPPER,
               "AutoLip (paper Alg. 1) over the graph with certified layer norms",
               "any graph",
               "linear in the layers; per layer an SVD (dense) or small SVDs of the kernel's DFT (convolution)",
               in_best=True, in_default=True, cost=cost.autolip_cost),
    MethodSpec("autolip-power", partial(autolip.autolip, certified=False), Kind.ESTIMATE,
               "AutoLip with power-method layer norms (the paper's figure)",
               "any graph", "linear in the layers; per layer power iterations, each a forward and a backward pass",
               cost=cost.power_cost),
    MethodSpec("eclipse-fast", eclipse.eclipse_fast, Kind.CERTIFIED_UPPER,
               "closed-form sequential LMI multipliers (ECLipsE-Fast family), checked in float64",
               "affine maps, activations, sums, concatenations; LMI order <= max_size",
               "dense blocks of the LMI: cubic in each layer's width, linear in the layers", size="medium",
               in_best=True, in_default=True, cost=cost.eclipse_cost),
    MethodSpec("seqlip", partial(seqlip.seqlip, solver="certified"), Kind.CERTIFIED_UPPER,
               "SeqLip on every sequential chain, each pair's maximum over activation patterns solved "
               "or bounded; AutoLip elsewhere",
               "any graph (chains of affine layers and activations get SeqLip)",
               "an SVD per layer, then exponential in the narrower layer of each pair (capped by the budget)",
               size="medium", in_best=True, in_default=True, cost=cost.seqlip_cost, anytime=True),
    MethodSpec("seqlip-greedy", partial(seqlip.seqlip, solver="greedy"), Kind.ESTIMATE,
               "the paper's greedy SeqLip on the dense SVDs", "any graph",
               "an SVD per layer, then greedy flips: polynomial in the layers' widths", size="medium",
               cost=cost.seqlip_cost),
    MethodSpec("seqlip-topk", partial(seqlip.seqlip, solver="topk"), Kind.ESTIMATE,
               "the paper's top-k SeqLip heuristic for layers too large for an SVD",
               "any graph", "a block power method of k vectors per layer: linear in the layer's size times k",
               cost=cost.power_cost),
    MethodSpec("lipsdp", lipsdp.lipsdp, Kind.CERTIFIED_UPPER,
               "LipSDP-Neuron: one LMI over the whole network, certificate checked in float64",
               "affine maps, activations, sums, concatenations; LMI order <= max_size",
               "one SDP of order ~ the neurons: interior point (cubic or worse) up to ~60, first-order beyond",
               size="medium", in_best=True, in_default=True, cost=cost.lipsdp_cost, anytime=True,
               budget_weight=LIPSDP_WEIGHT),
    MethodSpec("lipsdp-layer", partial(lipsdp.lipsdp, variant="layer"), Kind.CERTIFIED_UPPER,
               "LipSDP with one multiplier per activation layer", "as lipsdp",
               "as lipsdp (same LMI order), one variable per layer instead of per neuron", size="medium",
               cost=cost.lipsdp_cost, anytime=True),
    MethodSpec("exact", exact.exact, Kind.EXACT,
               "branch and bound over activation patterns with LP existence checks",
               "chains of affine layers and piecewise-linear activations with few neurons",
               "exponential in the number of unstable neurons (NP-hard)", size="small", in_best=True,
               in_default=_small_relu_net, cost=cost.exact_cost, anytime=True),
    MethodSpec("neuron-bab", neuron_bab.neuron_bab, Kind.CERTIFIED_UPPER,
               "branch and bound over the unstable ReLUs' states on a box: LP-tightened pre bounds per node, "
               "interval-Jacobian and LipSDP slope-box bounds, witnesses from the LP points (and lower-milp "
               "with lower_share > 0)",
               "chains of affine layers and ReLUs on a box domain",
               "per node two LPs per unstable neuron and a 2^vertex_units batch of interval Jacobians; "
               "nodes exponential in the unstable neurons (capped by nodes and time)",
               size="medium", anytime=True, cost=cost.total(cost.lower_cost, cost.eclipse_cost)),
    MethodSpec("local-bab", partial(local_bab.local_bab, registry=METHODS), Kind.CERTIFIED_UPPER,
               "branch and bound over the input region: the largest certified bound over its parts, "
               "lower bounds from Jacobians inside them",
               "a box or infinity ball; splits inputs of at most 32 elements, bounds larger ones once",
               "parts x (bound propagation + the part's certified methods); parts exponential in the input size",
               size="small", aggregate=True, in_default=_small_input_region, budget_weight=6.0,
               cost=cost.total(cost.lower_cost, cost.eclipse_cost), anytime=True),
    MethodSpec("lower", lower.lower, Kind.WITNESSED_LOWER,
               "Jacobian-norm and pair search over inputs, with a re-checkable witness",
               "any graph", "starts x steps forward and backward passes: linear in the model", in_default=True,
               cost=cost.lower_cost, anytime=True, budget_weight=LOWER_WEIGHT),
    MethodSpec("lower-milp", lower_milp.lower_milp, Kind.WITNESSED_LOWER,
               "lower's witness improved by MILPs over the activation patterns of a box (LipMIP-style)",
               "chains of affine layers and ReLU/LeakyReLU/Abs on a box domain",
               "lower, then per round one MILP with a binary per unstable neuron (exponential worst case, "
               "capped by nodes and time)", size="medium", cost=cost.lower_cost, anytime=True,
               budget_weight=LOWER_WEIGHT),
    MethodSpec("best", partial(best.best, registry=METHODS), Kind.CERTIFIED_UPPER,
               "the least certified bound of the methods marked for best, cheapest first",
               "any graph", "the sum of the methods it runs, within the time budget", aggregate=True,
               cost=cost.total(cost.autolip_cost, cost.eclipse_cost, cost.seqlip_cost, cost.lipsdp_cost),
               anytime=True),
]

METHODS.update((s.name, s) for s in _SPECS)


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidInput(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None
