"""AutoLip (DESIGN §4) against oracles computed without it: the rules applied again by the test to
exact layer norms (numpy SVDs of each layer's materialised matrix), numpy norms of the original
weights, hand-derived constants of tiny nets, and witnessed Jacobian norms and pair quotients
(tests/oracles.py) that every certified value must exceed."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import UnsupportedOperation
from lipbound.graph.ir import Node
from lipbound.methods.seqlip import sequential_chains
from oracles import dense_linear, norm2, reference_autolip, slope_range, witnessed_lower
from zoo import zoo

MODELS = zoo()


@pytest.mark.parametrize("name", list(MODELS))
def test_autolip_is_the_rules_on_exact_norms_and_above_witnessed_norms(name):
    """Every zoo layer is small enough for an exact SVD, so certified AutoLip is the reference
    propagation plus its rounding margin (``CERTIFIED_RTOL = 1e-9`` per layer, not less than
    1e-10 over the whole net); the power-method estimate converges to the reference from below."""
    model, shape = MODELS[name]
    report = lipbound.estimate(model, shape, methods=("autolip", "autolip-power"), progress=False)
    cert, power = report.result("autolip"), report.result("autolip-power")
    assert cert.kind == "certified_upper" and power.kind == "estimate"
    assert report.upper == cert.value
    ref = reference_autolip(model, shape)
    assert ref * (1 + 1e-10) <= cert.value <= ref * (1 + 1e-6)
    assert ref * 0.999 <= power.value <= ref * (1 + 1e-9)
    assert cert.value >= witnessed_lower(model, shape) * (1 - 1e-9)


ACTS = [nn.ReLU, nn.Tanh, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.ELU]
LIPS = [max(abs(s) for s in slope_range(a())) for a in ACTS]  # from the definitions, an inner approximation


def random_net(rng: torch.Generator, kind: str) -> tuple[nn.Module, tuple[int, ...], float]:
    """A random MLP or CNN, its input shape and its AutoLip value from numpy norms: the product of
    the layers' exact norms, of the activations' ``max |slope|`` and, for the CNN, of 2 for the
    max pooling (kernel 3, stride 2: each input lies in at most ``ceil(3/2)^2 = 4`` windows)."""
    def pick() -> tuple[nn.Module, float]:
        k = int(torch.randint(len(ACTS), (1,), generator=rng))
        return ACTS[k](), LIPS[k]

    if kind == "mlp":
        widths = [int(w) for w in torch.randint(2, 9, (4,), generator=rng)]
        layers, value = [], 1.0
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(a, b))
            value *= norm2(layers[-1].weight.detach().double().numpy())
            if i < 2:
                act, lip = pick()
                layers.append(act)
                value *= lip
        return nn.Sequential(*layers), (widths[0],), value
    c = int(torch.randint(1, 4, (1,), generator=rng))
    (act1, lip1), (act2, lip2) = pick(), pick()
    conv1, conv2 = nn.Conv2d(c, 3, 3, padding=1), nn.Conv2d(3, 2, 2, stride=1)
    norms = norm2(dense_linear(conv1.double(), (c, 6, 6))) * norm2(dense_linear(conv2.double(), (3, 3, 3)))
    value = norms * lip1 * 2 * lip2
    return nn.Sequential(conv1, act1, nn.MaxPool2d(3, stride=2, padding=1), conv2, act2, nn.Flatten()), (c, 6, 6), value


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_certified_autolip_on_many_random_nets(kind):
    """Certified AutoLip is the numpy value up to the rounding margins: at least 1e-10 above (the
    certified norms' margin), at most the activations' outward rounding (1e-3 per slope) above;
    and above the witnessed Jacobian norms and pair quotients."""
    rng = torch.Generator().manual_seed(42)
    for i in range(30):
        torch.manual_seed(i)
        model, shape, value = random_net(rng, kind)
        got = lipbound.autolip(model, shape).value
        assert value * (1 + 1e-10) <= got <= value * (1 + 1e-3) ** 2 * (1 + 1e-6), i
        assert got >= witnessed_lower(model, shape, n=6, seed=i) * (1 - 1e-9), i


def test_linear_net_fuses_into_one_exact_norm():
    """Two linear layers fuse into one node: AutoLip is the norm of the product (not the product of
    the norms), with the certified rounding margin on top."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)).double()
    exact = norm2((model[1].weight @ model[0].weight).detach().numpy())
    assert exact * (1 + 1e-10) <= lipbound.autolip(model, (6,)).value <= exact * (1 + 1e-8)


def test_paper_example_rules():
    """Hand-derived values. Residual sum: ``1 + ||W||``; concatenation: ``sqrt(||A||^2 + ||B||^2)``;
    max pooling k3 s2: each input in at most 2 x 2 windows, factor 2; LeakyReLU(-2): slopes
    ``{-2, 1}``, factor 2 (``x -> -2x`` for ``x < 0``)."""
    torch.manual_seed(1)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + torch.relu(self.fc(x))

    res = Res()
    norm = norm2(res.fc.weight.detach().double().numpy())
    assert lipbound.autolip(res, (4,)).value == pytest.approx(1 + norm, rel=1e-7)

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return torch.cat([self.a(x), torch.tanh(self.b(x))], dim=1)

    cat = Cat()
    na, nb = (norm2(m.weight.detach().double().numpy()) for m in (cat.a, cat.b))
    assert lipbound.autolip(cat, (3,)).value == pytest.approx(math.hypot(na, nb), rel=1e-7)

    pool = nn.Sequential(nn.MaxPool2d(3, stride=2), nn.Flatten())
    assert lipbound.autolip(pool, (1, 7, 7)).value == pytest.approx(2.0, rel=1e-8)
    assert lipbound.autolip(nn.LeakyReLU(-2.0), (3,)).value == pytest.approx(2.0, rel=1e-8)


def test_maxpool_factor_is_needed_and_sufficient():
    """With overlapping windows (k3 s1) one input lies in 3 windows: a pair of inputs shows
    ``sqrt(3)``, and AutoLip's factor is exactly that."""
    pool = nn.Sequential(nn.MaxPool1d(3, stride=1), nn.Flatten())
    x = torch.zeros(1, 1, 7)
    y = x.clone()
    y[0, 0, 3] = 1.0  # one input inside three windows
    q = ((pool(x) - pool(y)).norm() / (x - y).norm()).item()
    assert q == pytest.approx(math.sqrt(3))
    assert lipbound.autolip(pool, (1, 7)).value == pytest.approx(math.sqrt(3), rel=1e-8)


def test_seed_makes_runs_repeatable():
    model, shape = MODELS["resnet"]
    runs = [lipbound.estimate(model, shape, methods=("autolip-power",), seed=3, progress=False) for _ in range(2)]
    assert runs[0].results[0].value == runs[1].results[0].value
    assert runs[0].upper == math.inf  # an estimate is not a certified upper bound
    ref = reference_autolip(model, shape)
    assert ref * 0.999 <= runs[0].results[0].value <= ref * (1 + 1e-9)


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(ValueError, match="autolip-power"):
        lipbound.estimate(nn.Linear(2, 2), (2,), methods=("autolipp",), progress=False)


def test_report_to_dict_is_json_ready():
    import json
    report = lipbound.estimate(*MODELS["cnn_bn_pool"], methods=("autolip", "autolip-power"), progress=False)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["upper"] == pytest.approx(report.upper)
    assert d["lower"] is None and d["ratio"] is None
    assert [r["kind"] for r in d["results"]] == ["certified_upper", "estimate"]
    assert d["results"][0]["details"]["nodes"][0]["certified"] > 0


# ---- per-layer rows and the walker ------------------------------------------------------------

def test_layer_rows_hold_the_exact_layer_norms_and_the_running_bound():
    """One row per node of the fused graph; an affine row's power value is below and its certified
    value above the exact norm (numpy SVD of the weights, or of their product for the two fused
    Linear layers), and the running bound is the product of the factors (hand-derived: ReLU and
    Tanh have factor 1), ending at the result's value. The table prints every name in full."""
    torch.manual_seed(3)
    features = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Linear(6, 6), nn.Tanh())
    model = nn.Sequential(OrderedDict(features=features, classifier_head_linear=nn.Linear(6, 3))).double()
    w = [m.weight.detach().numpy() for m in (features[0], features[2], features[3], model.classifier_head_linear)]
    exact = [norm2(w[0]), norm2(w[2] @ w[1]), norm2(w[3])]
    report = lipbound.estimate(model, (5,), methods=("autolip", "autolip-power"), progress=False)
    for method in ("autolip", "autolip-power"):
        rows = report.result(method).layers
        affine = [r for r in rows if r.type.endswith("Linear")]
        assert [r.origin for r in affine] == ["features.0", "features.2 + features.3", "classifier_head_linear"]
        assert [r.type for r in rows] == ["Linear", "ReLU", "Linear+Linear", "Tanh", "Linear"]
        for r, norm in zip(affine, exact):
            known = r.certified if method == "autolip" else r.power
            assert known is not None and (r.power is None or r.power <= norm * (1 + 1e-9))
            assert r.certified is None or r.certified >= norm * (1 + 1e-10)
        running = 1.0
        for r in rows:
            running *= r.factor
            assert r.L == pytest.approx(running, rel=1e-12)
        assert rows[-1].L == report.result(method).value
    merged = report.layers  # autolip's rows with autolip-power's values filled in
    assert all(r.power <= r.certified * (1 + 1e-9) for r in merged if r.certified is not None)
    table = report.table()
    for r in merged:
        assert r.origin in table and r.type in table


