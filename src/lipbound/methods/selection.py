"""Which methods :func:`lipbound.estimate` runs, with which options and which share of the time.

* ``methods=None``: the **default set**, chosen by the cost model (:mod:`lipbound.methods.cost`)
  within the run's time budget (:data:`DEFAULT_TIME_BUDGET` seconds when none is given), by
  :func:`default_methods`:

  1. the candidates: the methods marked :attr:`MethodSpec.in_default` whose structural rule
     accepts the graph (``exact`` on MLP-like piecewise-linear nets of at most
     :data:`~lipbound.methods.EXACT_DEFAULT_NEURONS` unstable ReLU units; ``local-bab`` on a
     region of at most :data:`~lipbound.methods.LOCAL_BAB_INPUTS` input elements; the others on
     every graph);
  2. kept when their predicted time fits the budget (:func:`fits`), and, for a method that refuses
     a budget too small for its first bound, the share it will get (:data:`REFUSES_SMALL_BUDGET`,
     :func:`planned_shares`): on MLPs of up to a few
     thousand neurons this keeps ``eclipse-fast`` and ``lipsdp``; on a CNN whose LMI is too large
     to assemble, ``lipsdp`` stays when its "blocks" path's checked ECLipsE-Fast start fits
     (:func:`~lipbound.methods.lipsdp_conv.blocks_plan`: OVAL21 base, ResNet-2B and ConvSmall in
     30 s; its solver runs when the budget holds more); on larger ones AutoLip and ``lower`` remain;
  3. in the order of :func:`tightness_order`: the expected-tightest upper bound first, the
     witnessed lower bound last.

  The choice reads only the graph's sizes and the budget, never a measured time: the same graph
  and budget give the same set, and, with the same seed, the same numbers (up to the time caps).
* ``methods="all"``: every registered method except aggregates of the others (``"best"``).
* an explicit list: exactly those methods.

In the first two cases a method that does not apply (it raises
:class:`~lipbound.errors.NotApplicable` or :class:`~lipbound.errors.UnsupportedOperation`) is
recorded in ``Report.skipped`` with its reason; asked for by name, it raises.

A method receives the run's common options that it accepts, the entries of
``method_options[name]`` (an option it does not know raises
:class:`~lipbound.errors.InvalidInput`), ``domain`` / ``data`` when it takes them (a bound that
does not take the domain into account is a bound over all of ``R^n``, which stays a valid *upper*
bound on any region), and, when the run has a ``time_budget`` (a default run always has one), its
share of the time left (:func:`budget_share`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ..errors import InvalidInput
from ..graph.ir import Graph
from . import METHODS, MethodSpec, get_method
from .cost import GraphSizes, graph_sizes, lipsdp_path

__all__ = ["DEFAULT_SET_WORK", "select_methods", "default_methods", "fits", "planned_shares", "REFUSES_SMALL_BUDGET",
           "tightness_order", "method_kwargs", "check_options",
           "budget_share", "DEFAULT_TIME_BUDGET", "TIGHTNESS"]

#: seconds of a default run (``methods=None``) without a ``time_budget``: the methods are chosen to
#: fit it and share it (ACAS Xu's bracket in 30 s is the issue's target; a default run overruns it
#: only by a method whose set-up its budget cannot cut)
DEFAULT_TIME_BUDGET = 30.0

#: the upper-bound methods from the expected tightest to the loosest. ``exact`` is the constant;
#: LipSDP-Neuron's optimum is below every bound of its LMI with fewer multipliers (``lipsdp-layer``,
#: ECLipsE-Fast's multipliers are feasible points of it); SeqLip is below AutoLip (same layer norms,
#: the pairs maximised jointly); the estimates last. A method not listed comes after those listed.
#: ``local-bab``, though it takes the least of the certified methods on each part of the region, runs
#: after the other certified methods: it searches until its share of the time ends, and time a method
#: does not use passes to the next ones, so it gets what the others leave (ACAS Xu prop 3, 120 s: run
#: first it got 28.5 s while lipsdp, given the largest share, finished in 0.4 s).
TIGHTNESS = ("exact", "lipsdp", "lipsdp-layer", "eclipse-fast", "seqlip", "autolip", "local-bab",
             "seqlip-greedy", "seqlip-topk", "autolip-power")


def select_methods(graph: Graph, methods: Iterable[str] | str | None,
                   time_budget: float | None = None) -> tuple[list[str], bool]:
    """``(names, explicit)``: the methods to run and whether the user named them one by one;
    ``time_budget`` is the run's (the default set is chosen to fit it, or
    :data:`DEFAULT_TIME_BUDGET` when None)."""
    if methods is None:
        return default_methods(graph, time_budget=time_budget), False
    if isinstance(methods, str):
        if methods == "all":
            return [name for name, spec in METHODS.items() if not spec.aggregate], False
        methods = [methods]
    names = list(methods)
    if "all" in names:
        if names == ["all"]:
            return select_methods(graph, "all", time_budget)
        raise InvalidInput("'all' cannot be combined with other method names")
    for m in names:
        get_method(m)  # unknown names fail with the list of valid ones
    return names, True


def default_methods(graph: Graph, *, lower: bool = True, time_budget: float | None = None) -> list[str]:
    """The default set for a run of ``time_budget`` seconds (None: :data:`DEFAULT_TIME_BUDGET`), in
    the order it runs (module doc); ``lower=False`` keeps only the upper bounds (e.g. for
    certificates)."""
    budget = DEFAULT_TIME_BUDGET if time_budget is None else time_budget
    sizes = graph_sizes(graph)
    specs = sorted((spec for spec in METHODS.values()
                    if spec.default_for(graph) and (lower or spec.guarantee.is_upper) and fits(spec, sizes, budget)),
                   key=tightness_order)
    while short := [spec for spec, share in zip(specs, planned_shares(specs, sizes, budget))
                    if spec.name in REFUSES_SMALL_BUDGET and REFUSES_SMALL_BUDGET[spec.name](sizes, share)]:
        specs.remove(short[0])  # the first in run order: the time it was planned to take passes to the later ones
    return [spec.name for spec in specs]


#: the methods that refuse a budget too small for their first bound (raise NotApplicable), with the
#: cost model's copy of that rule on sizes: LipSDP's "blocks" path refuses a budget below its checked
#: start (:func:`~lipbound.methods.lipsdp_conv.blocks_refusal`, read by :func:`~lipbound.methods.cost.lipsdp_path`)
REFUSES_SMALL_BUDGET = {name: (lambda sizes, budget: lipsdp_path(sizes, budget) == "refused")
                        for name in ("lipsdp", "lipsdp-layer")}


def fits(spec: MethodSpec, sizes: GraphSizes, budget: float) -> bool:
    """The method's predicted time (:attr:`MethodSpec.cost`) is within the run's budget. A method
    whose budget only caps an improving search (``anytime``) is predicted to its first useful bound,
    so fitting means it returns one; the others must finish. This is the first filter;
    :func:`default_methods` then drops a method that would refuse the share it will get
    (:data:`REFUSES_SMALL_BUDGET`, :func:`planned_shares`), so that what is selected is never
    skipped for time. The other methods return a first bound on any share (the lower bound its
    first ascent step, at least ``MIN_SHARE`` of the budget) and are kept."""
    return spec.predicted_seconds(sizes) <= budget


def planned_shares(specs: list[MethodSpec], sizes: GraphSizes, budget: float) -> list[float]:
    """The share of ``budget`` each of ``specs`` (in run order) gets from :func:`budget_share` when
    every method before it takes its predicted time (:attr:`MethodSpec.cost`; at most its share).
    The first method's share is exact (the time spent before it, building the graph's sizes, aside);
    a later one's is the share it is planned for. Sizes and budget only."""
    shares, left = [], budget
    for i, spec in enumerate(specs):
        shares.append(budget_share(budget, left, specs[i:], sizes))
        left = max(left - min(shares[-1], spec.predicted_seconds(sizes)), 0.0)
    return shares


