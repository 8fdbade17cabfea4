"""Results of the methods and the report that gathers them (DESIGN §1).

Every method returns one :class:`Result`; :func:`lipbound.estimate` gathers them in a
:class:`Report`, which keeps the **bracket** ``[lower, upper]``: the best witnessed lower bound
and the best certified upper bound over all results (an ``exact`` result is both).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import torch

from . import report_format
from .errors import InvalidInput
from .report_format import PARTS_NOTE
from .report_io import number, region_from_dict


class Kind(str, Enum):
    """What a number guarantees (DESIGN §1). A ``str`` enum: ``Kind.EXACT == "exact"`` and JSON
    holds the string."""

    CERTIFIED_UPPER = "certified_upper"  # >= L(f) by proof
    WITNESSED_LOWER = "witnessed_lower"  # <= L(f), with a witness anyone can re-check
    EXACT = "exact"  # both, within the method's tolerance
    ESTIMATE = "estimate"  # neither guaranteed

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def is_upper(self) -> bool:
        return self in (Kind.CERTIFIED_UPPER, Kind.EXACT)

    @property
    def is_lower(self) -> bool:
        return self in (Kind.WITNESSED_LOWER, Kind.EXACT)


KINDS = tuple(k.value for k in Kind)


@dataclass
class LayerRow:
    """One node of the fused graph in a per-layer table, written by the propagations (AutoLip,
    SeqLip: :func:`lipbound.methods.autolip.propagate`).

    Attributes:
        name, origin: the node's name and where it comes from in the user's model (a fused node's
            origin joins its layers' origins with ``" + "``).
        type: the operator's label (``Linear``, ``Conv2d``, ...), the activation's, ``MaxPool``,
            ``add`` or ``concat``.
        shape: output shape without batch axis.
        factor: the partial Lipschitz constant the propagation used: ``||A||_2`` of an affine node
            (certified or power-method, per the method), ``max |slope|`` of an activation,
            ``sqrt(m)`` of a max pooling; None for additions and concatenations.
        L: the running bound (L2 -> L2) from the input to this node; None inside a SeqLip chain,
            whose nodes get no bound of their own.
        power: affine only: power-method value of ``||A||_2`` (a lower estimate).
        certified: affine only: certified upper bound of ``||A||_2``; ``certified_how`` says how,
            ``exact`` whether it is the exact SVD, ``iterations`` counts the power steps.
        chain_constant: SeqLip only, on the last node of a sequential chain: the chain's constant,
            which replaced the product of its factors.
    """

    name: str
    origin: str
    type: str
    shape: tuple[int, ...]
    factor: float | None = None
    L: float | None = None
    power: float | None = None
    certified: float | None = None
    certified_how: str | None = None
    exact: bool | None = None
    iterations: int | None = None
    chain_constant: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({**asdict(self), "shape": list(self.shape)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerRow":
        numbers = {k: number(d[k]) for k in ("factor", "L", "power", "certified", "chain_constant") if k in d}
        return cls(**{**d, **numbers, "shape": tuple(d["shape"])})


@dataclass
class Result:
    """One method's answer.

    Attributes:
        method: the method's name (``"autolip"``, ...).
        value: the number; its meaning is given by ``kind``.
        kind: a :class:`Kind` (a plain string is converted): ``certified_upper`` (``>= L(f)`` by
            proof), ``witnessed_lower`` (``<= L(f)``, with a witness), ``exact`` (both) or
            ``estimate`` (neither guaranteed).
        seconds: wall-clock time of the method.
        witness: for a lower bound, the input(s) that realise it; else None.
        details: method-specific facts (per-node factors, options, solver status), JSON-ready.
        bracket: ``(witnessed lower, certified upper)`` that the method proved: for an ``exact``
            result they meet within the method's tolerance (``value`` lies between them), and the
            report's bracket uses these ends, so that rounding never puts ``value`` on the wrong
            side of ``L(f)``; a ``certified_upper`` result with a witness (``local-bab``) also
            gives its witnessed lower end.
        options: the options the method ran with (set by :func:`lipbound.estimate`).
        layers: one :class:`LayerRow` per node of the fused graph, for methods with per-node data
            (AutoLip, SeqLip); empty otherwise.
    """

    method: str
    value: float
    kind: Kind
    seconds: float = 0.0
    witness: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    bracket: tuple[float, float] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            self.kind = Kind(self.kind)
        except ValueError:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}") from None
        if self.kind != Kind.ESTIMATE and math.isnan(self.value):
            raise ValueError(f"{self.method} returned NaN as a {self.kind}: a bound is never NaN")
        if self.bracket is not None and not self.bracket[0] <= self.bracket[1]:
            raise ValueError(f"{self.method}: bracket {self.bracket} has lower > upper")

    @property
    def upper(self) -> float | None:
        """The certified upper bound this result proves (None when it proves none)."""
        if not self.kind.is_upper:
            return None
        return self.bracket[1] if self.bracket is not None else self.value

    @property
    def lower(self) -> float | None:
        """The witnessed lower bound this result proves (None when it proves none): its value for
        a lower bound, else the lower end of its bracket when a witness backs it (``local-bab``)."""
        if not self.kind.is_lower:
            return self.bracket[0] if self.bracket is not None and self.witness is not None else None
        return self.bracket[0] if self.bracket is not None else self.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict. The layer rows go to ``details["nodes"]`` (where they always were), one
        dict per row with every :class:`LayerRow` field (None where a field does not apply)."""
        details = _jsonable(self.details)
        if self.layers:
            details["nodes"] = [row.to_dict() for row in self.layers]
        out = {"method": self.method, "value": _num(self.value), "kind": self.kind.value,
               "seconds": round(self.seconds, 6), "witness": _jsonable(self.witness), "details": details}
        if self.bracket is not None:
            out["bracket"] = [_num(v) for v in self.bracket]
        if self.options:
            out["options"] = _jsonable(self.options)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        """The result whose :meth:`to_dict` is ``d`` (the witness stays a dict of lists)."""
        details = dict(d.get("details", {}))
        rows = details.pop("nodes", None) if _layer_dicts(details.get("nodes")) else None
        bracket = d.get("bracket")
        return cls(d["method"], number(d["value"]), d["kind"], d.get("seconds", 0.0), d.get("witness"), details,
                   None if bracket is None else (number(bracket[0]), number(bracket[1])), d.get("options", {}),
                   [LayerRow.from_dict(r) for r in rows or []])


@dataclass
class Report:
    """All results for one model on one input region, with the bracket.

    ``region`` is the input region the bounds hold on (None: all of ``R^n``, the global constant;
    see :mod:`lipbound.methods.region`). For a union of boxes (not convex) ``results`` holds one
    result, ``"union"``, whose bracket holds for every pair in the union
    (:mod:`lipbound.methods.union_bound`); ``parts`` holds one report per box, whose bounds hold
    only for pairs inside that box, and ``hulls`` the reports on the hulls of the clusters of parts
    that needed one (their upper bounds hold for pairs in that hull; their lower ends count for
    the union only when re-checked in it)."""

    model: str
    input_shape: tuple[int, ...]
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it does not apply
    region: Any = None
    parts: list["Report"] = field(default_factory=list)
    hulls: list["Report"] = field(default_factory=list)

    @property
    def region_text(self) -> str:
        return "R^n (global)" if self.region is None else self.region.describe()

    @property
    def upper(self) -> float:
        """Best certified upper bound (``inf`` when no method certified one)."""
        vals = [r.upper for r in self.results if r.upper is not None]
        return min(vals) if vals else math.inf

    @property
    def lower(self) -> float | None:
        """Best witnessed lower bound (None when no method gave one)."""
        vals = [r.lower for r in self.results if r.lower is not None]
        return max(vals) if vals else None

    @property
    def upper_method(self) -> str | None:
        """The method that gave :attr:`upper` (the first, on a tie); None when none certified one."""
        return _best_method(self.results, "upper", min)

    @property
    def lower_method(self) -> str | None:
        """The method that gave :attr:`lower` (the first, on a tie); None when none gave one."""
        return _best_method(self.results, "lower", max)

    @property
    def ratio(self) -> float | None:
        """``upper / lower``: 1 means the constant is known exactly; None without a lower bound."""
        lo = self.lower
        if lo is None:
            return None
        return self.upper / lo if lo > 0 else math.inf

    def result(self, method: str) -> Result:
        for r in self.results:
            if r.method == method:
                return r
        raise KeyError(f"no result for method {method!r}; have {[r.method for r in self.results]}")

    @property
    def layers(self) -> list[LayerRow]:
        """The layer rows of the first result that has them (AutoLip's, when it ran), with the
        power-method and certified norms that other results computed filled in where missing."""
        tables = [r.layers for r in self.results if r.layers]
        if not tables:
            return []
        rows = []
        for row in tables[0]:
            same = [r for other in tables[1:] for r in other if r.name == row.name]
            fill = {key: next((getattr(r, key) for r in same if getattr(r, key) is not None), None)
                    for key in ("power", "certified") if getattr(row, key) is None}
            rows.append(replace(row, **{k: v for k, v in fill.items() if v is not None}))
        return rows

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "input_shape": list(self.input_shape),
               "region": {"type": "R^n"} if self.region is None else self.region.to_dict(),
               "region_text": self.region_text, "upper": _num(self.upper), "lower": _num(self.lower),
               "upper_method": self.upper_method, "lower_method": self.lower_method,
               "ratio": _num(self.ratio), "results": [r.to_dict() for r in self.results],
               "skipped": dict(self.skipped)}
        if self.parts:
            out["parts_note"] = (f"upper/lower above: the union's, valid for every pair in the union; parts: {PARTS_NOTE}")
            out["parts"] = [p.to_dict() for p in self.parts]
            out["hulls"] = [h.to_dict() for h in self.hulls]
            out["max_over_parts"] = {"upper": _num(max(p.upper for p in self.parts)), "note": PARTS_NOTE}
        return out

    def bracket_line(self) -> str:
        """``bracket: lower L (method)  upper U (method)  ratio R`` (:func:`~lipbound.report_format.bracket_line`)."""
        return report_format.bracket_line(self)

    def hint(self, untried: Sequence[str] = ()) -> str | None:
        """One line on what would tighten a bracket of ratio > 10, else None; ``untried``: certified
        methods worth naming when they were not run (:func:`~lipbound.report_format.hint_line`)."""
        return report_format.hint_line(self, untried)

    def table(self, untried: Sequence[str] = ()) -> str:
        """Plain-text tables: the layers (when known; long names wrapped, never cut), then one line
        per result, then the bracket and, when the ratio is large, the hint (``untried``: as for
        :meth:`hint`)."""
        return report_format.table(self, untried)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        lo = "none" if self.lower is None else f"{self.lower:.4g}"
        return (f"<Report {self.model!r} input {tuple(self.input_shape)}, {self.region_text}: bracket [{lo}, "
                f"{self.upper:.4g}] by {self.lower_method or '-'}/{self.upper_method or '-'}, methods "
                f"{', '.join(r.method for r in self.results) or 'none'}>")

    def _repr_html_(self) -> str:
        return report_format.to_html(self)

    def to_markdown(self) -> str:
        return report_format.markdown(self)

    def to_csv(self, layers: bool = False) -> str:
        """One CSV row per result (or per layer row with ``layers=True``), with a header."""
        return report_format.to_csv(self, layers)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON to ``path``; :meth:`load` reads it back."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Report":
        """The report :meth:`save` wrote: every field of :meth:`to_dict` comes back (witnesses as
        dicts of lists, see :mod:`lipbound.report_io`)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"{path} is not a saved lipbound report ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        """The report whose :meth:`to_dict` is ``d``."""
        return cls(d["model"], tuple(d["input_shape"]), [Result.from_dict(r) for r in d["results"]],
                   dict(d.get("skipped", {})), region_from_dict(d["region"]),
                   [cls.from_dict(p) for p in d.get("parts", [])], [cls.from_dict(h) for h in d.get("hulls", [])])

    def plot(self, path: str | None = None):
        """Draw the bracket and the per-layer norms (:func:`lipbound.plot.plot_report`; needs
        the ``[plot]`` extra, matplotlib). Saves to ``path`` when given; returns the figure."""
        from .plot import plot_report

        return plot_report(self, path)


def _layer_dicts(rows: Any) -> bool:
    """``rows`` are :meth:`LayerRow.to_dict` dicts (``Result.to_dict`` writes them to ``details["nodes"]``)."""
    return isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and "origin" in r for r in rows)


def _best_method(results: list[Result], end: str, pick: Any) -> str | None:
    """The first result whose ``end`` (``"upper"``/``"lower"``) equals the ``pick`` over all of them."""
    vals = [(getattr(r, end), r.method) for r in results if getattr(r, end) is not None]
    if not vals:
        return None
    best = pick(v for v, _ in vals)
    return next(m for v, m in vals if v == best)


def _num(v: float | None) -> float | None | str:
    if v is None:
        return None
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return _num(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if callable(getattr(obj, "to_dict", None)):  # e.g. a witness
        return _jsonable(obj.to_dict())
    return str(obj)  # e.g. a dtype or a region among the options
