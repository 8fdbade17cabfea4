"""Pictures of a :class:`~lipbound.report.Report` (needs the ``[plot]`` extra: matplotlib).

Left panel, **the bracket**: every method's value on a log axis, one row per method, marked by
kind (certified upper bound, exact value, estimate, witnessed lower bound), with the bracket
``[best lower, best upper]`` shaded. Right panel, **per-layer norms** of the affine layers: the
power-method value (a lower estimate) and the certified value (an upper bound), on a log axis.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

from .errors import LipboundError

if TYPE_CHECKING:  # report.py imports this module when it plots
    from .report import LayerRow

__all__ = ["plot_report", "STYLE"]

#: marker, colour and legend label per result kind
STYLE: dict[str, tuple[str, str, str]] = {
    "certified_upper": ("v", "tab:blue", "certified upper"),
    "exact": ("*", "tab:red", "exact"),
    "estimate": ("o", "tab:gray", "estimate (not guaranteed)"),
    "witnessed_lower": ("^", "tab:green", "witnessed lower"),
}


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise LipboundError("plotting needs matplotlib: pip install 'lipbound[plot]'") from None
    return Figure


def plot_report(report, path: str | None = None) -> Any:
    """Draw ``report`` (module doc) on a new matplotlib ``Figure`` (no pyplot state is touched);
    save it to ``path`` (format from the extension) when given. Returns the figure."""
    fig = _figure_class()(figsize=(12, 4.8), layout="constrained")
    ax_b, ax_l = fig.subplots(1, 2, width_ratios=(1.1, 1.0))
    _bracket(ax_b, report)
    _layers(ax_l, report.layers)
    fig.suptitle(f"{report.model}: input {tuple(report.input_shape)}, region {report.region_text}")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _bracket(ax, report) -> None:
    results = [r for r in report.results if math.isfinite(r.value) and r.value > 0]
    lo, hi = report.lower, report.upper
    if lo is not None and lo > 0 and math.isfinite(hi):
        ax.axvspan(lo, hi, color="tab:orange", alpha=0.15, label=f"bracket, ratio {hi / lo:.4g}")
        for v in (lo, hi):
            ax.axvline(v, color="tab:orange", linestyle="--", linewidth=1)
    seen = set()
    for i, r in enumerate(results):
        marker, colour, label = STYLE[r.kind]
        ax.plot([r.value], [i], marker=marker, color=colour, markersize=11, linestyle="none",
                label=None if r.kind in seen else label)
        seen.add(r.kind)
        ax.annotate(f"{r.value:.4g}", (r.value, i), textcoords="offset points", xytext=(0, 9), ha="center",
                    fontsize=8)
    ax.set_yticks(range(len(results)), [r.method for r in results])
    ax.set_ylim(-0.7, len(results) - 0.3)
    ax.set_xscale("log")
    if results:
        vals = [r.value for r in results]
        ax.set_xlim(min(vals) / 1.6, max(vals) * 1.6)
    ax.invert_yaxis()
    ax.set_xlabel("Lipschitz constant bound (L2 -> L2), log scale")
    ax.set_title("bracket by method")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _layers(ax, rows: list[LayerRow]) -> None:
    rows = [r for r in rows if r.certified is not None or r.power is not None]
    if not rows:
        ax.text(0.5, 0.5, "no per-layer norms\n(run autolip for them)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    xs = range(len(rows))
    width = 0.38
    power = [r.power or float("nan") for r in rows]
    cert = [r.certified or float("nan") for r in rows]
    ax.bar([x - width / 2 for x in xs], power, width, color="tab:gray", label="power method (lower)")
    ax.bar([x + width / 2 for x in xs], cert, width, color="tab:blue", label="certified (upper)")
    # names wrapped, never cut: the layers of a fused node ("a + b") stay told apart
    ax.set_xticks(list(xs), [f"{textwrap.fill(r.origin, 16)}\n{r.type}" for r in rows], fontsize=7, rotation=30,
                  ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("operator norm ||A||_2")
    ax.set_title("per-layer norms")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
