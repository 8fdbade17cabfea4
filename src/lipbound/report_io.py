"""Reading back what :meth:`lipbound.report.Report.to_dict` wrote (``Report.save`` / ``Report.load``).

Numbers that JSON cannot hold (``inf``, ``nan``) were written as words and come back as floats
(:func:`number`); a region (a box, a ball or a union of boxes) is rebuilt from its numbers, which
JSON keeps exactly (:func:`region_from_dict`). Witnesses come back as the dicts they were written
as (lists for the points): they are data to re-check (:func:`lipbound.witness_value` takes such a
dict), not proofs of their own.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import InvalidInput

__all__ = ["number", "region_from_dict"]


def number(v: float | str | None) -> float | None:
    """A float from JSON, also ``"inf"``, ``"-inf"`` and ``"nan"`` as ``_num`` wrote them."""
    return None if v is None else float(v)


def region_from_dict(d: dict[str, Any]) -> Any:
    """The region of ``Region.to_dict()`` (None for ``{"type": "R^n"}``, all of ``R^n``)."""
    # imported here: lipbound.methods imports lipbound.report, which imports this module
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


def _tensor(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)
