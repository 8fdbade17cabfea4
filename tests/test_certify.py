"""Certified radii (DESIGN §1, §7): the global radius ``margin / (sqrt(2) U)`` and the pair radius
``min_j (f_y - f_j) / L_yj`` recomputed by hand from the logits of the original module; the
computed ``U`` checked against the true constant (brute force over activation patterns,
tests/oracles.py); pair radii never below global ones; and no perturbation inside the radius
changes the class: random directions and a projected-gradient attack in the ball, which does flip
classes once the ball is a little larger (so it can fail). Accuracy counts are redone by hand."""

import json
import math
from pathlib import Path

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
    cert = lipbound.certify(net, x, upper=2.0, pair_constants=False)
    predicted, margin, radius = by_hand(net(x).detach(), 2.0)
    assert torch.equal(cert.predicted, predicted)
    assert torch.allclose(cert.margin, margin, rtol=1e-12, atol=0)
    assert torch.allclose(cert.radius, radius, rtol=1e-12, atol=0) and torch.equal(cert.radius, cert.global_radius)
    assert torch.all(cert.radius <= radius)  # rounded down
    assert cert.upper == 2.0 and cert.source == "given" and "radius" in cert.table() and cert.pair_radius is None


def pair_radius_by_hand(logits: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``min_{j != y} (f_y - f_j) / P[y, j]`` with ``y`` the predicted class."""
    y = logits.argmax(1)
    gaps = logits.gather(1, y[:, None]) - logits
    q = gaps / P[y]
    q[torch.arange(len(y)), y] = math.inf
    return q.min(1).values


def test_pair_radius_by_hand_never_below_the_global_one_and_not_violated():
    """Pair constants from SeqLip (exact per pair on this net): the pair radius is the hand formula,
    at least the global radius on every input (1.2x or more on most), and no attack flips a class
    inside it; 1.5x outside it the attack does."""
    net = classifier(1)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    cert = lipbound.certify(net, x, methods=["seqlip"])
    logits = net(x).detach()
    _, _, glob = by_hand(logits, cert.upper)
    assert torch.allclose(cert.global_radius, glob, rtol=1e-12, atol=0)
    assert torch.allclose(cert.pair_radius, pair_radius_by_hand(logits, cert.margin_constants), rtol=1e-12, atol=0)
    assert torch.all(cert.radius >= cert.global_radius) and torch.equal(cert.radius, torch.maximum(
        cert.pair_radius, cert.global_radius))
    assert (cert.radius > 1.2 * cert.global_radius).sum() >= 30
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True) * cert.radius.unsqueeze(1) * 0.999
        assert torch.equal(net(x + d).argmax(1), cert.predicted)
    assert worst_gap(net, x, cert.radius * 0.999, steps=150).max() < 0
    assert (worst_gap(net, x, cert.radius * 1.5) > 0).sum() >= 3  # the attack has teeth


def test_weaker_pair_constants_never_lower_the_radius():
    """AutoLip's pair constants on a two-hidden-layer net, against SeqLip's ``U``: some exceed
    ``sqrt(2) U``, and there the global radius is kept; the radius is never below either."""
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    U = lipbound.estimate(net, (4,), methods=["seqlip"], progress=False).upper
    P = lipbound.margin_constants(net, (4,), methods=["autolip"])
    cert = lipbound.certify(net, x, upper=U, pair_constants=P)
    assert P.max() > math.sqrt(2) * U  # the case this test is about
    _, _, glob = by_hand(net(x).detach(), U)
    pair = pair_radius_by_hand(net(x).detach(), P)
    assert torch.any(pair < glob * 0.99)
    rel = (cert.radius / torch.maximum(pair, glob) - 1).abs().max()
    assert rel < 1e-9, rel  # the margins are lowered by their rounding-error bound


def test_default_methods_give_the_true_constant_and_pair_radii_at_least_global():
    net = classifier(1)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cert = lipbound.certify(net, x)  # U by the default certified methods: exact for this net
    L = true_constant(net)
    assert L * (1 - 1e-12) <= cert.upper <= L * (1 + 1e-6) and "exact" in cert.source
    assert torch.all(cert.pair_radius >= cert.global_radius)


def test_labels_radii_and_accuracy_counted_by_hand():
    net = classifier(4)
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pred = net(x).argmax(1)
    labels = pred.clone()
    labels[::3] = (labels[::3] + 1) % 4  # every third input wrongly predicted
    radii = (0.0, 0.05, 0.2)
    cert = lipbound.certify(net, x, labels=labels, radii=radii, methods=["seqlip"])
    r = cert.radius.tolist()
    correct = [int(p) == int(t) for p, t in zip(pred, labels)]
    assert cert.clean_accuracy == pytest.approx(sum(correct) / 30)
    hand = [sum(1 for i in range(30) if correct[i] and r[i] > rad) / 30 for rad in radii]
    assert list(cert.certified_accuracy().values()) == pytest.approx(hand)
    assert hand[0] > hand[2] > 0  # the counts differ between radii
    d = json.loads(json.dumps(cert.to_dict()))
    assert d["certified_accuracy"] == pytest.approx(hand) and d["radii"] == list(radii) and d["n"] == 30
    recs = d["inputs"]
    assert [rec["correct"] for rec in recs] == correct and [rec["label"] for rec in recs] == labels.tolist()
    assert all(rec["certified_at"] == [c and rec["radius"] > rad for rad in radii] for rec, c in zip(recs, correct))
    free = lipbound.certify(net, x, radii=radii, pair_constants=cert.margin_constants, upper=cert.upper)
    assert free.to_dict()["certified_fraction"] == pytest.approx([(cert.radius > rad).double().mean().item()
                                                                  for rad in radii])
    assert "certified accuracy at radius 0.2" in cert.table()


def test_one_input_at_a_time_with_shared_constants_equals_the_batch():
    net = classifier(5)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    labels = net(x).argmax(1)
    batch = lipbound.certify(net, x, labels=labels, radii=(0.1,), methods=["seqlip"])
    graph = lipbound.as_graph(net, (6,))
    parts = [lipbound.certify(graph, x[i:i + 1], upper=batch.upper, pair_constants=batch.margin_constants,
                              labels=labels[i:i + 1], radii=(0.1,)) for i in range(5)]
    joined = lipbound.Certificate.concat(parts)
    assert torch.allclose(joined.radius, batch.radius, rtol=1e-12, atol=0) and torch.equal(joined.labels, batch.labels)
    assert joined.certified_accuracy() == batch.certified_accuracy()
    with pytest.raises(InvalidInput, match="differ"):
        lipbound.Certificate.concat([parts[0], lipbound.certify(graph, x[:1], upper=1.0, pair_constants=False)])


def test_bad_inputs():
    net = classifier()
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(InvalidInput):
        lipbound.certify(net, torch.randn(6, dtype=torch.float64))
    with pytest.raises(InvalidInput):
        lipbound.certify(nn.Linear(3, 1), torch.randn(4, 3))
    with pytest.raises(InvalidInput):
        lipbound.certify(net, x, upper=-1.0)
    with pytest.raises(InvalidInput, match="NaN"):
        lipbound.certify(net, torch.full((2, 6), math.nan, dtype=torch.float64), upper=1.0)
    bad = [({"labels": torch.zeros(3, dtype=torch.int64)}, "one class per input"),
           ({"labels": torch.tensor([0, 1, 2, 4])}, r"\[0, 4\)"), ({"labels": torch.zeros(4)}, "integers"),
           ({"radii": (0.1, -1.0)}, "radii"), ({"methods": ["lower"]}, "certified"),
           ({"pair_constants": torch.ones(3, 3)}, "pair_constants"), ({"domain": (0.0, 0.1)}, "outside the domain")]
    for kwargs, match in bad:
        with pytest.raises(InvalidInput, match=match):
            lipbound.certify(net, x, upper=1.0, **kwargs)


def ball_in_box(x: torch.Tensor, radius: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                n: int = 2000) -> torch.Tensor:
    """``(N, n, d)``: points of the balls ``B(x_i, radius_i)`` (uniform, then clipped to the box, which
    holds ``x_i``: clipping is the projection onto a convex set, it brings points closer to ``x_i``)."""
    g = torch.Generator().manual_seed(9)
    d = torch.randn(len(x), n, x.shape[1], generator=g, dtype=torch.float64)
    u = torch.rand(len(x), n, 1, generator=g, dtype=torch.float64) ** (1 / x.shape[1])
    z = x[:, None] + d / d.norm(dim=2, keepdim=True) * u * radius[:, None, None]
    return torch.maximum(torch.minimum(z, high), low)


def test_on_a_domain_radii_hold_inside_it():
    """Constants on a box holding the inputs and a class boundary: radii larger than on ``R^n`` (the
    box makes ReLUs stable), valid for the points of the box within them (sampled), while 2x larger
    balls in the box reach other classes."""
    net = classifier(8)
    g = torch.Generator().manual_seed(1)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    low, high = c - 0.25, c + 0.25
    x = low + 0.5 * torch.rand(10, 6, generator=g, dtype=torch.float64)
    glob = lipbound.certify(net, x, methods=["seqlip"])
    cert = lipbound.certify(net, x, methods=["seqlip"], domain=(low, high))
    assert cert.upper < glob.upper and torch.all(cert.radius > glob.radius * 1.1) and "on box" in cert.source
    with torch.no_grad():
        same = net(ball_in_box(x, cert.radius * 0.999, low, high)).argmax(2) == cert.predicted[:, None]
        assert torch.all(same)
        assert (net(ball_in_box(x, cert.radius * 2, low, high)).argmax(2) != cert.predicted[:, None]).any()


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
    base = ["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "x.pt"), "--json", "-q"]
    code = main(base + ["--upper", "1.5", "--no-pair-constants"])
    out, err = capsys.readouterr()
    assert code == 0, err
    torch.manual_seed(0)
    same = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))
    predicted, margin, radius = by_hand(same(x).detach().double(), 1.5)
    d = json.loads(out)
    assert d["upper"] == 1.5 and [r["predicted"] for r in d["inputs"]] == predicted.tolist()
    assert [r["radius"] for r in d["inputs"]] == pytest.approx(radius.tolist(), rel=1e-5, abs=1e-6)  # float32 logits
    assert main(base + ["--upper", "1.5"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert all(r["radius"] >= r["global_radius"] and r["pair_radius"] is not None for r in d["inputs"])
    code = main(["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "missing.pt")])
    _, err = capsys.readouterr()
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1


def test_cli_labels_radii_and_bad_labels(tmp_path, capsys):
    """``--labels`` (a tensor file, or the class of a VNN-LIB robustness property) and ``--radii``:
    the accuracies match a count over the per-input records; bad labels exit 2 with one line."""
    x = _cli_model(tmp_path, 6)
    torch.manual_seed(0)
    predicted = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))(x).argmax(1)
    labels = predicted.clone()
    labels[:2] = (labels[:2] + 1) % 4  # two of six wrong
    torch.save(labels, tmp_path / "y.pt")
    base = ["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "x.pt"), "-q", "--method", "seqlip"]
    assert main(base + ["--labels", str(tmp_path / "y.pt"), "--radii", "0,0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    recs = d["inputs"]
    assert [r["label"] for r in recs] == labels.tolist() and [r["predicted"] for r in recs] == predicted.tolist()
    assert d["clean_accuracy"] == pytest.approx(4 / 6)
    assert d["certified_accuracy"] == pytest.approx(
        [sum(r["predicted"] == r["label"] and r["radius"] > rad for r in recs) / 6 for rad in (0, 0.05)])
    box = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -5))\n(assert (<= X_{i} 5))\n" for i in range(3))
    outs = "".join(f"(declare-const Y_{j} Real)\n" for j in range(4))
    (tmp_path / "p.vnnlib").write_text(box + outs + "(assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2)) "
                                       "(and (>= Y_3 Y_2))))\n")
    assert main(base + ["--labels", str(tmp_path / "p.vnnlib"), "--domain", str(tmp_path / "p.vnnlib")]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    for bad, words in ((torch.tensor([0, 1]), "one class per input"), (torch.tensor([0, 1, 2, 3, 4, 0]), "[0, 4)"),
                       (torch.zeros(6), "integers")):
        torch.save(bad, tmp_path / "bad.pt")
        assert main(base + ["--labels", str(tmp_path / "bad.pt")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err
    assert main(base + ["--radii", "0.1,x"]) == 2
    assert "--radii" in capsys.readouterr().err


def test_cli_onnx_with_input_scale_and_method(tmp_path, capsys):
    """``certify model.onnx --inputs x.pt --input-scale 0.225`` (a usage error before): the same radii
    as the API on ``f(x / 0.225)``."""
    model = str(Path(__file__).parent / "data" / "acasxu_1_1.onnx")
    x = torch.rand(3, 1, 1, 5, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = main(["certify", model, "--inputs", str(tmp_path / "x.pt"), "--input-scale", "0.225", "--method",
                 "autolip", "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    want = lipbound.certify(lipbound.as_graph(model, input_scale=0.225), x, methods=["autolip"])
    d = json.loads(out)
    assert d["upper"] == want.upper and [r["radius"] for r in d["inputs"]] == want.radius.tolist()
    plain = lipbound.certify(lipbound.as_graph(model), x, methods=["autolip"])
    assert d["upper"] != plain.upper


# ---- local certificates ------------------------------------------------------------------------
def test_local_radius_at_least_global_and_no_attack_inside():
    net = classifier(2)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cert = lipbound.certify(net, x, local=True, bisection_steps=4, methods=["seqlip"])
    assert torch.all(cert.radius >= cert.pair_radius) and torch.all(cert.pair_radius >= cert.global_radius)
    assert torch.any(cert.radius > cert.pair_radius * 1.01) and cert.local
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
    cert = lipbound.certify(net, x, local=True, bisection_steps=8, methods=["seqlip"])
    for i in range(len(x)):
        dist = boundary_distance_2d(net, x[i], reach=4 * float(cert.radius[i]) + 1e-9)
        assert cert.global_radius[i] <= cert.radius[i] <= dist, (i, cert.radius[i], dist)
    assert torch.any(cert.radius > cert.global_radius * 1.01)


def test_radius_check_constants_above_sampled_pair_slopes():
    """``radius=R``: inside the certified radius always certified; each ``L_yj`` >= the slopes of
    ``f_y - f_j`` sampled in ``B(x, R)``; no attack flips a certified ball."""
    net = classifier(3)
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    glob = lipbound.certify(net, x, methods=["seqlip"])
    R = float(glob.global_radius.median()) * 1.5
    cert = lipbound.certify(net, x, radius=R, methods=["seqlip"])
    assert cert.checked_radius == R and cert.certified.shape == (6,) and cert.pair_constants.shape == (6, 4)
    assert torch.all(cert.certified[glob.radius > R])
    assert torch.any(cert.certified[glob.global_radius <= R])  # local constants certify more than the global one
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
    base = ["certify", f"{tmp_path / 'm.py'}:net", "--inputs", str(tmp_path / "x.pt"), "-q", "-m", "seqlip"]
    assert main(base + ["--local", "--time-budget", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["local"] and len(d["inputs"]) == 3 and all(r["radius"] >= r["pair_radius"] >= r["global_radius"]
                                                         for r in d["inputs"])
    assert main(base + ["--local"]) == 0
    assert "global" in capsys.readouterr().out
    assert main(base + ["--radius", "0.05", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["checked_radius"] == 0.05 and len(d["inputs"]) == 3 and len(d["inputs"][0]["pair_constants"]) == 4
    for bad in (["--radius", "-1"], ["--time-budget", "0", "--local"]):
        assert main(base + bad) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lipbound: error:")