def test_every_affine_node_of_a_branching_graph_has_a_row():
    """Residual additions and concatenations: every affine node of the fused graph has a row with
    both norms, the rows follow the graph, and the last running bound is the value (autolip and
    seqlip; an interior node of a SeqLip chain has no bound of its own)."""
    for name in ("resnet", "inception"):
        model, shape = MODELS[name]
        g = lipbound.as_graph(model, shape).fused()
        report = lipbound.estimate(model, shape, methods=("autolip", "seqlip"), progress=False,
                                   method_options={"seqlip": {"pair_budget": 0.1}})
        for result in report.results:
            rows = result.layers
            assert [r.name for r in rows] == [n.name for n in g if n.kind != "input"]
            affine = [r for r in rows if r.name in {n.name for n in g.affine_nodes()}]
            assert len(affine) == len(g.affine_nodes())
            assert all(r.power <= r.certified * (1 + 1e-9) for r in affine)
            assert rows[-1].L == result.value
        d = report.to_dict()["results"][0]["details"]["nodes"]
        assert [row["name"] for row in d] == [r.name for r in report.result("autolip").layers]


class Mystery(Node):
    kind = "mystery"


def test_a_node_kind_without_a_rule_is_refused_by_name():
    g = lipbound.as_graph(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (3,))
    last = list(g.nodes.values())[-1]
    g.nodes["odd"] = Mystery("odd", [last.name], last.shape, "blocks.7.odd_op")
    g.output = "odd"
    with pytest.raises(UnsupportedOperation, match=r"blocks\.7\.odd_op.*AutoLip has no rule for mystery"):
        lipbound.autolip(g)
    with pytest.raises(UnsupportedOperation, match=r"blocks\.7\.odd_op.*chain finder has no rule for mystery"):
        sequential_chains(g)


