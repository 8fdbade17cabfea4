"""Which methods :func:`lipbound.estimate` runs, with which options and which share of the time.

* ``methods=None``: the **default set** (:attr:`MethodSpec.in_default`): the certified AutoLip and
  SeqLip bounds, the witnessed ``lower`` bound, and ``exact`` when the model is an MLP-like
  piecewise-linear network with at most :data:`~lipbound.methods.EXACT_DEFAULT_NEURONS` neurons
  (counting only the neurons not stable on the region). On a region the default set is chosen on
  the localized graph and adds the methods that per-neuron slopes make tight: ``eclipse-fast``,
  ``lipsdp`` up to :data:`~lipbound.methods.LOCAL_LIPSDP_NEURONS` unstable neurons, and
  ``local-bab`` for inputs of at most :data:`~lipbound.methods.LOCAL_BAB_INPUTS` elements.
* ``methods="all"``: every registered method except aggregates of the others (``"best"``).
* an explicit list: exactly those methods.

In the first two cases a method that does not apply (it raises
:class:`~lipbound.errors.NotApplicable` or :class:`~lipbound.errors.UnsupportedOperation`) is
recorded in ``Report.skipped`` with its reason; asked for by name, it raises.

A method receives the run's common options that it accepts, the entries of
``method_options[name]`` (an option it does not know raises
:class:`~lipbound.errors.InvalidInput`), ``domain`` / ``data`` when it takes them (a bound that
does not take the domain into account is a bound over all of ``R^n``, which stays a valid *upper*
bound on any region), and, when the run has a ``time_budget``, its share of the time left.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import InvalidInput
from ..graph.ir import Graph
from . import METHODS, MethodSpec, get_method

__all__ = ["select_methods", "default_methods", "method_kwargs", "check_options", "budget_share"]


def select_methods(graph: Graph, methods: Iterable[str] | str | None) -> tuple[list[str], bool]:
    """``(names, explicit)``: the methods to run and whether the user named them one by one."""
    if methods is None:
        return default_methods(graph), False
    if isinstance(methods, str):
        if methods == "all":
            return [name for name, spec in METHODS.items() if not spec.aggregate], False
        methods = [methods]
    names = list(methods)
    if "all" in names:
        if names == ["all"]:
            return select_methods(graph, "all")
        raise InvalidInput("'all' cannot be combined with other method names")
    for m in names:
        get_method(m)  # unknown names fail with the list of valid ones
    return names, True


def default_methods(graph: Graph, *, lower: bool = True) -> list[str]:
    """The default set (module doc); ``lower=False`` keeps only the upper bounds (e.g. for
    certificates)."""
    return [name for name, spec in METHODS.items()
            if spec.default_for(graph) and (lower or spec.guarantee.is_upper)]


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


MIN_SHARE = 0.05  # the least share of the run's budget a method gets, even when the time is spent


def budget_share(total: float, left: float, remaining: list[MethodSpec]) -> float:
    """Seconds for the next of ``remaining`` budgeted methods: its share of the time ``left`` of the
    run's ``total`` in proportion to the methods' ``budget_weight`` (equal shares by default; time a
    method does not use passes to the next ones), and at least ``MIN_SHARE * total``, so that a
    method that starts late still returns a bound (the run may then overrun its budget by that
    much per method)."""
    weights = sum(s.budget_weight for s in remaining if s.budgeted)
    return max(left * remaining[0].budget_weight / weights if weights else left, MIN_SHARE * total)
