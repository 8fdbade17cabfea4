"""Input domains and re-checkable witnesses of lower bounds (DESIGN §1, §6, §8).

A **witness** (:class:`Witness`) is an object that anyone can re-check, in float64, from the
model alone: :meth:`Witness.recheck` on a graph, :func:`lipbound.witness_value` on a model (which
also takes the dict form that ``Result.to_dict()`` writes). ``f`` below is the function the graph's float64 parameters define, in exact
arithmetic; every float64 evaluation of it carries rounding, which this module bounds.

* A :class:`PairWitness` ``(x, y)`` (JSON form ``{"form": "pair", "x", "y"}``) shows ``||f(x) - f(y)|| / ||x - y|| <= L(f)`` by definition,
  with no differentiability needed. The quotient is computed in float64, where ``f(x) - f(y)``
  can cancel catastrophically (a large output offset), so the value reported is the **rigorous
  lower end** of :func:`pair_bounds`: the float quotient minus a forward error bound of both
  evaluations (:func:`enclose`), of the subtraction, of ``x - y`` and of the norms.
* A :class:`PointWitness` ``(x, v)`` (a Jacobian witness, JSON form ``{"form": "jacobian", "x", "v"}``) shows ``||Df(x) v|| / ||v|| <= ||Df(x)||_2 <= L(f)``,
  but only where ``f`` is continuously differentiable near ``x``: at a kink the autograd
  Jacobian is a choice of one-sided slopes that may belong to no linear region (with coinciding
  kinks it can exceed ``L(f)``). :func:`region_check` decides it: ``x`` is in the closed domain
  box, every activation's input is off that activation's ``kinks`` by more than the rounding
  error bound of its float64 computation, and every max-pooling window's maximum beats its
  runner-up by more than that bound (a tie is a kink too, unless every tied input is locally
  constant, e.g. inactive ReLUs). Then ``f`` is ``C^1`` on a neighbourhood of ``x`` (for
  piecewise-linear networks: affine on it). On a box domain such a neighbourhood meets the box's
  interior, so a point on a face is fine as long as it is off every kink. The value is the lower
  end of a rigorous enclosure of ``||Df(x) v|| / ||v||`` (the tangent ``Df(x) v`` propagated
  forward with its rounding bound, :func:`enclose`), **re-checked by another evaluation path**:
  the central difference pair ``(x - h v, x + h v)``, with ``h`` inside the region found by the
  check and the rigorous rounding interval of :func:`pair_bounds`, must agree with it to a
  relative ``1e-6``.

A witness that fails these checks is rejected with :class:`~lipbound.errors.InvalidInput`; it is
never converted into another one (``lower`` only returns witnesses that pass).

The forward error analysis behind these checks is in :mod:`lipbound.methods.rounding`; the
input regions (:class:`~lipbound.methods.region.Box`) in :mod:`lipbound.methods.region`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import InvalidInput
from ..graph.ir import Graph
from .jacobian import Linearization
from .region import Box, Region, along_region, as_box, as_region
from .rounding import jacobian_witness_values, pair_bounds

__all__ = ["Box", "as_box", "Witness", "PointWitness", "PairWitness", "as_witness", "jacobian_values", "pair_values"]


def jacobian_values(fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``||Df(x_b) v_b|| / ||v_b||`` for a batch by autograd (:class:`~lipbound.methods.jacobian.Linearization`),
    with no validity check: see :func:`jacobian_witness_values`."""
    jv = Linearization(fn, x).jvp(v).detach()
    return jv.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)


