"""The training regulariser: right gradient, reduces the certified bound, survives weight changes."""

import copy
import logging
import math
import warnings

import pytest
import torch
from torch import nn

import lipbound
from lipbound import InvalidInput
from lipbound.regularizer import certify_training, regularizer
from lipbound.regularizer_watch import RegularizerWarning
from oracles import dense_linear, norm2

# the regulariser's once-per-regulariser warnings are checked in their own test
pytestmark = pytest.mark.filterwarnings("ignore::lipbound.regularizer_watch.RegularizerWarning")


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


# ---- its limits: warnings, periodic certification, BatchNorm --------------------------------------

def bn_mlp(seed: int = 0) -> nn.Module:
    """Linear -> BN -> ReLU -> BN -> Linear: one BN folds into the layer before, one into the layer after."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for bn in (net[1], net[3]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    return net


def regulariser_warnings(reg, calls: int) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(calls):
            reg()
    return [str(w.message) for w in caught if issubclass(w.category, RegularizerWarning)]


def test_each_limit_is_warned_about_once_per_regulariser():
    net = bn_mlp().train()
    got = regulariser_warnings(regularizer(net, (4,)), 5)
    assert len(got) == 2
    assert sum("estimate" in m for m in got) == 1
    assert sum("BatchNorm in training mode ('1', '3')" in m for m in got) == 1
    assert len(regulariser_warnings(regularizer(net, (4,)), 3)) == 2  # once per regulariser, not per process
    # in eval mode no BatchNorm warning; with certifications no estimate warning; freeze: none
    assert [("estimate" in m) for m in regulariser_warnings(regularizer(net.eval(), (4,)), 3)] == [True]
    assert regulariser_warnings(regularizer(net.train(), (4,), certified_every=100, batchnorm="freeze"), 3) == []


def sampled_jacobian_norm(net: nn.Module, points: torch.Tensor) -> float:
    """max over the points of ||Df(x)||_2, Jacobians by autograd on the module itself."""
    jac = torch.func.vmap(torch.func.jacrev(net))(points)
    return torch.linalg.matrix_norm(jac, ord=2).max().item()


def test_certified_every_logs_brackets_above_the_sampled_jacobian_norm_of_the_live_model(caplog):
    """Training that *maximises* the estimate makes the weights grow, so a certification of stale
    weights falls below the live model's sampled Jacobian norms."""
    net = mlp(4)
    reg = regularizer(net, (4,), certified_every=3, certified_lower_steps=20)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    points = torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first = sampled_jacobian_norm(net, points)
    with caplog.at_level(logging.INFO, logger="lipbound.regularizer"):
        for step in range(1, 10):
            opt.zero_grad()
            value = reg()
            if step % 3 == 0:  # certified in this call, with the weights the model has now
                record = reg.history[-1]
                assert record.call == step
                assert record.upper >= sampled_jacobian_norm(net, points)
                assert 0 < record.lower <= record.upper
                assert record.estimate <= record.upper * (1 + 1e-9)  # power norms <= certified norms
            (-value).backward()
            opt.step()
    assert [r.call for r in reg.history] == [3, 6, 9]
    assert sampled_jacobian_norm(net, points) > 2 * first  # the weights did grow
    messages = [r.getMessage() for r in caplog.records if r.name == "lipbound.regularizer"]
    assert len(messages) == 3 and all(f"upper {r.upper:.4g}" in m for r, m in zip(reg.history, messages))


def test_freeze_keeps_batchnorm_statistics_while_training_in_train_mode():
    net = bn_mlp().train()
    before = [t.clone() for name, t in net.named_buffers() if "running" in name]
    reg = regularizer(net, (4,), batchnorm="freeze")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        opt.zero_grad()
        (net(x).square().mean() + 0.1 * reg()).backward()
        opt.step()
    assert net.training
    after = [t for name, t in net.named_buffers() if "running" in name]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    reg.release_batchnorm()  # BatchNorm follows the model's mode again: the statistics move
    net(x)
    assert not torch.equal(before[0], net[1].running_mean)


def test_fold_equals_certified_autolip_of_the_model_folded_by_hand():
    """BN1 folds into the Linear before it (rows scaled), BN3 into the Linear after it (columns
    scaled, its shift into the bias); the folded model computes the same function in eval mode."""
    net = bn_mlp(1).train()
    (l1, bn1, _, bn3, l4) = net
    s1 = bn1.weight / torch.sqrt(bn1.running_var + bn1.eps)
    s3 = bn3.weight / torch.sqrt(bn3.running_var + bn3.eps)
    folded = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        folded[0].weight.copy_(s1[:, None] * l1.weight)
        folded[0].bias.copy_(s1 * (l1.bias - bn1.running_mean) + bn1.bias)
        folded[2].weight.copy_(l4.weight * s3[None, :])
        folded[2].bias.copy_(l4.weight @ (bn3.bias - s3 * bn3.running_mean) + l4.bias)
    x = torch.randn(16, 4, dtype=torch.float64)
    assert torch.allclose(folded(x), copy.deepcopy(net).eval()(x), atol=1e-12)
    reg = regularizer(net, (4,), batchnorm="fold")
    reg.refresh(500)
    expected = lipbound.autolip(folded, (4,), certified=True).value
    assert reg.bound(update=False).item() == pytest.approx(expected, rel=1e-8)


def test_bad_options_are_refused():
    with pytest.raises(InvalidInput, match="batchnorm"):
        regularizer(mlp(), (4,), batchnorm="live")
    with pytest.raises(InvalidInput, match="certified_every"):
        regularizer(mlp(), (4,), certified_every=0)
