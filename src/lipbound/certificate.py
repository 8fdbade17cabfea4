"""The result of :func:`lipbound.certify`: per-input certified radii, clean and certified accuracy.

An input ``x`` predicted as class ``y`` is **certified at radius r** when every ``x'`` with
``||x' - x||_2 <= r`` (inside the domain, when the constants were computed on one) is also
predicted ``y``; the certificate shows it for every ``r < radius``. With labels, an input whose
prediction differs from its label is certified at no radius. The **certified accuracy** at ``r``
is the fraction of inputs certified at ``r`` (with labels: and correctly predicted); without labels
the same count is reported as the certified fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import torch

from .errors import InvalidInput

__all__ = ["Certificate"]


def _finite_or_none(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


@dataclass
class Certificate:
    """Per input (``N`` of them): the ``predicted`` class, the logit ``margin`` (a rigorous lower
    bound of ``f_y(x) - max_{j != y} f_j(x)``, 0 if negative) and the certified L2 ``radius``.

    ``upper`` is the certified Lipschitz bound ``U`` of the logit vector and ``source`` where it
    came from; ``global_radius`` is ``margin / (sqrt(2) U)``; ``pair_radius`` is
    ``min_j (f_y - f_j) / L_yj`` with the certified pair constants ``margin_constants`` ``(m, m)``
    (None without them); ``radius`` is the larger of the two, or the local search's radius with
    ``local=True``. ``labels`` and ``radii`` give the accuracies; ``checked_radius``,
    ``certified`` and ``pair_constants`` ``(N, m)`` are the local check of one ball per input
    (``certify(radius=R)``).
    """

    predicted: torch.Tensor
    margin: torch.Tensor
    radius: torch.Tensor
    upper: float
    source: str
    global_radius: torch.Tensor
    pair_radius: torch.Tensor | None = None
    margin_constants: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    radii: tuple[float, ...] = ()
    local: bool = False  # radius from the local search on L2 balls
    checked_radius: float | None = None
    certified: torch.Tensor | None = None
    pair_constants: torch.Tensor | None = field(default=None, repr=False)

    # ---- accuracies ------------------------------------------------------------------------
    @property
    def correct(self) -> torch.Tensor | None:
        """``(N,)`` booleans: predicted class == label (None without labels)."""
        return None if self.labels is None else self.predicted == self.labels

    @property
    def clean_accuracy(self) -> float | None:
        c = self.correct
        return None if c is None or not len(c) else c.double().mean().item()

    def certified_at(self, r: float) -> torch.Tensor:
        """``(N,)`` booleans: certified at radius ``r`` (``r < radius``, and correct with labels)."""
        ok = self.radius > r
        return ok if self.labels is None else ok & self.correct

    def certified_accuracy(self) -> dict[float, float]:
        """``{r: fraction of inputs certified at r}`` for each of ``radii``."""
        n = len(self.radius)
        return {r: (self.certified_at(r).sum().item() / n if n else math.nan) for r in self.radii}

    # ---- output ----------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """One dict per input: ``index``, ``predicted``, ``label`` and ``correct`` (None without
        labels), ``margin``, ``radius``, ``global_radius``, ``pair_radius`` (None without pair
        constants), ``certified_at`` (one boolean per radius of ``radii``) and, after a check of
        one radius, ``certified`` and ``pair_constants`` (``L_yj`` on the ball, None at ``j = y``)."""
        out = []
        for i in range(len(self.radius)):
            rec: dict[str, Any] = {
                "index": i, "predicted": int(self.predicted[i]),
                "label": None if self.labels is None else int(self.labels[i]),
                "correct": None if self.labels is None else bool(self.correct[i]),
                "margin": float(self.margin[i]), "radius": float(self.radius[i]),
                "global_radius": float(self.global_radius[i]),
                "pair_radius": None if self.pair_radius is None else float(self.pair_radius[i]),
                "certified_at": [bool(self.certified_at(r)[i]) for r in self.radii]}
            if self.checked_radius is not None:
                rec["certified"] = bool(self.certified[i])
                rec["pair_constants"] = _finite_or_none(self.pair_constants[i].tolist())
            out.append(rec)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``upper``, ``source``, ``n``, ``local``, ``radii``, ``clean_accuracy`` (None
        without labels), ``certified_accuracy`` (with labels) or ``certified_fraction`` (without)
        as lists matching ``radii``, ``margin_constants`` (``(m, m)`` or None), ``checked_radius``,
        and ``inputs``: the per-input :meth:`records`."""
        acc = list(self.certified_accuracy().values())
        return {"upper": self.upper, "source": self.source, "n": len(self.radius), "local": self.local,
                "radii": list(self.radii), "clean_accuracy": self.clean_accuracy,
                ("certified_fraction" if self.labels is None else "certified_accuracy"): acc,
                "margin_constants": (None if self.margin_constants is None
                                     else [_finite_or_none(row) for row in self.margin_constants.tolist()]),
                "checked_radius": self.checked_radius, "inputs": self.records()}

    def table(self) -> str:
        lines = [f"certified Lipschitz bound U = {self.upper:.6g} ({self.source})",
                 "radius: " + ("the largest L2 ball certified by local pair constants" if self.local
                               else "max(pair radius min_j (f_y - f_j) / L_yj, global radius margin / (sqrt(2) U))")]
        cols = ["input", "class"] + ([] if self.labels is None else ["label"]) + ["margin", "radius", "global"]
        cols += [] if self.pair_radius is None else ["pair"]
        lines.append(" ".join(f"{c:>10}" for c in cols))
        for rec in self.records():
            ints = [rec["index"], rec["predicted"]] + ([] if self.labels is None else [rec["label"]])
            floats = [rec["margin"], rec["radius"], rec["global_radius"]]
            floats += [] if self.pair_radius is None else [rec["pair_radius"]]
            lines.append(" ".join(f"{v:>10}" for v in ints) + " " + " ".join(f"{v:>10.4g}" for v in floats))
        if self.checked_radius is not None:
            lines.append(f"L2 radius {self.checked_radius:.6g} checked with local pair constants: "
                         f"{int(self.certified.sum())} of {len(self.certified)} certified")
        if len(self.radius):
            lines.append(f"median radius {self.radius.median().item():.6g}, min {self.radius.min().item():.6g}")
        if self.labels is not None:
            lines.append(f"clean accuracy {self.clean_accuracy:.4g}")
        name = "certified fraction" if self.labels is None else "certified accuracy"
        lines += [f"{name} at radius {r:g}: {a:.4g}" for r, a in self.certified_accuracy().items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    @classmethod
    def concat(cls, parts: Sequence["Certificate"]) -> "Certificate":
        """One certificate for the inputs of ``parts`` in order (e.g. inputs certified one at a time
        by a dataset runner). The parts must share ``upper``, ``source``, ``radii``, ``local``,
        ``checked_radius`` and their use of labels and pair constants."""
        if not parts:
            raise InvalidInput("concat needs at least one certificate")
        first = parts[0]
        shared = ("upper", "source", "radii", "local", "checked_radius")
        for p in parts[1:]:
            diff = [k for k in shared if getattr(p, k) != getattr(first, k)]
            diff += [k for k in ("labels", "pair_radius") if (getattr(p, k) is None) != (getattr(first, k) is None)]
            if diff:
                raise InvalidInput(f"certificates to concatenate differ in {', '.join(diff)}")
        per_input = {"predicted", "margin", "radius", "global_radius", "pair_radius", "labels", "certified",
                     "pair_constants"}
        values = {f.name: getattr(first, f.name) for f in fields(cls) if f.name not in per_input}
        for k in per_input:
            values[k] = None if getattr(first, k) is None else torch.cat([getattr(p, k) for p in parts])
        return cls(**values)
