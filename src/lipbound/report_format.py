"""How a :class:`~lipbound.report.Report` reads: the bracket line, the hint, and its tables as plain
text, Markdown, CSV and HTML.

Every format shows the same cells (:func:`layer_cells`, :func:`result_cells`); only the markup
differs. Names are never cut: in the plain-text table a node name longer than
:data:`NAME_WIDTH` is wrapped onto continuation lines, so that fused layers (``"a + b"``) stay
told apart.
"""

from __future__ import annotations

import csv
import html
import io
import math
import textwrap
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .report import Report, Result

NAME_WIDTH = 40  # the plain-text table wraps longer node names
PARTS_NOTE = "max over parts: pairs inside one part only"
HINT_RATIO = 10.0  # above this ratio the table adds one line on what would tighten the bracket

LAYER_HEAD = ("node", "type", "output shape", "power norm", "certified", "L so far")
RESULT_HEAD = ("method", "value", "kind", "seconds", "stopped by")


def num(v: float | None) -> str:
    """A number in 5 significant digits (``-`` for none)."""
    return "-" if v is None else f"{v:.5g}"


def stopped_by_time(result: Result) -> bool:
    """The result was cut short by its time budget (the convention ``details["stopped_by"] == "time"``;
    also AutoLip's ``budget_cut`` layers, which it reports without a ``stopped_by``)."""
    d = result.details
    return d.get("stopped_by") == "time" or bool(d.get("budget_cut"))


def layer_cells(report: Report) -> list[tuple[str, ...]]:
    """One row of :data:`LAYER_HEAD` cells per layer row of the report."""
    return [(r.origin, r.type, str(tuple(r.shape)), num(r.power), num(r.certified), num(r.L)) for r in report.layers]


def result_cells(report: Report) -> list[tuple[str, ...]]:
    """One row of :data:`RESULT_HEAD` cells per result (value in 6 significant digits)."""
    return [(r.method, f"{r.value:.6g}", r.kind.value, f"{r.seconds:.2f}",
             "time" if stopped_by_time(r) else str(r.details.get("stopped_by", ""))) for r in report.results]


def bracket_line(report: Report) -> str:
    """``bracket: lower L (method)  upper U (method)  ratio R``: each end names the method that gave it."""
    lo = "none" if report.lower is None else f"{report.lower:.6g} ({report.lower_method})"
    up = f"{report.upper:.6g}" + (f" ({report.upper_method})" if report.upper_method else "")
    ratio = "n/a" if report.ratio is None else f"{report.ratio:.4g}"
    return f"bracket: lower {lo}  upper {up}  ratio {ratio}"


def hint_line(report: Report, untried: Sequence[str] = ()) -> str | None:
    """When the ratio exceeds :data:`HINT_RATIO`, one line on what would tighten the bracket, read
    from the report: a region when the run was global, data points for ``lower`` when it had none,
    the certified methods ``untried`` (the caller knows the registry, which sits above this
    module) that were neither run nor found not to apply, a larger time budget for the results a
    budget cut short. None otherwise."""
    ratio = report.ratio
    if ratio is None or ratio <= HINT_RATIO:
        return None
    tips = []
    if report.region is None:
        tips.append("bound a region, not all of R^n (--domain LOW,HIGH or --center/--radius)")
    if any(r.method == "lower" and "data" not in r.options for r in report.results):
        tips.append("start lower from data points (estimate(..., data=X))")
    tried = {r.method for r in report.results} | set(report.skipped)
    untried = [n for n in untried if n not in tried]
    if untried:
        tips.append("try " + ", ".join(f"-m {n}" for n in untried))
    cut = [r.method for r in report.results if stopped_by_time(r)]
    if cut:
        tips.append(f"a larger --time-budget ({', '.join(cut)} stopped on time)")
    return f"hint: ratio {ratio:.3g} > {HINT_RATIO:g}; to tighten: " + "; ".join(tips) if tips else None


