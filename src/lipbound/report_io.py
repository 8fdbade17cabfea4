"""Reading back a report saved as JSON (:meth:`lipbound.report.Report.save`).

:func:`report_from_dict` inverts :meth:`~lipbound.report.Report.to_dict`: the results (kind,
value, bracket, options, details, layer rows), the skipped methods, the region (a box, a ball or a
union of boxes, rebuilt from its numbers, which JSON keeps exactly) and the parts of a union.
Numbers that JSON cannot hold (``inf``, ``nan``) were written as words and come back as floats.
Witnesses come back as the dicts they were written as (lists for the points): they are data to
re-check (:func:`lipbound.witness_value` takes such a dict), not proofs of their own.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import InvalidInput
from .report import LayerRow, Report, Result

__all__ = ["report_from_dict", "region_from_dict"]


def report_from_dict(d: dict[str, Any]) -> Report:
    """The :class:`~lipbound.report.Report` whose ``to_dict()`` is ``d``."""
    try:
        report = Report(d["model"], tuple(d["input_shape"]), [_result(r) for r in d["results"]],
                        dict(d.get("skipped", {})), region_from_dict(d["region"]))
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"not a saved lipbound report: missing or malformed {exc}") from None
    report.parts = [report_from_dict(p) for p in d.get("parts", [])]
    return report


def region_from_dict(d: dict[str, Any]) -> Any:
    """The region object of ``Region.to_dict()`` (None for ``{"type": "R^n"}``)."""
    from .methods.region import Ball, Box, BoxUnion

    kind = d.get("type")
    if kind == "R^n":
        return None
    if kind == "box":
        return Box(_tensor(d["low"]), _tensor(d["high"]))
    if kind == "ball":
        return Ball(_tensor(d["center"]), d["radius"], d["norm"])
    if kind == "box_union":
        return BoxUnion([region_from_dict(p) for p in d["parts"]])
    raise InvalidInput(f"unknown region type {kind!r} in a saved report")


def _result(d: dict[str, Any]) -> Result:
    details = dict(d.get("details", {}))
    rows = details.pop("nodes", None)
    layers = [] if rows is None or not _are_layer_rows(rows) else [_layer(r) for r in rows]
    if rows is not None and not layers:
        details["nodes"] = rows  # a method's own "nodes" entry, not layer rows
    bracket = d.get("bracket")
    return Result(d["method"], _float(d["value"]), d["kind"], d.get("seconds", 0.0), d.get("witness"), details,
                  None if bracket is None else (_float(bracket[0]), _float(bracket[1])), d.get("options", {}), layers)


def _are_layer_rows(rows: Any) -> bool:
    return isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and "origin" in r for r in rows)


_LAYER_NUMBERS = ("factor", "L", "power", "certified", "chain_constant")


def _layer(d: dict[str, Any]) -> LayerRow:
    numbers = {k: _float(d[k]) for k in _LAYER_NUMBERS if isinstance(d.get(k), str)}
    return LayerRow(**{**d, **numbers, "shape": tuple(d["shape"])})


def _float(v: float | str) -> float:
    return float(v)  # also "inf", "-inf" and "nan", as _num wrote them


def _tensor(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)
