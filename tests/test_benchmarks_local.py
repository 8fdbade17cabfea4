"""Smoke test of the local-bounds benchmark's harness (benchmarks/local.py, local_peer.py) on one
tiny generated net, with the issue-10 API (load_vnnlib, Ball, estimate(domain=...)) mocked.

The oracles are the test's own: interval arithmetic and a brute force over the vertices of the
per-neuron slope box for the true local bound; dense Jacobians for sampled norms."""

from __future__ import annotations

import itertools
import math
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import local  # noqa: E402
import local_peer  # noqa: E402

import lipbound  # noqa: E402
from lipbound.methods.region import Box  # noqa: E402


def tiny():
    """A 3-6-2 ReLU net (float64) and its two weight matrices."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double().eval()
    return net, net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach()


def vertex_bound(w1, b1, w2, low, high) -> float:
    """max over D in {lo_i, hi_i}^6 of ||W2 D W1||, slopes from interval bounds of W1 x + b1 on the box:
    a certified local bound (the set of admissible D is the convex hull of these vertices)."""
    mid, rad = (low + high) / 2, (high - low) / 2
    l, u = w1 @ mid + b1 - w1.abs() @ rad, w1 @ mid + b1 + w1.abs() @ rad
    lo, hi = (l > 0).double(), (u > 0).double()
    best = 0.0
    for d in itertools.product(*zip(lo.tolist(), hi.tolist())):
        best = max(best, torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=torch.float64)) @ w1, 2).item())
    return best


BOX = Box(torch.tensor([-0.2, 0.1, 0.0], dtype=torch.float64), torch.tensor([0.3, 0.4, 0.2], dtype=torch.float64))


def test_soundness_check_passes_a_true_bound_and_flags_a_low_one():
    net, w1, b1, w2 = tiny()
    graph = lipbound.as_graph(net, (3,))
    true = vertex_bound(w1, b1, w2, BOX.low, BOX.high)
    assert local.soundness(graph, BOX, true, [], samples=24)["flags"] == []
    gen = torch.Generator().manual_seed(0)
    pts = local.sample_box(BOX.low, BOX.high, 24, gen)
    worst = max(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(net, x), 2).item() for x in pts)
    flags = local.soundness(graph, BOX, 0.9 * worst, [], samples=24)["flags"]
    assert any("Jacobian norm" in f for f in flags)


def test_witness_outside_the_region_is_flagged():
    net, *_ = tiny()
    graph = lipbound.as_graph(net, (3,))
    inside = types.SimpleNamespace(form="pair", x=BOX.center, y=BOX.low)
    outside = types.SimpleNamespace(form="jacobian", x=BOX.high + 1e-6)
    flags = local.soundness(graph, BOX, 1e9, [("lower", inside)], samples=4)["flags"]
    assert flags == []
    flags = local.soundness(graph, BOX, 1e9, [("local-bab", outside)], samples=4)["flags"]
    assert flags == ["local-bab's witness lies outside the region"]


def test_ball_samples_lie_in_the_ball():
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    ball = types.SimpleNamespace(center=c, radius=0.3, norm=2)
    pts = local.sample_ball(c, 0.3, 50, torch.Generator().manual_seed(1))
    assert bool(((pts - c).norm(dim=1) <= 0.3).all()) and all(local.inside(ball, p) for p in pts)
    assert not local.inside(ball, c + torch.tensor([0.31, 0.0, 0.0], dtype=torch.float64))


@pytest.fixture
def mocked_api(monkeypatch):
    """lipbound with the issue-10 API mocked: load gives the tiny net, load_vnnlib the box, and
    estimate a report whose upper is ``scale`` times the test's vertex bound."""
    net, w1, b1, w2 = tiny()
    graph = lipbound.as_graph(net, (3,))
    true = vertex_bound(w1, b1, w2, BOX.low, BOX.high)
    state = {"scale": 1.0, "seen": None}

    def estimate(model, methods=None, domain=None, **kw):
        state["seen"] = (methods, domain)
        up = lipbound.Result("best", state["scale"] * true, "certified_upper")
        low = lipbound.Result("lower", 0.5 * true, "witnessed_lower",
                              witness=types.SimpleNamespace(form="jacobian", x=domain.center))
        return lipbound.Report("tiny", (3,), [up, low])

    monkeypatch.setattr(lipbound, "load", lambda path: graph)
    monkeypatch.setattr(lipbound, "load_vnnlib", lambda path: types.SimpleNamespace(region=BOX, label=0),
                        raising=False)
    monkeypatch.setattr(lipbound, "Ball", object, raising=False)
    monkeypatch.setattr(lipbound, "estimate", estimate)
    return state