def tightness_order(spec: MethodSpec) -> tuple[int, int]:
    """Sort key of the run order: the upper bounds by :data:`TIGHTNESS` (the expected-tightest
    first, so that it runs while the whole budget is left), then the lower bounds, which improve
    the bracket from below with whatever time the upper bounds left. Same rank: registry order."""
    rank = TIGHTNESS.index(spec.name) if spec.name in TIGHTNESS else len(TIGHTNESS)
    return (0 if spec.guarantee.is_upper else 1, rank)


def check_options(names: list[str], options: dict[str, Any],
                  method_options: dict[str, dict[str, Any]] | None) -> None:
    """Every common option must be accepted by at least one of the methods ``names`` and every
    per-method option by its method: else :class:`~lipbound.errors.InvalidInput` naming it."""
    for name, opts in (method_options or {}).items():
        get_method(name).check_options(opts)
    specs = [get_method(n) for n in names]
    for key in options:
        if not any(s.open_options or key in s.options() for s in specs):
            raise InvalidInput(f"no method of {names} takes the option {key!r}")


def method_kwargs(spec: MethodSpec, options: dict[str, Any], method_options: dict[str, dict[str, Any]] | None,
                  **problem: Any) -> dict[str, Any]:
    """Keyword arguments for one method: the ``options`` it accepts (all of them when it passes
    unnamed options on), then ``method_options[spec.name]``, then each entry of ``problem``
    (``domain``, ``data``, ``time_budget``) that is not None and that it names."""
    kwargs = {k: v for k, v in options.items()
              if k not in spec.fixed and (spec.open_options or k in spec.parameters)}
    kwargs.update((method_options or {}).get(spec.name, {}))
    for key, value in problem.items():
        if value is not None and key in spec.parameters:
            kwargs.setdefault(key, value)
    return kwargs


