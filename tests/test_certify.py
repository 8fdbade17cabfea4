"""Certified radii (DESIGN §1): ``radius = margin / (sqrt(2) U)`` recomputed by hand from the
logits of the original module; the computed ``U`` checked against the true constant (brute force
over activation patterns, tests/oracles.py); and no perturbation inside the radius changes the
class: random directions and a projected-gradient attack in the ball, which does flip classes
once the ball is twice as large (so it can fail)."""

import json
import math

import pytest
import torch
from torch import nn

import lipbound
from lipbound.cli import main
from lipbound.errors import InvalidInput
from oracles import pair_max


def classifier(seed: int = 0) -> nn.Module:
    """Hidden width 5 <= input dim 6 with generic biases: every activation pattern is realisable,
    so the Lipschitz constant is ``max_D ||W2 D W1||`` over ``D in {0, 1}^5`` (DESIGN §5)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


def true_constant(net: nn.Module) -> float:
    return pair_max(net[2].weight.detach().numpy(), net[0].weight.detach().numpy(), 0.0, 1.0)[0]


def by_hand(logits: torch.Tensor, upper: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted class, margin (top logit minus the runner-up) and ``margin / (sqrt(2) U)``."""
    top = logits.sort(dim=1, descending=True).values
    margin = top[:, 0] - top[:, 1]
    return logits.argmax(1), margin, margin / (math.sqrt(2) * upper)


def worst_gap(net: nn.Module, x: torch.Tensor, radius: torch.Tensor, steps: int = 80) -> torch.Tensor:
    """Per input, the largest ``max_{j != y} f_j - f_y`` found in the closed L2 ball of ``radius``
    around it (``y`` the class at ``x``) by projected normalised-gradient ascent; positive means the
    class flips inside the ball."""
    y = net(x).argmax(1)
    mask = nn.functional.one_hot(y, net(x).shape[1]).bool()
    r = radius[:, None]
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(x.shape, generator=g, dtype=x.dtype)
    delta = delta / delta.norm(dim=1, keepdim=True) * r * 0.5
    best = torch.full((len(x),), -math.inf, dtype=x.dtype)
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = net(x + delta)
        gap = logits.masked_fill(mask, -math.inf).max(1).values - logits[mask]
        best = torch.maximum(best, gap.detach())
        (grad,) = torch.autograd.grad(gap.sum(), delta)
        with torch.no_grad():
            delta = delta + 0.1 * r * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
            delta = delta * (r / delta.norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
    with torch.no_grad():
        logits = net(x + delta)
        return torch.maximum(best, logits.masked_fill(mask, -math.inf).max(1).values - logits[mask])


def test_radius_formula_with_a_given_bound():
    net = classifier()
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cert = lipbound.certify(net, x, upper=2.0)
    predicted, margin, radius = by_hand(net(x).detach(), 2.0)
    assert torch.equal(cert.predicted, predicted)
    assert torch.allclose(cert.margin, margin, rtol=1e-12, atol=0)
    assert torch.allclose(cert.radius, radius, rtol=1e-12, atol=0)
    assert cert.upper == 2.0 and cert.source == "given" and "radius" in cert.table()


def test_computed_bound_is_the_true_constant_and_no_perturbation_inside_the_radius_flips_the_class():
    net = classifier(1)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    cert = lipbound.certify(net, x)  # U computed by the default certified methods: exact for this net
    L = true_constant(net)
    assert L * (1 - 1e-12) <= cert.upper <= L * (1 + 1e-6)
    _, margin, radius = by_hand(net(x).detach(), cert.upper)
    assert torch.allclose(cert.radius, radius, rtol=1e-12, atol=0) and torch.all(margin > 0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True) * cert.radius.unsqueeze(1) * 0.999
        assert torch.equal(net(x + d).argmax(1), cert.predicted)
    assert worst_gap(net, x, cert.radius * 0.999).max() < 0
    # the attack has teeth: in balls twice as large it flips classes (9 of the 40 when written)
    assert (worst_gap(net, x, cert.radius * 2) > 0).sum() >= 3


def test_bad_inputs():
    net = classifier()
    with pytest.raises(InvalidInput):
        lipbound.certify(net, torch.randn(6, dtype=torch.float64))
    with pytest.raises(InvalidInput):
        lipbound.certify(nn.Linear(3, 1), torch.randn(4, 3))
    with pytest.raises(InvalidInput):
        lipbound.certify(net, torch.randn(4, 6, dtype=torch.float64), upper=-1.0)
    with pytest.raises(InvalidInput, match="NaN"):
        lipbound.certify(net, torch.full((2, 6), math.nan, dtype=torch.float64), upper=1.0)


def _cli_model(tmp_path, n: int) -> torch.Tensor:
    """``m.py:net`` (a 3-6-4 ReLU MLP) and ``x.pt`` (``n`` inputs, returned) in ``tmp_path``, for the CLI."""
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n"
                                   "def net():\n    torch.manual_seed(0)\n"
                                   "    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))\n")
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    return x


