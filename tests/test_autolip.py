"""AutoLip: the certified value is above every witnessed Jacobian norm and every pair quotient."""

import math

import pytest
import torch
from torch import nn

import lipbound
from conftest import jacobian_norm
from zoo import zoo

MODELS = zoo()


def witnessed(model: nn.Module, shape, n: int = 12, seed: int = 0) -> float:
    """Largest Jacobian norm and pair quotient found at random inputs (each a lower bound of L)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    best = 0.0
    for i in range(n):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * (1 + i % 3)
        best = max(best, jacobian_norm(model, x))
        y = x + 1e-3 * torch.randn(*shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            q = (model(x[None]) - model(y[None])).norm() / (x - y).norm()
        best = max(best, q.item())
    return best


@pytest.mark.parametrize("name", list(MODELS))
def test_certified_autolip_is_above_witnessed_norms(name):
    model, shape = MODELS[name]
    report = lipbound.estimate(model, shape, methods=("autolip", "autolip-power"), progress=False)
    cert, power = report.result("autolip"), report.result("autolip-power")
    assert cert.kind == "certified_upper" and power.kind == "estimate"
    assert report.upper == cert.value
    assert power.value <= cert.value * (1 + 1e-9)
    assert cert.value >= witnessed(model, shape) * (1 - 1e-9)
    for row in cert.details["nodes"]:
        if row.get("power") is not None:
            assert row["power"] <= row["certified"] * (1 + 1e-6)


def random_net(rng: torch.Generator, kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    acts = [nn.ReLU, nn.Tanh, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.ELU]
    pick = lambda: acts[int(torch.randint(len(acts), (1,), generator=rng))]()  # noqa: E731
    if kind == "mlp":
        widths = [int(w) for w in torch.randint(2, 9, (4,), generator=rng)]
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), pick()]
        return nn.Sequential(*layers[:-1]), (widths[0],)
    c = int(torch.randint(1, 4, (1,), generator=rng))
    return nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), pick(), nn.MaxPool2d(3, stride=2, padding=1),
                         nn.Conv2d(3, 2, 2, stride=1), pick(), nn.Flatten()), (c, 6, 6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_certified_autolip_on_many_random_nets(kind):
    rng = torch.Generator().manual_seed(42)
    for i in range(30):
        torch.manual_seed(i)
        model, shape = random_net(rng, kind)
        value = lipbound.autolip(model, shape).value
        assert value >= witnessed(model, shape, n=6, seed=i) * (1 - 1e-9)


def test_linear_net_autolip_is_at_least_the_exact_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)).double()
    exact = torch.linalg.matrix_norm(model[1].weight @ model[0].weight, ord=2).item()
    # the two linear layers fuse into one node whose norm is exact
    assert lipbound.autolip(model, (6,)).value == pytest.approx(exact, rel=1e-8)


def test_paper_example_rules():
    """Residual sum: L <= 1 + L(f); concatenation: sqrt(sum L_i^2); max pooling k3 s2: factor 2."""
    torch.manual_seed(1)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + torch.relu(self.fc(x))

    res = Res()
    norm = torch.linalg.matrix_norm(res.fc.weight.double(), ord=2).item()
    assert lipbound.autolip(res, (4,)).value == pytest.approx(1 + norm, rel=1e-7)

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return torch.cat([self.a(x), torch.tanh(self.b(x))], dim=1)

    cat = Cat()
    na, nb = (torch.linalg.matrix_norm(m.weight.double(), ord=2).item() for m in (cat.a, cat.b))
    assert lipbound.autolip(cat, (3,)).value == pytest.approx(math.hypot(na, nb), rel=1e-7)

    pool = nn.Sequential(nn.MaxPool2d(3, stride=2), nn.Flatten())
    assert lipbound.autolip(pool, (1, 7, 7)).value == pytest.approx(2.0, rel=1e-8)


def test_maxpool_factor_is_needed_and_sufficient():
    """With overlapping windows the max-pool constant exceeds 1: a pair of inputs shows it."""
    pool = nn.Sequential(nn.MaxPool1d(3, stride=1), nn.Flatten())
    x = torch.zeros(1, 1, 7)
    y = x.clone()
    y[0, 0, 3] = 1.0  # one input inside three windows
    q = ((pool(x) - pool(y)).norm() / (x - y).norm()).item()
    assert q == pytest.approx(math.sqrt(3))
    assert lipbound.autolip(pool, (1, 7)).value >= q


def test_seed_makes_runs_repeatable():
    model, shape = MODELS["resnet"]
    runs = [lipbound.estimate(model, shape, methods=("autolip-power",), seed=3, progress=False) for _ in range(2)]
    assert runs[0].results[0].value == runs[1].results[0].value
    assert runs[0].upper == math.inf  # an estimate is not a certified upper bound


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
