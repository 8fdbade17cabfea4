"""A zoo of small models covering every layer the torch frontend supports (shared by tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.block = Residual(4)
        self.down = nn.Conv2d(4, 8, 1, stride=2)
        self.branch = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        x = self.block(F.relu(self.stem(x)))
        x = self.down(x) + self.branch(x)
        x = F.adaptive_avg_pool2d(x, (2, 2))
        return self.head(torch.flatten(x, 1))


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 4, 3, padding=1)
        self.c = nn.MaxPool2d(3, stride=1, padding=1)
        self.fc = nn.Linear(9 * 6 * 6, 3)

    def forward(self, x):
        y = torch.cat([self.a(x), torch.tanh(self.b(x)), self.c(x)], dim=1)
        return self.fc(y.view(y.size(0), -1))


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 10) / 3)
        self.register_buffer("mean", torch.rand(10))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = (x - self.mean) / 0.5
        x = F.leaky_relu(F.linear(x, self.w), 0.2)
        x = -2.0 * x + 1.0
        x = F.gelu(x)
        x = x.sigmoid() * 3
        return self.fc(x) - self.fc(x).mul(0.5)


class SeqPermute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):  # x: (L, C) "channels last"
        x = x.permute(0, 2, 1)
        x = F.silu(self.conv(x))
        x = x.transpose(1, 2)
        return self.fc(x).flatten(1)


def zoo() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    models = {
        "mlp": (nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)), (5,)),
        "mlp_acts": (nn.Sequential(nn.Linear(4, 6), nn.ELU(1.5), nn.Linear(6, 6), nn.Softplus(), nn.Linear(6, 6),
                                   nn.SELU(), nn.Linear(6, 6), nn.Hardtanh(), nn.Linear(6, 6), nn.Mish(),
                                   nn.Linear(6, 6), nn.PReLU(), nn.Linear(6, 2)), (4,)),
        "cnn_bn_pool": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, stride=2, dilation=1), nn.ReLU6(), nn.Dropout(0.3),
                                      nn.Flatten(), nn.Linear(6, 3)), (1, 8, 8)),
        "cnn_avg": (nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(2, 4, 3, groups=2), nn.Hardswish(), nn.AvgPool2d(2),
                                  nn.Conv2d(4, 4, 2, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.1),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)), (2, 6, 6)),
        "convT": (nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Sigmoid(), nn.ConvTranspose2d(3, 2, 3, stride=2,
                  padding=1, output_padding=1), nn.Upsample(scale_factor=2), nn.Flatten()), (2, 4, 4)),
        "conv1d_3d": (nn.Sequential(nn.Conv3d(1, 2, 2), nn.ReLU(), nn.MaxPool3d(2, stride=1), nn.Flatten(),
                                    nn.Unflatten(1, (2, 2)), nn.Conv1d(2, 3, 2), nn.BatchNorm1d(3), nn.Softsign(),
                                    nn.Flatten()), (1, 3, 3, 4)),
        "resnet": (TinyResNet(), (3, 8, 8)),
        "inception": (Inception(), (2, 6, 6)),
        "functional": (Functional(), (10,)),
        "permute": (SeqPermute(), (7, 3)),
        "adaptive_max": (nn.Sequential(nn.Conv2d(1, 2, 2), nn.AdaptiveMaxPool2d((2, 3)), nn.Flatten()), (1, 6, 7)),
    }
    for m, _ in models.values():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):  # make BatchNorm non-trivial
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.3, 3)
                mod.weight.data.uniform_(-2, 2)
                mod.bias.data.uniform_(-1, 1)
    return models
