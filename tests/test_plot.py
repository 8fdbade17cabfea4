"""Report.plot and the CLI's --plot / --method all / --domain."""

import re
import sys

import pytest
import torch
from torch import nn

import lipbound
from lipbound.cli import main
from lipbound.errors import LipboundError
from oracles import jacobian_norms, norm2

pytest.importorskip("matplotlib")


def small_report():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    rep = lipbound.estimate(net, (3,), methods=["autolip", "autolip-power", "lower", "exact"], progress=False,
                            method_options={"lower": {"time_budget": 5, "steps": 30}})
    return net, rep


def test_report_plot_draws_every_result_and_the_layer_norms(tmp_path):
    """Each result's marker sits at its value, the bracket's edges at the report's lower and upper,
    and the layer bars at the layers' norms (numpy SVDs of the weights)."""
    net, rep = small_report()
    fig = rep.plot(tmp_path / "b.png")
    data = (tmp_path / "b.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    bracket, layers = fig.axes[:2]
    assert [t.get_text() for t in bracket.get_yticklabels()] == [r.method for r in rep.results]
    assert bracket.get_xscale() == "log" and layers.get_yscale() == "log"
    markers = [line for line in bracket.get_lines() if line.get_marker() not in (None, "None", "")]
    assert [(m.get_xdata()[0], m.get_ydata()[0]) for m in markers] == [(r.value, i) for i, r in enumerate(rep.results)]
    edges = [line.get_xdata()[0] for line in bracket.get_lines() if line.get_linestyle() == "--"]
    assert edges == [rep.lower, rep.upper]
    norms = [norm2(net[i].weight.detach().double().numpy()) for i in (0, 2)]
    heights = [p.get_height() for p in layers.patches]
    assert heights == pytest.approx(norms + norms, rel=1e-6)  # power-method bars, then certified bars


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(LipboundError, match="lipbound\\[plot\\]"):
        small_report()[1].plot()


def test_cli_plot_all_and_domain(tmp_path, capsys):
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n"
                                   "def net():\n    torch.manual_seed(0)\n"
                                   "    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))\n")
    out_png = tmp_path / "out.png"
    code = main(["estimate", f"{tmp_path / 'm.py'}:net", "-s", "2", "-m", "all", "--domain", "0,1",
                 "--time-budget", "3", "--plot", str(out_png), "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "lower" in out and "exact" in out and out_png.stat().st_size > 10_000
    # the bracket on the box [0, 1]^2 holds the Jacobian norms at interior points of the box
    bracket = re.search(r"^bracket: lower (\S+) \(\S+\) +upper (\S+) \(\S+\)", out, re.M)
    assert bracket, out
    lower, upper = float(bracket[1]), float(bracket[2])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    xs = torch.rand(200, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.98 + 0.01
    sampled = jacobian_norms(net, xs).max().item()
    assert sampled * (1 - 1e-5) <= upper and lower <= upper * (1 + 1e-5)
    code = main(["estimate", f"{tmp_path / 'm.py'}:net", "-s", "2", "--domain", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "--domain" in err


def test_layer_rows_of_several_results_are_merged_and_drawn():
    """Hand-built rows: the first result's rows, with norms another result computed filled in;
    the bars show the power values, then the certified values; the table prints each name whole."""
    from lipbound.report import LayerRow, Report, Result

    long = "features.0.block.conv + features.0.block.bn"
    first = [LayerRow("a", long, "Conv2d+BatchNorm2d", (4, 8, 8), certified=3.0), LayerRow("r", "relu", "ReLU", (4, 8, 8))]
    other = [LayerRow("a", long, "Conv2d+BatchNorm2d", (4, 8, 8), power=2.0, certified=9.0)]
    rep = Report("m", (2, 8, 8), [Result("autolip", 3.0, "certified_upper", layers=first),
                                  Result("autolip-power", 2.0, "estimate", layers=other)])
    assert [(r.power, r.certified) for r in rep.layers] == [(2.0, 3.0), (None, None)]
    assert [p.get_height() for p in rep.plot().axes[1].patches] == [2.0, 3.0]
    assert all(name in rep.table() for name in long.split(" + "))  # wrapped at " + ", never cut
