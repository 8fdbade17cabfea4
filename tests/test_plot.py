"""Report.plot and the CLI's --plot / --method all / --domain."""

import sys

import pytest
import torch
from torch import nn

import lipbound
from lipbound.cli import main
from lipbound.errors import LipboundError

pytest.importorskip("matplotlib")


def small_report():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    return lipbound.estimate(net, (3,), methods=["autolip", "autolip-power", "lower", "exact"], progress=False,
                             method_options={"lower": {"time_budget": 5, "steps": 30}})


def test_report_plot_writes_a_png_with_every_result(tmp_path):
    rep = small_report()
    fig = rep.plot(tmp_path / "b.png")
    data = (tmp_path / "b.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    bracket, layers = fig.axes[:2]
    assert [t.get_text() for t in bracket.get_yticklabels()] == [r.method for r in rep.results]
    assert bracket.get_xscale() == "log" and layers.get_yscale() == "log"
    assert len(layers.patches) == 2 * len([r for r in rep.layers if r.get("certified") is not None])


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(LipboundError, match="lipbound\\[plot\\]"):
        small_report().plot()


def test_cli_plot_all_and_domain(tmp_path, capsys):
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n"
                                   "def net():\n    torch.manual_seed(0)\n"
                                   "    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))\n")
    out_png = tmp_path / "out.png"
    code = main(["estimate", f"{tmp_path / 'm.py'}:net", "-s", "2", "-m", "all", "--domain", "0,1",
                 "--time-budget", "3", "--plot", str(out_png), "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "lower" in out and "exact" in out and "bracket:" in out
    assert out_png.stat().st_size > 10_000
    code = main(["estimate", f"{tmp_path / 'm.py'}:net", "-s", "2", "--domain", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "--domain" in err
