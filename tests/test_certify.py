"""Certified radii: margin / (sqrt(2) U), sound against random perturbations, and the CLI."""

import math

import pytest
import torch
from torch import nn

import lipbound
from lipbound.cli import main
from lipbound.errors import InvalidInput


def classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4)).double()


def test_radius_formula_with_a_given_bound():
    net = classifier()
    x = torch.randn(20, 3, dtype=torch.float64)
    cert = lipbound.certify(net, x, upper=2.0)
    logits = net(x).detach()
    top = logits.topk(2, dim=1).values
    assert torch.equal(cert.predicted, logits.argmax(1))
    assert torch.allclose(cert.margin, top[:, 0] - top[:, 1])
    assert torch.allclose(cert.radius, cert.margin / (math.sqrt(2) * 2.0))
    assert cert.source == "given" and "radius" in cert.table()


def test_certified_radius_is_sound_for_random_perturbations():
    net = classifier(1)
    x = torch.randn(30, 3, dtype=torch.float64)
    cert = lipbound.certify(net, x)  # U computed: exact for this small net
    assert cert.upper == pytest.approx(lipbound.estimate(net, (3,), methods=["exact"], progress=False).upper)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True) * cert.radius.unsqueeze(1) * 0.999
        assert torch.equal(net(x + d).argmax(1), cert.predicted)


def test_bad_inputs():
    net = classifier()
    with pytest.raises(InvalidInput):
        lipbound.certify(net, torch.randn(3, dtype=torch.float64))
    with pytest.raises(InvalidInput):
        lipbound.certify(nn.Linear(3, 1), torch.randn(4, 3))
    with pytest.raises(InvalidInput):
        lipbound.certify(net, torch.randn(4, 3, dtype=torch.float64), upper=-1.0)


def test_cli_certify(tmp_path, capsys):
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n"
                                   "def net():\n    torch.manual_seed(0)\n"
                                   "    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))\n")
    torch.save(torch.randn(5, 3), tmp_path / "x.pt")
    code = main(["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "x.pt"), "--upper", "1.5",
                 "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"radius"' in out and '"upper": 1.5' in out
    code = main(["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "missing.pt")])
    _, err = capsys.readouterr()
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
