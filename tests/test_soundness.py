"""The standing soundness suite (benchmarks/soundness.py) on a fixed-seed subset, and checks that
its own oracles and checks are right and can fail.

* ``test_fuzz_net``: nets ``0 .. SUBSET - 1`` of seed 0, every method, every check; fails on any
  violation or crash, with the reproducer line (``benchmarks/soundness.py --seed 0 --only INDEX``).
* The oracles on hand-built nets whose constants are derived by hand (comments), and the checks
  against mutated methods (a method scaled below the truth, a witness claiming more than it shows,
  ``exact`` replaced by AutoLip): each must be caught.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import soundness  # noqa: E402
import soundness_nets as sn  # noqa: E402

import lipbound  # noqa: E402
from lipbound.graph import activations  # noqa: E402
from lipbound.report import Result  # noqa: E402

SEED = 0
SUBSET = 240  # nets of the fixed-seed subset (about 0.2 s each on one idle core)
ONNX_EVERY = 6  # every 6th of them also goes through an ONNX round trip


@pytest.mark.parametrize("index", range(SUBSET))
def test_fuzz_net(index: int) -> None:
    case = sn.make_case(SEED, index)
    rep = soundness.check_case(case, onnx=index % ONNX_EVERY == 0)
    bad = [line for line in rep.lines() if not line.startswith("MISMATCH")]
    assert not bad, "\n".join(bad)


def test_catalogue_covers_every_registered_activation() -> None:
    """A newly registered activation must join the fuzz (soundness_nets.ACTIVATIONS)."""
    registered = set(activations.MODULES) | set(activations.FUNCTIONS) | set(activations.METHODS)
    missing = [sn.key_name(k) for k in registered if k not in sn.ACTIVATIONS]
    assert not missing, f"activations the fuzz never draws: {missing}"


def test_families_and_layers_are_drawn() -> None:
    """The generator draws every family and every layer kind the audit asks for (in the first 400
    nets of the seed: building them takes a second; the subset above runs a random part of them)."""
    cases = [sn.make_case(SEED, i) for i in range(400)]
    assert {c.family for c in cases} == set(sn.FAMILIES)
    text = " ".join(c.describe() for c in cases)
    for layer in ("Conv1d", "Conv2d", "ConvTranspose", "BatchNorm", "AvgPool", "MaxPool", "bicubic", "bilinear",
                  "'linear'", "area", "nearest", "circular", "reflect", "replicate", "x + (", "cat(", "box[", "R^n",
                  "slab", "output offset", "float32", "on the face"):
        assert layer in text, f"no net of the subset has {layer}"


# ---- the oracles on hand-built nets ------------------------------------------------------------
def _case(module: nn.Module, n: int, domain=None, acts=None, mlp=None) -> sn.Case:
    module = module.double().eval()
    names = {id(m): name for name, m in module.named_modules()}
    return sn.Case(0, 0, "hand", module, (n,), domain, {names[id(m)]: info for m, info in (acts or [])}, mlp)


def _linear(w, b) -> nn.Linear:
    w = torch.tensor(w, dtype=torch.float64)
    layer = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(w), layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return layer


def _relu_mlp(w1, b1, w2, b2, n: int, domain=None) -> sn.Case:
    relu = nn.ReLU()
    net = nn.Sequential(_linear(w1, b1), relu, _linear(w2, b2))
    info = sn.ActInfo((0.0,), sn.Pieces((0.0,), (0.0, 1.0), (0.0, 0.0)))
    mlp = [(net[0].weight.detach(), net[0].bias.detach(), info.pieces), (net[2].weight.detach(), net[2].bias.detach(), None)]
    return _case(net, n, domain, [(relu, info)], mlp)


def test_box_oracle_respects_the_face() -> None:
    # f(x) = relu(x + 10) - 0.5 relu(x) = 10 + 0.5 x on [0, 1]: L on the box is 0.5 (slope 1 for x < 0)
    case = _relu_mlp([[1.0], [1.0]], [10.0, 0.0], [[1.0, -0.5]], [0.0], 1, domain=(0.0, 1.0))
    oracle = sn.lower_oracle(case)
    sn.grid_oracle(case, 401, oracle)
    assert 0.5 * (1 - 1e-9) <= oracle.value <= 0.5 * (1 + 1e-12)
    assert sn.lower_oracle(case, on_domain=False).value == pytest.approx(1.0)
    # a Jacobian witness on the face x = 0 takes the slope of x < 0: rejected as a kink
    problems = sn.recheck_witness(case, {"form": "jacobian", "x": torch.zeros(1), "v": torch.ones(1)}, 1.0, True)
    assert [k for k, _ in problems] == ["witness-kink"]
    inside = {"form": "jacobian", "x": torch.full((1,), 0.5), "v": torch.ones(1)}
    assert sn.recheck_witness(case, inside, 0.5, True) == []
    assert [k for k, _ in sn.recheck_witness(case, inside, 0.6, True)] == ["witness-value"]
    outside = {"form": "pair", "x": torch.full((1,), -1.0), "y": torch.full((1,), 0.5)}
    assert "witness-outside" in [k for k, _ in sn.recheck_witness(case, outside, 0.1, True)]


def test_coinciding_kinks_are_rejected() -> None:
    # f(x) = 10 x - 10 relu(x) + 10 relu(-x) = 0 for every x; at x = 0 autograd says 10
    class Zero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.relu = _linear([[1.0], [-1.0]], [0.0, 0.0]), nn.ReLU()
            self.outer = _linear([[-10.0, 10.0]], [0.0])

        def forward(self, x):
            return 10 * x + self.outer(self.relu(self.inner(x)))

    net = Zero()
    case = _case(net, 1, acts=[(net.relu, sn.ActInfo((0.0,)))])
    assert sn.lower_oracle(case).value <= 1e-9
    problems = sn.recheck_witness(case, {"form": "jacobian", "x": torch.zeros(1), "v": torch.ones(1)}, 10.0, False)
    assert "witness-kink" in [k for k, _ in problems]


def test_thin_slab_is_found_by_the_region_enumeration() -> None:
    # f(x) = relu(x - 1) + 9 (relu(x) - relu(x - 1e-6)): slopes 0, 9, 0, 1 on the four regions
    # x < 0, (0, 1e-6), (1e-6, 1), x > 1: L = 9, on a slab that sampling never hits
    case = _relu_mlp([[1.0], [1.0], [1.0]], [-1.0, 0.0, -1e-6], [[1.0, 9.0, -9.0]], [0.0], 1)
    regions = sn.region_bound(case)
    assert regions.regions == 4 and regions.upper == pytest.approx(9.0, rel=1e-12)
    oracle = sn.lower_oracle(case, extra_points=regions.centres)
    assert oracle.value == pytest.approx(9.0, rel=1e-9) and oracle.how == "region-centre"
    assert sn.lower_oracle(case).value == pytest.approx(1.0, rel=1e-9)


def test_region_bound_matches_a_hand_count() -> None:
    # f(x1, x2) = relu(x1) + 2 relu(x2): four regions with Jacobians [a, 2b], a, b in {0, 1}: max sqrt(5)
    case = _relu_mlp([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [[1.0, 2.0]], [0.0], 2)
    regions = sn.region_bound(case)
    assert regions.regions == 4 and regions.upper == pytest.approx(math.sqrt(5.0), rel=1e-12)
    # on the box [-2, -1]^2 only the region (0, 0) exists: f is constant there
    boxed = _relu_mlp([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [[1.0, 2.0]], [0.0], 2, domain=(-2.0, -1.0))
    assert sn.region_bound(boxed).upper == 0.0


def test_pair_margin_check() -> None:
    # f(x) = 1e-3 x + 1e9: the float64 quotient carries the rounding of 1e9 (ulp 1.2e-7)
    case = _case(nn.Sequential(_linear([[1e-3]], [1e9])), 1)
    x, y = torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.03], dtype=torch.float64)
    probe = sn.Probe(case)
    low, value, margin = probe.pair_quotients(x[None], y[None])
    assert float(low) <= 1e-3 <= float(value) + float(margin) / 0.03
    problems = sn.recheck_witness(case, {"form": "pair", "x": x, "y": y}, float(value), False)
    assert [k for k, _ in problems] == ["pair-no-margin"]
    assert sn.recheck_witness(case, {"form": "pair", "x": x, "y": y}, float(low), False) == []


def test_pair_check_on_an_offset_net_uses_the_offset_free_twin() -> None:
    # the same f = 1e-3 x + 1e9, its offset marked as the fuzz marks it: the exact quotient 1e-3
    # (what lipbound's exact re-check may claim) breaks the half-ulp rule, yet is correct; the
    # float64 quotient (1.0014e-3 here, above the exact one) must still be caught
    layer = _linear([[1e-3]], [1e9])
    layer.fuzz_output_offset = 1e9
    case = _case(nn.Sequential(layer), 1)
    x, y = torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.03], dtype=torch.float64)
    pair = {"form": "pair", "x": x, "y": y}
    _, value, _ = sn.Probe(case).pair_quotients(x[None], y[None])
    assert float(value) > 1e-3 * (1 + 1e-6)
    assert [k for k, _ in sn.recheck_witness(case, pair, float(value), False)] == ["pair-no-margin"]
    assert sn.recheck_witness(case, pair, 1e-3, False) == []
    del layer.fuzz_output_offset  # without the mark, the half-ulp rule refuses the exact claim
    assert [k for k, _ in sn.recheck_witness(case, pair, 1e-3, False)] == ["pair-no-margin"]


def test_discontinuous_softplus_is_seen() -> None:
    # torch's Softplus(beta=1, threshold=1) jumps from log(1 + e) = 1.3133 down to 1 at t = 1:
    # no finite Lipschitz constant; the pairs across the kink show a huge quotient
    act = nn.Softplus(1.0, 1.0)
    case = _case(nn.Sequential(_linear([[1.0]], [0.0]), act), 1, acts=[(act, sn.ActInfo((1.0,)))])
    assert sn.lower_oracle(case).value > 1e6


def test_max_pool_ties() -> None:
    # max(x1, x2) has a tie on x1 = x2 (a kink); after nearest upsampling, copies of one value tie
    # in every window, which is no kink
    pool = nn.MaxPool1d(2)
    case = sn.Case(0, 0, "hand", nn.Sequential(pool).double(), (1, 2), None, {})
    probe = sn.Probe(case)
    assert probe.off_kinks(torch.tensor([[[1.0, 2.0]], [[1.0, 1.0]]], dtype=torch.float64)).tolist() == [True, False]
    copies = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.MaxPool1d(2)).double()
    probe = sn.Probe(sn.Case(0, 0, "hand", copies, (1, 3), None, {}))
    assert probe.off_kinks(torch.tensor([[[1.0, 3.0, 2.0]]], dtype=torch.float64)).tolist() == [True]


def test_exact_kink_check_settles_points_closer_than_the_float_margin() -> None:
    # z = x - 1000 + relu stays on its piece at x = 1000 + 2^-30, although |z| is far below the
    # float margin KINK_RTOL * (1 + max |z|); exactly at x = 1000 it is on the kink
    case = _relu_mlp([[1.0], [1.0]], [-1000.0, 0.0], [[1.0, 1.0]], [0.0], 1)
    near = torch.tensor([[1000.0 + 2.0 ** -30]], dtype=torch.float64)
    assert not sn.Probe(case).off_kinks(near).item()
    assert sn.exactly_off_kinks(case, near)
    assert not sn.exactly_off_kinks(case, torch.tensor([[1000.0]], dtype=torch.float64))
    assert not sn.exactly_off_kinks(_case(nn.Sequential(nn.ReLU()), 1), near)  # no exact model: not settled


# ---- the checks catch mutated methods ---------------------------------------------------------
def _mutated(monkeypatch, name: str, mutate) -> None:
    """Replace method ``name`` in the registry by ``mutate(its result, graph)`` (same signature)."""
    original = lipbound.methods.METHODS[name]

    @functools.wraps(original.fn)
    def method(graph, **kwargs):
        return mutate(original.fn(graph, **kwargs), graph)

    monkeypatch.setitem(lipbound.methods.METHODS, name, dataclasses.replace(original, fn=method))


def test_a_certified_bound_below_the_truth_is_caught(monkeypatch) -> None:
    _mutated(monkeypatch, "seqlip", lambda r, g: Result(r.method, 0.7 * r.value, r.kind, details=r.details))
    case = _relu_mlp([[1.0, 2.0], [-1.0, 0.5]], [0.1, -0.2], [[1.0, -1.0]], [0.0], 2)
    rep = soundness.check_case(case, methods=["seqlip"])
    assert [f.kind for f in rep.findings] == ["upper<oracle[jacobian]"]


def test_a_witness_claiming_too_much_is_caught(monkeypatch) -> None:
    _mutated(monkeypatch, "lower", lambda r, g: Result(r.method, 1.01 * r.value, r.kind, witness=r.witness,
                                                          details=r.details))
    case = _relu_mlp([[1.0, 2.0], [-1.0, 0.5]], [0.1, -0.2], [[1.0, -1.0]], [0.0], 2)
    rep = soundness.check_case(case, methods=["autolip", "lower"])
    kinds = {f.kind for f in rep.findings}
    assert "witness-value" in kinds


def test_exact_replaced_by_autolip_is_caught(monkeypatch) -> None:
    # relu(x1) + 2 relu(x2) - relu(x1 + x2): AutoLip's product of norms exceeds the max over regions
    _mutated(monkeypatch, "exact", lambda r, g: Result("exact", lipbound.autolip(g).value, "exact", witness=r.witness,
                                                       details=r.details))
    case = _relu_mlp([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, 0.0], [[1.0, 2.0, -1.0]], [0.0], 2)
    rep = soundness.check_case(case, methods=["exact"])
    kinds = {f.kind for f in rep.findings}
    assert "exact>regions" in kinds and "witness-value" in kinds


def test_a_crash_is_reported(monkeypatch) -> None:
    def boom(graph, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(lipbound.methods.METHODS, "autolip", boom)
    rep = soundness.check_case(sn.make_case(SEED, 1), methods=["autolip"])
    assert [line.split(":")[0] for line in rep.lines()] == [f"CRASH seed={SEED} net=1 method=autolip"]
