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
        return torch.softmax(self.fc(x), dim=1)


@pytest.mark.parametrize("model,shape,op,where", [
    (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), (4,), "LayerNorm", "module '1'"),
    (Mul2(), (3,), "mul", "fx node 'mul'"),
    (Attention(), (3, 4), "matmul", "fx node 'matmul'"),
    (Branchy(), (3,), "Branchy", "forward"),
    (TwoInputs(), (3,), "2 inputs", "TwoInputs"),
    (SoftmaxHead(), (3,), "softmax", "fx node 'softmax'"),
    (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1)), (4,), "Softmax", "module '1'"),
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