def test_measure_runs_a_row_through_the_public_api(mocked_api):
    spec = {"family": "mnistfc_256x2", "net": "tiny", "props": ["p"], "budget": 5.0}
    row = local.measure(spec, ["best", "no-such-method", "lower"], samples=16)
    assert mocked_api["seen"][0] == ["best", "lower"]  # a method lipbound does not know is dropped
    assert mocked_api["seen"][1] is BOX
    assert row["ratio"] == pytest.approx(2.0) and row["flags"] == []
    mocked_api["scale"] = 0.5  # a bound below the sampled Jacobian norms must be caught
    assert local.measure(spec, ["best", "lower"], samples=16)["flags"]


def test_missing_api_is_one_line_and_a_crash_keeps_the_table(monkeypatch):
    monkeypatch.delattr(lipbound, "load_vnnlib", raising=False)
    why = local.missing_api()
    assert why and "\n" not in why and "load_vnnlib" in why
    spec = {"family": "resnet2b", "net": "tiny", "props": ["p"], "budget": 5.0}
    crash = local.run_task({"row": spec, "methods": ["best"], "samples": 2})
    assert crash["crash"].startswith("RuntimeError: lipbound has no load_vnnlib")
    ok = {"lower": 1.0, "upper": 3.0, "ratio": 3.0, "seconds": 1.0, "sampled_jac": 1.0, "sampled_pair": 1.0, "flags": []}
    text = "\n".join(local.render([(spec, crash), (spec, ok)], {}, ["# t"]))
    assert "CRASH: RuntimeError" in text and "| resnet2b | 1/2 |" in text and "FAIL" in text


@pytest.mark.parametrize("ratios, flags, verdict", [([1.5, 1.8, 4.0], [], "PASS"), ([3.0, 3.0, 1.0], [], "FAIL"),
                                                   ([1.5, 1.8, 6.0], [], "FAIL"), ([1.0, 1.0, 1.0], ["x"], "FAIL")])
def test_family_verdict(ratios, flags, verdict):
    spec = {"family": "mnistfc_256x2", "net": "n", "props": ["p"], "budget": 60.0}
    rows = [(spec, {"ratio": r, "seconds": 1.0, "flags": flags}) for r in ratios]
    line = local.family_summary("mnistfc_256x2", rows, {"n": {"ratio": 8.8}})
    assert line.endswith(f"| {verdict} |") and f"| {statistics_median(ratios):.4g} |" in line


def statistics_median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def test_peer_gets_the_networks_weights_and_a_centre_inside_both_boxes(realnets):
    graph = lipbound.load(realnets / "mnistfc_256x2.onnx").to(dtype=torch.float64)
    weights, biases = local_peer.mlp_layers(graph)
    x = local_peer.mnist_centre(3)
    for eps in (0.03, 0.05):
        low, high = local_peer.read_box(realnets / "vnnlib" / f"mnistfc_prop_3_{eps}.vnnlib")
        assert bool(((x >= low - 1e-9) & (x <= high + 1e-9)).all())
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = w @ h + b
        h = h.clamp_min(0) if i < len(weights) - 1 else h
    assert torch.allclose(h, graph.forward(x.reshape(1, *graph.input_shape)).reshape(-1), rtol=1e-9, atol=1e-9)
    assert not math.isnan(h.sum().item())


@pytest.mark.parametrize("ratios, verdict", [([0.3] * 100, "PASS"), ([0.3] * 94 + [1.2] * 6, "FAIL"),
                                             ([0.6] * 100, "FAIL"), ([0.3] * 50, "FAIL")])
def test_peer_verdict_counts_every_ball(ratios, verdict):
    line = local_peer.peer_verdict(ratios, len(ratios), None)
    assert line.endswith(f"{verdict}.")
