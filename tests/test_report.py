"""Reports: the bracket names its methods, the hint of a loose bracket, the JSON round trip, the
exports (Markdown, CSV, HTML), names wrapped and never cut, and reprs that never dump tensors.

Oracles: hand-built results (which method is best is read off them here, not from the code), the
model itself (a reloaded witness is re-checked from the model), the csv module, and the names the
table was given."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import InvalidInput
from lipbound.report import LayerRow, Report, Result
from lipbound.report_format import HINT_RATIO, NAME_WIDTH


def hand_report(**kw) -> Report:
    results = [Result("autolip", 1.5, "certified_upper"), Result("lipsdp", 1.02, "certified_upper"),
               Result("autolip-power", 0.5, "estimate"),
               Result("lower", 0.87, "witnessed_lower", options={"data": "given"})]
    return Report("net", (4,), results, **kw)


def test_the_bracket_names_the_method_at_each_end():
    rep = hand_report()
    ups = [(r.value, r.method) for r in rep.results if r.kind == "certified_upper"]
    lows = [(r.value, r.method) for r in rep.results if r.kind == "witnessed_lower"]
    (up, up_m), (lo, lo_m) = min(ups), max(lows)
    line = rep.bracket_line()
    assert f"lower {lo:.6g} ({lo_m})" in line and f"upper {up:.6g} ({up_m})" in line
    assert f"ratio {up / lo:.4g}" in line and line in rep.table().splitlines()
    d = json.loads(json.dumps(rep.to_dict()))
    assert (d["upper_method"], d["lower_method"]) == (up_m, lo_m)
    # an exact result gives both ends, through its own bracket
    ex = Report("net", (4,), rep.results + [Result("exact", 1.0, "exact", bracket=(0.99, 1.01))])
    assert (ex.lower, ex.lower_method, ex.upper, ex.upper_method) == (0.99, "exact", 1.01, "exact")


def test_no_lower_bound_and_no_upper_bound_are_said():
    rep = Report("net", (4,), [Result("autolip-power", 2.0, "estimate")])
    assert rep.bracket_line() == "bracket: lower none  upper inf  ratio n/a"
    assert rep.to_dict()["upper_method"] is None and rep.hint() is None


def loose(**changes) -> Report:
    """A bracket of ratio 20 (> HINT_RATIO) on all of R^n, ``lower`` without data."""
    upper = Result("autolip", 20.0, "certified_upper")
    lower = Result("lower", 1.0, "witnessed_lower", details=changes.pop("lower_details", {}))
    rep = Report("net", (4,), [upper, lower], **changes)
    assert rep.ratio > HINT_RATIO
    return rep


def test_one_hint_line_when_the_ratio_is_large_and_it_is_read_off_the_report():
    rep = loose(skipped={"exact": "too many neurons"})
    hint = rep.hint(untried=["autolip", "lipsdp", "exact"])
    assert "--domain" in hint and "data" in hint and "-m lipsdp" in hint
    assert "-m exact" not in hint and "-m autolip" not in hint  # skipped as not applying / already run
    assert "--time-budget" not in hint  # nothing stopped on time
    table = rep.table(untried=["lipsdp"])
    assert sum(line.startswith("hint:") for line in table.splitlines()) == 1
    # each tip goes away when the report shows it was followed
    local = loose(region=lipbound.Box(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)))
    assert "--domain" not in local.hint()
    with_data = loose()
    with_data.results[1].options = {"data": "given"}
    assert "data" not in (with_data.hint() or "")
    cut = loose(lower_details={"stopped_by": "time"})
    assert "larger --time-budget (lower stopped on time)" in cut.hint()
    # no hint at or below the threshold
    tight = hand_report()
    assert tight.ratio <= HINT_RATIO and tight.hint(untried=["exact"]) is None
    assert not any(line.startswith("hint:") for line in tight.table().splitlines())


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("domain", [None, (0.0, 1.0), "ball", "union"])
def test_save_and_load_give_back_every_field(mlp, tmp_path, domain):
    if domain == "ball":
        domain = lipbound.Ball(torch.full((4,), 0.25, dtype=torch.float64), 0.5, "inf")
    elif domain == "union":
        boxes = [lipbound.Box(torch.full((4,), a, dtype=torch.float64), torch.full((4,), a + 0.5, dtype=torch.float64))
                 for a in (0.0, 1.0)]
        domain = lipbound.BoxUnion(boxes)
    rep = lipbound.estimate(mlp, (4,), methods=["autolip", "seqlip", "lower"], domain=domain, progress=False,
                            time_budget=1, method_options={"lower": {"starts": 4, "steps": 10, "pairs": False}})
    rep.results.append(Result("odd", math.inf, "estimate", details={"x": torch.ones(2), "nan": math.nan}))
    rep.save(tmp_path / "r.json")
    back = Report.load(tmp_path / "r.json")
    assert back.to_dict() == json.loads(json.dumps(rep.to_dict()))
    assert back.table() == rep.table() and back.region_text == rep.region_text
    assert [len(p.results) for p in back.parts] == [len(p.results) for p in rep.parts]
    # the witness comes back as lists, and re-checked from the model it shows the lower bound
    src = back.parts[0] if back.parts else back  # a union's methods ran on its parts
    w = src.result("lower").witness
    assert isinstance(w["x"], list)
    assert lipbound.witness_value(mlp, w, (4,)) >= src.result("lower").value * (1 - 1e-12)


def test_load_refuses_what_is_not_a_report(tmp_path):
    (tmp_path / "x.json").write_text('{"model": "m"}')
    with pytest.raises(InvalidInput, match="not a saved lipbound report"):
        Report.load(tmp_path / "x.json")


LONG = " + ".join(f"features.{i}.block.conv" for i in range(5)) + " + MatMul 'Operation_2_MatMul_with_a_long_name'"


def layer_names(table: str) -> list[str]:
    """The node column of the layer table, continuation lines joined back with a space."""
    lines = table.split("\n\n")[0].splitlines()
    width = lines[0].index("type")
    names: list[str] = []
    for line in lines[1:]:
        cell, rest = line[:width].strip(), line[width:].strip()
        if rest:
            names.append(cell)
        else:
            names[-1] += " " + cell
    return names


def test_long_fused_names_are_wrapped_never_cut():
    rows = [LayerRow("a", LONG, "Conv2d+MatMul", (4, 8, 8), certified=3.0, L=3.0),
            LayerRow("r", "relu", "ReLU", (4, 8, 8), factor=1.0, L=3.0),
            LayerRow("b", "classifier", "Linear", (10,), certified=2.0, L=6.0)]
    rep = Report("m", (2, 8, 8), [Result("autolip", 6.0, "certified_upper", layers=rows)])
    table = rep.table()
    assert layer_names(table) == [r.origin for r in rows]
    assert all(len(line[:table.index("type")].rstrip()) <= NAME_WIDTH for line in table.split("\n\n")[0].splitlines())
    assert LONG in rep.to_markdown() and LONG in rep._repr_html_().replace("&#x27;", "'")
    assert [r["node"] for r in csv.DictReader(io.StringIO(rep.to_csv(layers=True)))] == [r.origin for r in rows]


def test_markdown_csv_and_html_show_every_result_and_the_bracket():
    rep = hand_report()
    rep.results.append(Result("x<script>", 3.0, "certified_upper"))
    md = rep.to_markdown()
    assert all(f"| {r.method} | {r.value:.6g} |" in md for r in rep.results) and rep.bracket_line() in md
    rows = list(csv.DictReader(io.StringIO(rep.to_csv())))
    assert [(r["method"], float(r["value"]), r["kind"]) for r in rows] == [(r.method, r.value, r.kind.value)
                                                                            for r in rep.results]
    assert [r["upper"] for r in rows if r["kind"] == "witnessed_lower"] == [""]
    page = rep._repr_html_()
    assert "x&lt;script&gt;" in page and "<script>" not in page and "lipsdp" in page and "ratio" in page


def test_repr_is_one_short_line_without_tensors():
    rep = hand_report()
    rep.results[-1].witness = {"x": torch.randn(1000)}
    text = repr(rep)
    assert "\n" not in text and len(text) < 200 and "tensor" not in text
    assert "net" in text and all(r.method in text for r in rep.results) and "lipsdp" in text


def test_graph_and_node_reprs_summarise_and_never_print_tensor_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 20), nn.ReLU(), nn.Linear(20, 3))  # a 1000-element weight
    g = lipbound.as_graph(model, (50,))
    text = repr(g)
    assert "\n" not in text and len(text) < 200 and "tensor" not in text
    assert "(50,)" in text and "(3,)" in text and "affine" in text and "activation" in text
    printed = str(g)
    assert "tensor(" not in printed and len(printed.splitlines()) == len(g) + 1
    for node in g:
        r = repr(node)
        assert "\n" not in r and len(r) < 300 and "tensor(" not in r and node.name in r
    assert "<tensor (20,) float32>" in repr(list(g)[1])  # the bias by its shape
