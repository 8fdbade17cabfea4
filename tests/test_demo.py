"""The bundled demo: the trained digits CNN, its shipped test split, and ``lipbound demo``.

Oracles, independent of the code under test: the accuracy and the logit margins are computed here
with plain torch; the constant's lower bound is the largest Jacobian norm sampled at the test
images and at random inputs (:mod:`oracles`), which every certified upper bound must reach.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from lipbound.cli import main
from lipbound.examples.demo_net import INPUT_SHAPE, WEIGHTS, demo_net, load_test_split
from oracles import jacobian_norms, witnessed_lower

CLAIMED_ACCURACY = 0.90  # the demo net's promise (README)
MAX_RATIO = 2.0  # the demo's promise: upper / lower <= 2 with the default method set
RADIUS = 0.1


def accuracy_oracle() -> tuple[float, torch.Tensor, torch.Tensor]:
    """Test accuracy, float64 logits and labels of the shipped net on the shipped split."""
    images, labels = load_test_split()
    with torch.no_grad():
        logits = demo_net().double()(images.double())
    return (logits.argmax(dim=1) == labels).double().mean().item(), logits, labels


def test_shipped_files_are_small_and_well_formed():
    assert WEIGHTS.stat().st_size < 1_000_000
    images, labels = load_test_split()
    assert images.dtype == torch.float32 and tuple(images.shape[1:]) == INPUT_SHAPE and len(images) >= 100
    assert images.min() >= 0 and images.max() <= 1
    assert labels.dtype == torch.int64 and labels.shape == (len(images),)
    assert sorted(set(labels.tolist())) == list(range(10))


def test_shipped_weights_reach_the_claimed_accuracy():
    assert accuracy_oracle()[0] >= CLAIMED_ACCURACY


@pytest.fixture(scope="module")
def demo_text(tmp_path_factory):
    """One run of ``python -m lipbound.cli demo`` (a shorter time budget): its process and plot path."""
    plot = tmp_path_factory.mktemp("demo") / "bracket.png"
    proc = subprocess.run([sys.executable, "-m", "lipbound.cli", "demo", "--quiet", "--time-budget", "2",
                           "--radius", str(RADIUS), "--plot", str(plot)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, plot


def bracket_of(out: str) -> dict[str, float]:
    line = re.search(r"^bracket:.*$", out, re.M).group(0)
    return {key: float(re.search(rf"\b{key} (\S+)", line).group(1)) for key in ("lower", "upper", "ratio")}


def test_demo_prints_a_bracket_ratio_at_most_2(demo_text):
    b = bracket_of(demo_text[0])
    assert 0 < b["lower"] <= b["upper"]
    assert b["ratio"] == pytest.approx(b["upper"] / b["lower"], rel=1e-3)
    assert b["ratio"] <= MAX_RATIO


def test_demo_upper_reaches_a_sampled_lower_bound(demo_text):
    sampled = max(jacobian_norms(demo_net(), load_test_split()[0][::2]).max().item(),
                  witnessed_lower(demo_net(), INPUT_SHAPE, n=32))
    assert bracket_of(demo_text[0])["upper"] >= sampled * (1 - 1e-9)


def global_certified_oracle(upper: float, r: float) -> float:
    """Share of test images classified correctly with ``margin / (sqrt(2) upper) > r`` (DESIGN §1):
    a floor of what the demo may claim (its pair constants can only certify more)."""
    _, logits, labels = accuracy_oracle()
    top2 = logits.topk(2, dim=1).values
    radius = (top2[:, 0] - top2[:, 1]) / (math.sqrt(2) * upper)
    return ((logits.argmax(dim=1) == labels) & (radius > r)).double().mean().item()


def attack_oracle(r: float, steps: int = 40) -> float:
    """Share of test images that an L2 projected-gradient attack of radius ``r`` on the margin does
    not break (correct at the image and at every iterate): a ceiling of what may be certified."""
    images, labels = load_test_split()
    net = demo_net().double()
    x0 = images.double()
    delta = torch.zeros_like(x0)
    intact = net(x0).argmax(dim=1) == labels
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = net(x0 + delta)
        true = logits.gather(1, labels[:, None])[:, 0]
        other = logits.masked_fill(torch.nn.functional.one_hot(labels, 10).bool(), -math.inf).amax(dim=1)
        intact &= (logits.argmax(dim=1) == labels).detach()
        (grad,) = torch.autograd.grad((other - true).sum(), delta)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30)[:, None, None, None]
            delta = delta + 0.25 * r * g
            delta = delta * (r / delta.flatten(1).norm(dim=1).clamp_min(r))[:, None, None, None]
    with torch.no_grad():
        intact &= net(x0 + delta).argmax(dim=1) == labels
    return intact.double().mean().item()


def test_demo_reports_the_accuracies_it_claims(demo_text):
    out = demo_text[0]
    accuracy = accuracy_oracle()[0]
    printed = float(re.search(r"accuracy (\S+)%", out).group(1)) / 100
    assert printed == pytest.approx(accuracy, abs=5e-4)  # printed to 0.1%
    certified = float(re.search(rf"certified robust accuracy at L2 radius {RADIUS:g} \(pixels in \[0, 1\]\): (\S+)%", out).group(1)) / 100
    # between the global-constant certificate and what an attack leaves standing
    assert global_certified_oracle(bracket_of(out)["upper"], RADIUS) - 5e-4 <= certified <= attack_oracle(RADIUS) + 5e-4
    assert 0 < certified <= accuracy


def test_demo_writes_the_plot_it_names(demo_text):
    pytest.importorskip("matplotlib")
    out, plot = demo_text
    assert f"plot: {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "d.png"
    # a small radius, where a misclassified image can have a certified radius above it
    assert main(["demo", "--quiet", "--json", "--time-budget", "0.5", "--radius", "0.01", "--plot", str(plot)]) == 0
    d = json.loads(capsys.readouterr().out)
    kinds = {r["method"]: r["kind"] for r in d["results"]}
    assert kinds["lower"] == "witnessed_lower" and kinds["autolip"] == "certified_upper"
    assert d["upper"] == min(r["value"] for r in d["results"] if r["kind"] in ("certified_upper", "exact"))
    assert d["accuracy"] == pytest.approx(accuracy_oracle()[0])
    assert global_certified_oracle(d["upper"], 0.01) <= d["certified_accuracy"] <= attack_oracle(0.01)
    assert d["plot"] == str(plot) and plot.is_file()


@pytest.mark.parametrize("args,message", [(["--radius", "-1"], "--radius must be a positive number"),
                                          (["--time-budget", "0"], "time_budget must be a positive number")])
def test_demo_bad_input_exits_2_with_one_line(capsys, args, message):
    assert main(["demo", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