# Work caps of the default set's methods that would otherwise improve until their share of the
# time ends (``anytime``): with them a default run stops on work, so the same seed gives the same
# numbers on a loaded or a slower machine too (LipSDP's first-order solver: about 6 s of L-BFGS on
# mnistfc_256x2 on one core; named, it keeps its own cap of 3000 iterations).
DEFAULT_SET_WORK: dict[str, dict[str, Any]] = {"lipsdp": {"lbfgs_iter": 400}}


MIN_SHARE = 0.05  # the least share of the run's budget a method gets, even when the time is spent


NEED_FACTOR = 3.0  # a method that finishes on its own gets at most this times its predicted time


def budget_share(total: float, left: float, remaining: list[MethodSpec], sizes: GraphSizes | None = None) -> float:
    """Seconds for the next of ``remaining`` methods: its share of the time ``left`` of the run's
    ``total``, and at least ``MIN_SHARE * total``, so that a method that starts late still returns a
    bound (the run may then overrun its budget by that much per method).

    The budgeted methods share ``left`` in proportion to their ``budget_weight``, except that a
    method that finishes on its own (not ``anytime``) is given at most ``NEED_FACTOR`` times its
    predicted time on ``sizes``: a cheap method does not hold a large share that the expensive
    tight one could use (water filling: what the capped ones do not take is shared by weight among
    the others; if every method is capped, the rest is shared by weight). Time a method does not
    use passes to the next ones. The shares depend on the sizes and the time left only."""
    budgeted = [s for s in remaining if s.budgeted]
    if not remaining[0].budgeted or not budgeted:
        return max(left, MIN_SHARE * total)
    needs = [NEED_FACTOR * s.predicted_seconds(sizes) if sizes is not None and not s.anytime else math.inf
             for s in budgeted]
    shares = _water_fill(left, [s.budget_weight for s in budgeted], needs)
    return max(shares[budgeted.index(remaining[0])], MIN_SHARE * total)


def _water_fill(total: float, weights: list[float], caps: list[float]) -> list[float]:
    """Shares ``min(cap_i, lam w_i)`` of ``total`` with ``lam`` such that they add up to ``total``;
    when every cap is reached below that, the caps plus the rest in proportion to the weights."""
    shares = [0.0] * len(weights)
    free, rest = set(range(len(weights))), total
    while free:
        lam = rest / sum(weights[i] for i in free)
        capped = {i for i in free if caps[i] < lam * weights[i]}
        if not capped:
            for i in free:
                shares[i] = lam * weights[i]
            return shares
        for i in capped:
            shares[i] = caps[i]
            rest -= caps[i]
        free -= capped
    return [s + rest * w / sum(weights) for s, w in zip(shares, weights)]