def _wrapped_rows(cells: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Each row with a first cell longer than :data:`NAME_WIDTH` split over several rows (the
    continuation rows have empty other cells); words are kept whole when they fit."""
    out = []
    for row in cells:
        pieces = textwrap.wrap(row[0], NAME_WIDTH, break_on_hyphens=False) or [""]
        out.append((pieces[0], *row[1:]))
        out.extend((p, *("",) * (len(row) - 1)) for p in pieces[1:])
    return out


def _text_table(head: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    """Columns as wide as their widest cell, the columns in ``right`` aligned right."""
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    return [" ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in (head, *rows)]


def table(report: Report, untried: Sequence[str] = ()) -> str:
    """Plain text: the layers (when known), the region, one line per result and per skipped
    method, the bracket, the hint (when the ratio is large; ``untried`` as for :func:`hint_line`),
    and the parts of a union."""
    lines = []
    layers = layer_cells(report)
    if layers:
        lines += _text_table(LAYER_HEAD, _wrapped_rows(layers), right={3, 4, 5}) + [""]
    lines.append(f"region: {report.region_text}" + ("  (the union's bound: its parts and their hulls)" if report.parts else ""))
    rows = [(*r[:4], "stopped by time" if r[4] == "time" else "") for r in result_cells(report)]
    rows += [(name, "-", "skipped", "", why) for name, why in report.skipped.items()]
    lines += _text_table((*RESULT_HEAD[:4], ""), rows, right={1, 3})
    lines.append(bracket_line(report))
    hint = hint_line(report, untried)
    if hint:
        lines.append(hint)
    for i, part in enumerate(report.parts):
        lines.append(f"part {i}: {part.region_text}: {bracket_line(part)}")
    for hull in report.hulls:
        lines.append(f"hull {hull.region_text}: upper {hull.upper:.6g} (pairs inside that hull)")
    if report.parts:
        lines.append(f"{PARTS_NOTE}: upper {max(p.upper for p in report.parts):.6g}; the bracket above holds "
                     "for every pair in the union")
    return "\n".join(lines)


def markdown(report: Report) -> str:
    """Markdown: a heading, the layer table, the result table, the bracket (and the hint)."""
    def md(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
        esc = [tuple(c.replace("|", "\\|") for c in r) for r in (head, *rows)]
        return [f"| {' | '.join(esc[0])} |", "|" + "---|" * len(head), *(f"| {' | '.join(r)} |" for r in esc[1:])]

    lines = [f"### {report.model}: input {tuple(report.input_shape)}, region {report.region_text}", ""]
    if report.layers:
        lines += md(LAYER_HEAD, layer_cells(report)) + [""]
    lines += md(RESULT_HEAD, result_cells(report)) + [""]
    lines.append(f"**{bracket_line(report)}**")
    hint = hint_line(report)
    return "\n".join(lines + (["", f"_{hint}_"] if hint else []))


def to_csv(report: Report, layers: bool = False) -> str:
    """CSV with a header row: one row per result (``layers=False``: method, value in full
    precision, kind, seconds, stopped by, lower and upper it proves) or per layer row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if layers:
        w.writerow(["node", "type", "output shape", "factor", "power", "certified", "L"])
        w.writerows([r.origin, r.type, "x".join(map(str, r.shape)), _full(r.factor), _full(r.power),
                     _full(r.certified), _full(r.L)] for r in report.layers)
    else:
        w.writerow(["method", "value", "kind", "seconds", "stopped_by", "lower", "upper"])
        w.writerows([r.method, _full(r.value), r.kind.value, r.seconds,
                     "time" if stopped_by_time(r) else r.details.get("stopped_by", ""), _full(r.lower),
                     _full(r.upper)] for r in report.results)
    return buf.getvalue()


def to_html(report: Report) -> str:
    """HTML for notebooks: the layer and result tables, then the bracket (and the hint)."""
    def tab(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
        cell = lambda tag, c: f"<{tag}>{html.escape(c)}</{tag}>"  # noqa: E731
        body = "".join("<tr>" + "".join(cell("td", c) for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{''.join(cell('th', c) for c in head)}</tr></thead><tbody>{body}</tbody></table>"

    parts = [f"<p><b>{html.escape(report.model)}</b>: input {tuple(report.input_shape)}, region "
             f"{html.escape(report.region_text)}</p>"]
    if report.layers:
        parts.append(tab(LAYER_HEAD, layer_cells(report)))
    parts.append(tab(RESULT_HEAD, result_cells(report)))
    parts.append(f"<p><b>{html.escape(bracket_line(report))}</b></p>")
    hint = hint_line(report)
    if hint:
        parts.append(f"<p><i>{html.escape(hint)}</i></p>")
    return "<div>" + "".join(parts) + "</div>"


def _full(v: Any) -> Any:
    """A float in full precision for CSV (``repr`` round-trips), ``inf``/``nan`` as words, None as empty."""
    if v is None:
        return ""
    return repr(float(v)) if math.isfinite(v) else str(v)
