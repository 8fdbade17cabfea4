"""The torch.fx frontend: the graph computes the model, bad input is refused by name."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbound
from lipbound import InvalidInput, UnsupportedOperation
from lipbound.graph import Activation, Add, Affine, Concat, MaxPool

from zoo import zoo

MODELS = zoo()


@pytest.mark.parametrize("name", list(MODELS))
def test_graph_reproduces_the_model(name):
    model, shape = MODELS[name]
    graph = lipbound.as_graph(model, shape)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(x)
        assert torch.allclose(graph(x), expected, atol=1e-5)
        assert torch.allclose(graph.fused()(x), expected, atol=1e-5)
    assert graph.input_shape == shape
    assert graph.output_shape == tuple(expected.shape[1:])


def test_node_kinds_of_a_residual_net():
    graph = lipbound.as_graph(*MODELS["resnet"])
    kinds = {type(n) for n in graph}
    assert {Affine, Activation, Add} <= kinds
    graph = lipbound.as_graph(*MODELS["inception"])
    assert any(isinstance(n, Concat) for n in graph) and any(isinstance(n, MaxPool) for n in graph)


def test_batchnorm_is_folded_into_its_convolution():
    model, shape = MODELS["cnn_bn_pool"]
    fused = lipbound.as_graph(model, shape).fused()
    first = fused.affine_nodes()[0]
    assert first.op.label == "Conv2d"  # not Conv2d+BatchNorm: the diagonal went into the kernel


def test_the_users_model_is_not_modified():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    before = copy.deepcopy(model.state_dict())
    lipbound.estimate(model, (3,), progress=False)
    assert model.training
    assert model[2].inplace
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class Mul2(nn.Module):
    def forward(self, x):
        return x * x


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)

    def forward(self, x):
        return F.softmax(self.q(x) @ self.k(x).transpose(1, 2), dim=-1)


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


class SoftmaxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return torch.softmax(self.fc(x), dim=1) * 2


@pytest.mark.parametrize("model,shape,op,where", [
    (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), (4,), "LayerNorm", "module '1'"),
    (Mul2(), (3,), "mul", "fx node 'mul'"),
    (Attention(), (3, 4), "matmul", "fx node 'matmul'"),
    (Branchy(), (3,), "Branchy", "forward"),
    (TwoInputs(), (3,), "2 inputs", "TwoInputs"),
    (SoftmaxHead(), (3,), "softmax", "fx node 'softmax'"),  # not the last operation
    (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)), (4,), "Softmax", "module '1'"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.LocalResponseNorm(2)), (1, 5, 5), "LocalResponseNorm", "module '1'"),
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)), (4,), "BatchNorm1d", "module '1'"),
])
def test_unsupported_operations_are_named(model, shape, op, where):
    with pytest.raises(UnsupportedOperation) as info:
        lipbound.as_graph(model, shape)
    assert op in str(info.value) and where in str(info.value)


def test_nan_weights_are_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    with pytest.raises(InvalidInput, match="'2.weight'.*NaN"):
        lipbound.as_graph(model, (3,))
    model[2].weight.data.fill_(float("inf"))
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        lipbound.estimate(model, (3,), progress=False)


@pytest.mark.parametrize("shape", [(4,), (3, 1), (0, 3), (-1,), ()])
def test_wrong_input_shapes_are_refused(shape):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(InvalidInput, match="input shape"):
        lipbound.as_graph(model, shape)


def test_batch_mixing_reshape_is_refused():
    class Mix(nn.Module):
        def forward(self, x):
            return x.reshape(-1)

    with pytest.raises(UnsupportedOperation, match="batch axis"):
        lipbound.as_graph(Mix(), (3,))


def test_a_graph_is_accepted_without_input_shape():
    model, shape = MODELS["mlp"]
    graph = lipbound.as_graph(model, shape)
    assert lipbound.estimate(graph, progress=False).upper > 0
    with pytest.raises(InvalidInput, match="input shape"):
        lipbound.estimate(graph, (7,), progress=False)


class Resizer(nn.Module):
    """Conv, bicubic resize (functional), average pool, reflect pad, indexing: every structured map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bicubic", align_corners=True)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x):
        x = F.interpolate(self.conv(x), size=(7, 5), mode="bicubic", antialias=True)
        x = self.pool(torch.tanh(self.up(x)))
        return F.pad(x, (1, 1, 2, 0), mode="reflect")[:, [0, 2, 2], 1:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resizing_padding_and_indexing_are_structured_operators(dtype):
    from lipbound.linalg.structured import Gather, Kronecker
    torch.manual_seed(0)
    model = Resizer().to(dtype)
    graph = lipbound.as_graph(model, (2, 6, 6))
    kinds = [type(n.op).__name__ for n in graph.affine_nodes()]
    assert kinds == ["Conv", "Kronecker", "Kronecker", "Kronecker", "Kronecker", "Gather"]
    assert all(n.op.dtype == dtype for n in graph.affine_nodes())
    x = torch.randn(4, 2, 6, 6, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12  # float32: the recorded biases are rounded
    with torch.no_grad():
        assert torch.allclose(graph(x), model(x), atol=tol)
        assert torch.allclose(graph.to(dtype=torch.float64)(x.double()), model.double()(x.double()), atol=tol)
    ops = [n.op for n in graph.affine_nodes()]
    assert isinstance(ops[1], Kronecker) and isinstance(ops[-1], Gather)


def test_a_bicubic_net_is_bounded_above_its_jacobian_norms():
    """``nn.Upsample(mode='bicubic')`` (refused before) gets a certified bound that holds: it is
    above the Jacobian norm of the torch model at random points."""
    from conftest import jacobian_norm
    torch.manual_seed(1)
    model = Resizer().double()
    r = lipbound.estimate(model, (2, 6, 6), methods=["autolip"], progress=False).results[0]
    assert r.kind == "certified_upper"
    for seed in range(5):
        x = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert jacobian_norm(model, x) <= r.value


def test_load_factory_keeps_the_factorys_input_shape(tmp_path, capsys):
    """A factory returning ``(module, shape)`` gives the shape to ``load_factory`` and to the CLI's
    ``--weights`` route (no ``--input-shape``); the weights are loaded: the graph computes the
    saved model (a fresh module with other weights, evaluated by torch, is the reference)."""
    from lipbound.cli import main
    from lipbound.frontends.loading import load_factory

    src = tmp_path / "net.py"
    src.write_text("import torch\nfrom torch import nn\n\ndef net():\n    torch.manual_seed(5)\n"
                   "    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), (3,)\n")
    torch.manual_seed(9)
    trained = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    weights = tmp_path / "w.pt"
    torch.save(trained.state_dict(), weights)
    graph = load_factory(f"{src}:net", weights)
    assert graph.input_shape == (3,)
    x = torch.randn(6, 3)
    with torch.no_grad():
        assert torch.allclose(graph(x), trained(x), atol=1e-6)
    assert load_factory(f"{src}:net", None, (3,)).input_shape == (3,)
    assert main(["estimate", f"{src}:net", "-w", str(weights), "--method", "autolip", "--json", "-q"]) == 0
    assert '"input_shape"' in capsys.readouterr().out