def test_cli_certify(tmp_path, capsys):
    x = _cli_model(tmp_path, 5)
    code = main(["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "x.pt"), "--upper", "1.5",
                 "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    torch.manual_seed(0)
    same = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))
    predicted, margin, radius = by_hand(same(x).detach().double(), 1.5)
    d = json.loads(out)
    assert d["upper"] == 1.5 and d["predicted"] == predicted.tolist()
    assert d["radius"] == pytest.approx(radius.tolist(), rel=1e-5, abs=1e-6)  # float32 logits
    code = main(["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "missing.pt")])
    _, err = capsys.readouterr()
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1


# ---- local certificates ------------------------------------------------------------------------
def test_local_radius_at_least_global_and_no_attack_inside():
    net = classifier(2)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cert = lipbound.certify(net, x, local=True, bisection_steps=4)
    assert torch.all(cert.radius >= cert.global_radius) and torch.any(cert.radius > cert.global_radius * 1.01)
    _, _, by_hand_radius = by_hand(net(x).detach(), cert.upper)
    assert torch.allclose(cert.global_radius, by_hand_radius, rtol=1e-12, atol=0)
    assert worst_gap(net, x, cert.radius * 0.999, steps=150).max() < 0
    assert (worst_gap(net, x, cert.radius * 3) > 0).sum() >= 1  # the attack can flip classes


def boundary_distance_2d(net: nn.Module, x: torch.Tensor, reach: float, rays: int = 720, steps: int = 600) -> float:
    """An upper bound of the L2 distance from ``x`` (2-D) to the nearest point of another class:
    along ``rays`` directions, the first of ``steps`` points up to ``reach`` whose class differs
    (every such point is at least as far as the boundary)."""
    y = net(x[None]).argmax(1)
    angle = torch.linspace(0, 2 * math.pi, rays + 1, dtype=torch.float64)[:-1]
    t = torch.linspace(reach / steps, reach, steps, dtype=torch.float64)
    d = torch.stack([angle.cos(), angle.sin()], 1)
    pts = x + t[:, None, None] * d[None]  # (steps, rays, 2)
    with torch.no_grad():
        other = net(pts.reshape(-1, 2)).argmax(1).reshape(steps, rays) != y
    return float(t[:, None].expand(steps, rays)[other].min()) if other.any() else math.inf


def test_local_radius_below_the_true_distance_to_the_boundary_in_2d():
    g = torch.Generator().manual_seed(5)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    cert = lipbound.certify(net, x, local=True, bisection_steps=8)
    for i in range(len(x)):
        dist = boundary_distance_2d(net, x[i], reach=4 * float(cert.radius[i]) + 1e-9)
        assert cert.global_radius[i] <= cert.radius[i] <= dist, (i, cert.radius[i], dist)
    assert torch.any(cert.radius > cert.global_radius * 1.01)


def test_radius_check_constants_above_sampled_pair_slopes():
    """``radius=R``: inside the global radius always certified; each ``L_yj`` >= the slopes of
    ``f_y - f_j`` sampled in ``B(x, R)``; no attack flips a certified ball."""
    net = classifier(3)
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    glob = lipbound.certify(net, x)
    R = float(glob.radius.median()) * 1.5
    cert = lipbound.certify(net, x, radius=R)
    assert cert.checked_radius == R and cert.certified.shape == (6,) and cert.pair_constants.shape == (6, 4)
    assert torch.all(cert.certified[glob.radius > R])
    assert torch.any(cert.certified[glob.radius <= R])  # local constants certify more than the global one
    ok = cert.certified
    assert worst_gap(net, x[ok], torch.full((int(ok.sum()),), R, dtype=torch.float64), steps=150).max() < 0
    gen = torch.Generator().manual_seed(7)
    for i in range(len(x)):
        d = torch.randn(200, 6, generator=gen, dtype=torch.float64)
        a = x[i] + d / d.norm(dim=1, keepdim=True) * R * torch.rand(200, 1, generator=gen, dtype=torch.float64)
        b = a[torch.randperm(200, generator=gen)]
        with torch.no_grad():
            fa, fb = net(a), net(b)
        y = int(cert.predicted[i])
        for j in range(4):
            if j == y:
                assert cert.pair_constants[i, j] == math.inf
                continue
            ga, gb = fa[:, y] - fa[:, j], fb[:, y] - fb[:, j]
            slope = ((ga - gb).abs() / (a - b).norm(dim=1).clamp_min(1e-12)).max()
            assert cert.pair_constants[i, j] >= slope * (1 - 1e-9)
    with pytest.raises(InvalidInput, match="radius"):
        lipbound.certify(net, x, radius=-1.0)


def test_cli_certify_local_and_radius(tmp_path, capsys):
    _cli_model(tmp_path, 3)
    base = ["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "x.pt"), "-q"]
    assert main(base + ["--local", "--time-budget", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["radius"]) == 3 and all(r >= g for r, g in zip(d["radius"], d["global_radius"]))
    assert main(base + ["--local"]) == 0
    assert "global" in capsys.readouterr().out
    assert main(base + ["--radius", "0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["checked_radius"] == 0.05 and len(d["certified"]) == 3 and len(d["pair_constants"][0]) == 4
    for bad in (["--radius", "-1"], ["--time-budget", "0", "--local"]):
        assert main(base + bad) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lipbound: error:")
