"""Which methods :func:`lipbound.estimate` runs, and which options each receives.

* ``methods=None``: a **default set** sized for the model: the certified AutoLip bound, SeqLip
  when it is registered, the witnessed ``lower`` bound, and ``exact`` when the model is an
  MLP-like ReLU network with at most :data:`EXACT_DEFAULT_NEURONS` activation units.
* ``methods="all"``: every registered method except aggregates of the others (``"best"``).
* an explicit list: exactly those methods.

In the first two cases a method that does not apply (it raises
:class:`~lipbound.errors.NotApplicable` or :class:`~lipbound.errors.UnsupportedOperation`) is
recorded in ``Report.skipped`` with its reason; asked for by name, it raises.

A method receives the run's common options that its signature accepts, the entries of
``method_options[name]``, and
``domain`` / ``data`` only when its signature names them: a bound that does not take the domain
into account is a bound over all of ``R^n``, which stays a valid *upper* bound on a box.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable

from ..graph.ir import Graph
from . import METHODS, get_method
from .piecewise import count_two_slope_neurons

__all__ = ["EXACT_DEFAULT_NEURONS", "AGGREGATES", "select_methods", "default_methods", "method_kwargs"]

EXACT_DEFAULT_NEURONS = 32  # ``exact`` joins the default set up to this many ReLU units
AGGREGATES = ("best",)  # methods that only rerun others: left out of "all"


def select_methods(graph: Graph, methods: Iterable[str] | str | None) -> tuple[list[str], bool]:
    """``(names, explicit)``: the methods to run and whether the user named them one by one."""
    if methods is None:
        return default_methods(graph), False
    if isinstance(methods, str):
        if methods == "all":
            return [m for m in METHODS if m not in AGGREGATES], False
        methods = [methods]
    names = list(methods)
    if "all" in names:
        raise ValueError("'all' cannot be combined with other method names")
    for m in names:
        get_method(m)  # unknown names fail with the list of valid ones
    return names, True


def default_methods(graph: Graph, *, lower: bool = True) -> list[str]:
    """The default set (module doc); ``lower=False`` leaves out the lower bound (upper bounds
    only, e.g. for certificates)."""
    names = ["autolip"] + (["seqlip"] if "seqlip" in METHODS else []) + (["lower"] if lower else [])
    n = count_two_slope_neurons(graph)
    if n is not None and n <= EXACT_DEFAULT_NEURONS:
        names.append("exact")
    return names


def method_kwargs(name: str, options: dict[str, Any], method_options: dict[str, dict[str, Any]] | None,
                  **problem: Any) -> dict[str, Any]:
    """Keyword arguments for method ``name``: the ``options`` its signature accepts (all of them
    when it takes ``**kwargs``: e.g. the power-method options of AutoLip), then
    ``method_options[name]`` (all of them: asked for this method by name), then each entry of
    ``problem`` (``domain``, ``data``) that is not None and that the signature names explicitly."""
    params = inspect.signature(get_method(name)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if takes_any or k in params}
    kwargs.update((method_options or {}).get(name, {}))
    for key, value in problem.items():
        if value is not None and key in params:
            kwargs[key] = value
    return kwargs
