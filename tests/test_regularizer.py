"""The training regulariser: right gradient, reduces the certified bound, survives weight changes."""

import copy
import math

import pytest
import torch
from torch import nn

import lipbound
from lipbound import InvalidInput
from lipbound.regularizer import certify_training, regularizer
from oracles import dense_linear, norm2


def mlp(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def log_norm_product(model: nn.Module) -> torch.Tensor:
    """The true log AutoLip value of an MLP with 1-Lipschitz activations: sum of log ||W_i||_2."""
    return sum(torch.log(torch.linalg.matrix_norm(m.weight, ord=2)) for m in model if isinstance(m, nn.Linear))


def test_value_and_gradient_match_the_exact_norms():
    model = mlp()
    reg = regularizer(model, (4,))
    reg.refresh(500)  # converge the persistent vectors
    value = reg(update=False)
    value.backward()
    got = [m.weight.grad.clone() for m in model if isinstance(m, nn.Linear)]
    exact = log_norm_product(model)
    assert value.item() == pytest.approx(exact.item(), rel=1e-9)
    # finite differences of the exact function, entry by entry on a few entries
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    h = 1e-6
    for w, g in zip(weights, got):
        for idx in [(0, 0), (1, 2), (2, 1)]:
            with torch.no_grad():
                w[idx] += h
                up = log_norm_product(model).item()
                w[idx] -= 2 * h
                down = log_norm_product(model).item()
                w[idx] += h
            assert g[idx].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


def test_vectors_follow_changing_weights():
    model = mlp(1)
    reg = regularizer(model, (4,))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.add_(0.5 * torch.randn_like(m.weight))
    exact = log_norm_product(model).item()
    values = [reg().item() for _ in range(60)]  # one power step per call
    assert values[-1] == pytest.approx(exact, rel=1e-4)
    assert values[-1] > values[0]
    assert values[-1] <= exact + 1e-9  # power-method norms are lower estimates


def test_target_hinge():
    model = mlp(2)
    reg_high = regularizer(model, (4,), target=1e6)
    assert reg_high().item() == 0.0
    reg_low = regularizer(model, (4,), target=0.5)
    reg_low.refresh(500)
    assert reg_low(update=False).item() == pytest.approx(log_norm_product(model).item() - math.log(0.5), rel=1e-8)
    with pytest.raises(InvalidInput, match="target"):
        regularizer(model, (4,), target=-1.0)


def train(weight: float, steps: int = 300) -> nn.Module:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = torch.sin(3 * x[:, :1]) * x[:, 1:2] ** 2 + x[:, 2:3]
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    reg = regularizer(model, (4,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y) + (weight * reg() if weight else 0.0)
        loss.backward()
        opt.step()
    return model


def test_training_with_the_regulariser_reduces_the_certified_bound():
    plain = lipbound.autolip(train(0.0), (4,)).value
    regularised = lipbound.autolip(train(0.3), (4,)).value
    assert regularised * 2 <= plain


def test_conv_residual_net_value_and_gradients_reach_every_weight():
    """Value against the AutoLip rules on exact norms of the layers materialised by autograd from
    eval-mode copies: ``||BN o conv|| (1 + ||conv2||) ||fc||`` (ReLU and the non-overlapping max
    pooling have factor 1); every weight gets a gradient; the model stays in training mode."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
            self.fc = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            h = h + self.conv2(h)
            return self.fc(nn.functional.max_pool2d(h, 2).flatten(1))

    net = Net().double().train()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.3, 3)
        net.bn.weight.uniform_(-2, 2)
    frozen = copy.deepcopy(net).eval()
    conv_bn = norm2(dense_linear(nn.Sequential(frozen.conv, frozen.bn), (2, 8, 8)))
    conv2 = norm2(dense_linear(frozen.conv2, (4, 8, 8)))
    expected = conv_bn * (1 + conv2) * norm2(frozen.fc.weight.detach().numpy())
    reg = regularizer(net, (2, 8, 8))
    reg.refresh(300)
    value = reg(update=False)
    # power-method norms approach the exact ones from below (slowly here: sigma_2 / sigma_1 = 0.998)
    assert math.log(expected) - 1e-4 <= value.item() <= math.log(expected) + 1e-9
    value.backward()
    for name in ("conv.weight", "bn.weight", "conv2.weight", "fc.weight"):
        assert net.get_parameter(name).grad is not None and net.get_parameter(name).grad.abs().sum() > 0
    assert net.training  # the regulariser does not change the model's mode


def test_functional_weights_are_refused():
    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))

        def forward(self, x):
            return torch.relu(x @ self.w)

    with pytest.raises(InvalidInput, match=r"\['w'\]"):
        regularizer(F(), (3,))


def test_certify_training_reports_the_bracket():
    report = certify_training(mlp(3), (4,), methods=("autolip",))
    product = math.exp(log_norm_product(mlp(3)).item())  # ReLU and Tanh: factor 1
    assert product * (1 + 1e-10) <= report.upper <= product * (1 + 1e-6)


def test_concatenation_and_fused_layers_follow_autolips_rule():
    """Hand-derived from numpy norms: ``[A x, tanh(C B x)]`` has AutoLip value
    ``sqrt(||A||^2 + ||C B||^2)`` (concatenation: root of the sum of squares; B and C fuse into one
    factor, the norm of their product; tanh has factor 1)."""
    torch.manual_seed(5)

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x):
            return torch.cat([self.a(x), torch.tanh(self.c(self.b(x)))], dim=1)

    net = Cat().double()
    w = {k: getattr(net, k).weight.detach().numpy() for k in "abc"}
    expected = math.hypot(norm2(w["a"]), norm2(w["c"] @ w["b"]))
    reg = regularizer(net, (4,))
    reg.refresh(500)
    assert reg.bound(update=False).item() == pytest.approx(expected, rel=1e-9)
    reg(update=False).backward()
    assert all(getattr(net, k).weight.grad.abs().sum() > 0 for k in "abc")