# ---- time budget ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn_bn_pool", "resnet"])
def test_time_budget_cut_keeps_a_certified_bound(name):
    """With no time left every layer gets its cheap certified bound: still above the exact-norm
    reference (numpy SVDs, tests/oracles.py), never below the unbudgeted value, and the details
    name every cut layer. A generous budget changes nothing; a negative one is refused."""
    model, shape = MODELS[name]
    full = lipbound.autolip(model, shape)
    graph = lipbound.api.as_graph(model, shape)
    cut = lipbound.methods.autolip.autolip(graph, time_budget=0.0)
    assert cut.value >= full.value * (1 - 1e-12)
    assert cut.value >= reference_autolip(model, shape)
    rows = [r for r in cut.layers if r.certified is not None]
    assert len(cut.details["budget_cut"]) == len(rows) > 0 and "time budget" in cut.details["note"]
    assert lipbound.methods.autolip.autolip(graph, time_budget=60.0).value == full.value
    power = lipbound.methods.autolip.autolip(graph, certified=False, time_budget=0.0)
    assert power.kind == "estimate" and math.isfinite(power.value) and power.details["budget_cut"]
    with pytest.raises(lipbound.errors.InvalidInput, match="time_budget"):
        lipbound.methods.autolip.autolip(graph, time_budget=-1.0)


def test_an_svd_that_would_overrun_the_budget_gives_way_to_the_structural_bound():
    """A convolution small enough for an exact SVD (288 x 1152, predicted ~0.1 s) with a 20 ms
    budget: the plan gives it the kernel's DFT bound instead, flagged as planned, still above the
    exact norm (numpy SVD of the layer's materialised matrix); without a budget it is the SVD. The
    plan reads sizes only: two runs give the same number."""
    from lipbound.methods.autolip import PLANNED, layer_norms
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 8, 3, padding=1).double()
    graph = lipbound.api.as_graph(conv, (2, 12, 12))
    exact = norm2(dense_linear(lambda x: conv(x) - conv(torch.zeros_like(x)), (2, 12, 12)))
    (full,) = layer_norms(graph, which="certified").values()
    cuts = [next(iter(layer_norms(graph, which="certified", time_budget=0.02).values())) for _ in range(2)]
    assert full.exact and not full.how.startswith(PLANNED)
    assert all(c.how.startswith(PLANNED) and not c.exact for c in cuts) and cuts[0].upper == cuts[1].upper
    assert exact * (1 + 1e-10) <= full.upper <= exact * (1 + 1e-8)
    assert cuts[0].upper >= exact * (1 + 1e-10)