def pair_values(fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||f(x_b) - f(y_b)|| / ||x_b - y_b||`` for a batch, in floating point with no rounding
    margin (differentiable: the pair search's objective). Reported values come from :func:`pair_bounds`."""
    d = (fn(x) - fn(y)).flatten(1).norm(dim=1)
    return d / (x - y).flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)




@dataclass(frozen=True, eq=False)
class Witness:
    """A re-checkable witness of a lower bound of ``L(f)`` (module doc): :class:`PointWitness` or
    :class:`PairWitness`. ``value`` is the lower bound it showed when it was found (None for one
    read from a dict); :meth:`recheck` computes it again from the graph alone. ``to_dict()`` is the
    JSON form ``{"form", "x", "v" | "y"}``, which ``witness["x"]`` also reads."""

    x: torch.Tensor
    form: ClassVar[str]
    second: ClassVar[str]  # the name of the tensor besides x: "v" or "y"

    @property
    def other(self) -> torch.Tensor:
        return getattr(self, self.second)

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "x": self.x, self.second: self.other}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def recheck(self, graph: Graph, domain: Any = None) -> float:
        """The lower bound this witness shows for ``graph`` (a Graph: for an ``nn.Module`` or a
        file use :func:`lipbound.witness_value`), re-checked in float64 on the CPU, one point at a
        time (so that every caller gets the same float64 operations, hence the same number), within
        ``domain`` (None or a box ``(low, high)``, closed).

        Raises:
            InvalidInput: the tensors do not fit the graph's input, or the witness is not valid
                (module doc).
        """
        if not isinstance(graph, Graph):
            raise InvalidInput(f"Witness.recheck takes a lipbound Graph, got {type(graph).__name__}; "
                               "for a model use lipbound.witness_value(model, witness, input_shape)")
        if graph.dtype != torch.float64 or graph.device.type != "cpu":
            graph = graph.to(device="cpu", dtype=torch.float64)
        shape = graph.input_shape
        x, other = (torch.as_tensor(t, dtype=torch.float64).cpu() for t in (self.x, self.other))
        if x.numel() != math.prod(shape) or other.numel() != math.prod(shape):
            raise InvalidInput(f"the witness's tensors must have the input shape {shape}")
        x, other = x.reshape(1, *shape), other.reshape(1, *shape)
        if not bool(torch.isfinite(x).all() and torch.isfinite(other).all()):
            raise InvalidInput("the witness contains NaN or infinite values")
        return self._value(graph, x, other, as_region(domain, shape))

    def _value(self, graph: Graph, x: torch.Tensor, other: torch.Tensor, box: Region | None) -> float:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class PointWitness(Witness):
    """A Jacobian witness: ``||Df(x) v|| / ||v|| <= L(f)`` where ``f`` is ``C^1`` near ``x`` (module
    doc); its value is the rigorous lower end of that quotient after :func:`region_check` and the
    central-difference re-check."""

    v: torch.Tensor
    value: float | None = None
    form: ClassVar[str] = "jacobian"
    second: ClassVar[str] = "v"

    def _value(self, graph: Graph, x: torch.Tensor, v: torch.Tensor, box: Region | None) -> float:
        if not bool(along_region(box, x, v).all()):
            raise InvalidInput("invalid Jacobian witness: v leaves the domain (it moves an element the domain fixes)")
        value, reasons = jacobian_witness_values(graph, x, v, box)
        if reasons[0] is not None:
            raise InvalidInput(f"invalid Jacobian witness: {reasons[0]} (use a pair witness there)")
        return float(value[0])


@dataclass(frozen=True, eq=False)
class PairWitness(Witness):
    """A pair witness: ``||f(x) - f(y)|| / ||x - y|| <= L(f)`` by definition; its value is the
    rigorous lower end of :func:`pair_bounds`."""

    y: torch.Tensor
    value: float | None = None
    form: ClassVar[str] = "pair"
    second: ClassVar[str] = "y"

    def _value(self, graph: Graph, x: torch.Tensor, y: torch.Tensor, box: Region | None) -> float:
        if box is not None and not bool(box.contains(torch.cat([x, y])).all()):
            raise InvalidInput("invalid pair witness: a point lies outside the domain")
        low, _ = pair_bounds(graph, x, y)
        if not bool(torch.isfinite(low[0])):
            raise InvalidInput("invalid pair witness: x == y, or the rounding error of f cannot be bounded")
        return float(low[0])


_FORMS: dict[str, type[Witness]] = {w.form: w for w in (PointWitness, PairWitness)}


def as_witness(witness: Witness | dict[str, Any]) -> Witness:
    """``witness`` itself, or the :class:`Witness` of its dict form ``{"form": "jacobian", "x", "v"}``
    or ``{"form": "pair", "x", "y"}`` (as ``Result.to_dict()`` writes it: lists or tensors)."""
    if isinstance(witness, Witness):
        return witness
    if not isinstance(witness, dict) or witness.get("form") not in _FORMS:
        raise InvalidInput("a witness is a Witness, or a dict with form 'jacobian' (x, v) or 'pair' (x, y)")
    cls = _FORMS[witness["form"]]
    try:
        x, other = (torch.as_tensor(witness[k], dtype=torch.float64).cpu() for k in ("x", cls.second))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInput(f"a {cls.form} witness needs tensors 'x' and '{cls.second}': {exc}") from None
    return cls(x, other)

