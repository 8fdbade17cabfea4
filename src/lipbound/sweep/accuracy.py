"""Certified accuracy over a data set, from one record per input (:mod:`~lipbound.sweep.dataset`).

An input counts as **certified at radius r** when it is classified correctly and ``B(x, r)`` is
certified (its certified radius exceeds ``r``): the curve ``r -> certified accuracy`` is the
standard figure of the field; at ``r = 0`` it is the clean accuracy. A misclassified input has
certified radius 0. An instance that ended in ``error`` counts as neither correct nor certified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import LipboundError
from .runner import SweepRun

__all__ = ["DatasetSummary", "summarize"]


@dataclass
class DatasetSummary:
    """``n`` inputs done (of ``total``), ``clean_accuracy``, ``certified_accuracy[k]`` at
    ``radii[k]``, the certified radii of every done input (``certified_radii``, 0 when wrong or
    in error), their quantiles, the ``constants`` used, the error records and the run."""

    n: int
    total: int
    radii: list[float]
    clean_accuracy: float
    certified_accuracy: list[float]
    certified_radii: list[float]
    constants: dict[str, Any]
    errors: list[dict[str, Any]] = field(default_factory=list)
    run: SweepRun | None = field(default=None, repr=False)

    @property
    def radius_quantiles(self) -> dict[str, float]:
        """min, quartiles and max of the certified radii."""
        s = sorted(self.certified_radii)
        if not s:
            return {}
        pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
        return {"min": s[0], "q25": pick(0.25), "median": pick(0.5), "q75": pick(0.75), "max": s[-1]}

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "radii": self.radii, "clean_accuracy": self.clean_accuracy,
                "certified_accuracy": self.certified_accuracy, "radius_quantiles": self.radius_quantiles,
                "constants": self.constants, "errors": len(self.errors),
                "interrupted": bool(self.run and self.run.interrupted)}

    def table(self) -> str:
        c = self.constants
        lines = [f"certified Lipschitz bound U = {c['upper']:.6g} ({c['source']}) on {c['domain']}"
                 + ("; local logit-pair constants per input" if c.get("local") else ""),
                 *([_pair_line(c["pair_constants"])] if c.get("pair_constants") else []),
                 f"inputs: {self.n}/{self.total} done" + (" (interrupted: summary so far)" if self.run and
                                                          self.run.interrupted else "")
                 + (f", {len(self.errors)} in error" if self.errors else ""),
                 f"clean accuracy: {self.clean_accuracy:.4f}",
                 f"{'L2 radius':>12} {'certified accuracy':>20}"]
        lines += [f"{r:>12.6g} {a:>20.4f}" for r, a in zip(self.radii, self.certified_accuracy)]
        q = self.radius_quantiles
        if q:
            lines.append("certified radius: " + ", ".join(f"{k} {v:.4g}" for k, v in q.items()))
        lines += [f"error: {e['instance']}: {e['reason']}" for e in self.errors[:5]]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | None = None) -> Any:
        """Certified accuracy against L2 radius (a step curve from the certified radii, the asked
        radii marked) on a new matplotlib ``Figure``, saved to ``path`` when given."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise LipboundError("plotting needs matplotlib: pip install 'lipbound[plot]'") from None
        top = max(self.radii + [r for r in self.certified_radii if math.isfinite(r)]) * 1.05 or 1.0
        grid = [top * k / 400 for k in range(401)]
        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        ax.plot(grid, [_fraction(self.certified_radii, r, self.n) for r in grid], color="tab:blue")
        ax.plot(self.radii, self.certified_accuracy, "o", color="tab:red", label="asked radii")
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"certified accuracy (U = {self.constants['upper']:.4g}, n = {self.n})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _fraction(radii: Sequence[float], r: float, n: int) -> float:
    return sum(1 for v in radii if v > r) / n if n else 0.0


def _pair_line(pairs: list[list[float]]) -> str:
    """One line on the certified logit-pair constants ``L_yj`` (off the diagonal)."""
    values = [v for i, row in enumerate(pairs) for j, v in enumerate(row) if i != j]
    return (f"certified logit-pair constants L_yj: min {min(values):.6g}, max {max(values):.6g} "
            f"(radius min_j margin_yj / L_yj when larger than margin / (sqrt(2) U))")


def summarize(run: SweepRun, radii: Sequence[float], constants: dict[str, Any]) -> DatasetSummary:
    """The summary of the records of ``run`` (module doc)."""
    records = run.records
    n = len(records)
    ok = [r for r in records if r["status"] == "ok"]
    correct = [r["predicted"] == r["label"] for r in ok]
    cert_radii = [r["radius"] if r["predicted"] == r["label"] else 0.0 for r in ok]
    cert_radii += [0.0] * (n - len(ok))
    accuracy = [sum(1 for r in ok if r["predicted"] == r["label"] and r["certified"][k]) / n if n else 0.0
                for k in range(len(radii))]
    return DatasetSummary(n, run.total, list(radii), sum(correct) / n if n else 0.0, accuracy, cert_radii,
                          constants, run.errors, run)
