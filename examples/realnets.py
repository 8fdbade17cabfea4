"""Loaders for the real trained networks of ``../shared/realnets`` (see its MANIFEST.md).

One function per file format / architecture, each independent of the others, each returning an
``nn.Module`` in eval mode together with its input shape (without batch axis). Weights are read
without executing pickled code (``torch.load(weights_only=True)``, ``scipy.io.loadmat``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["lipsdp_mat", "sequential_mlp_pth", "glipsdp_fc_r18", "glipsdp_lenet5_relu", "glipsdp_2c2f", "eran_conv_small",
           "REALNETS"]

REALNETS = Path(__file__).resolve().parents[1].parent / "shared" / "realnets"


def lipsdp_mat(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """LipSDP ``.mat`` weights (key ``weights``: object array ``[W1, ..., WK]``, float64, no
    biases) as ``Linear(bias=False)`` layers with ReLU between them, in float64."""
    import scipy.io

    weights = [torch.as_tensor(w, dtype=torch.float64) for w in scipy.io.loadmat(str(path))["weights"].ravel()]
    layers: list[nn.Module] = []
    for i, w in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers += [lin] if i == len(weights) - 1 else [lin, nn.ReLU()]
    return nn.Sequential(*layers).eval(), (weights[0].shape[1],)


def sequential_mlp_pth(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """``Sequential(Flatten, Linear, ReLU, ..., Linear)`` state dicts with keys ``1., 3., 5., ...``
    (auto_LiRPA ``spectral_NOR_MLP_B.pth``; alpha-beta-CROWN ERAN ``mnist_6_100_nat.pth``, whose
    checkpoint is ``{'acc', 'state_dict': [sd]}``), MNIST input ``(1, 28, 28)``."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, (list, tuple)):
        state = state[0]
    idx = sorted({int(k.split(".")[0]) for k in state})
    layers: list[nn.Module] = [nn.Flatten()]
    for j, i in enumerate(idx):
        w = state[f"{i}.weight"]
        layers.append(nn.Linear(w.shape[1], w.shape[0]))
        if j < len(idx) - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    model.load_state_dict(state)
    return model.eval(), (1, 28, 28)


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(x + self.fc2(torch.relu(self.fc1(x))))


class _FCResNet(nn.Module):
    def __init__(self, n_blocks: int = 8, width: int = 64) -> None:
        super().__init__()
        self.input_layer = nn.Linear(784, width)
        self.blocks = nn.Sequential(*[_ResBlock(width) for _ in range(n_blocks)])
        self.output_layer = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.input_layer(torch.flatten(x, 1)))
        return self.output_layer(self.blocks(x))


def glipsdp_fc_r18(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """GLipSDP ``FC-R18.pt``: Flatten-Linear(784, 64)-ReLU, 8 blocks
    ``x -> ReLU(x + fc2(ReLU(fc1(x))))`` of width 64, Linear(64, 10); input ``(1, 28, 28)``."""
    model = _FCResNet()
    model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return model.eval(), (1, 28, 28)


def _holder_state(path: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state[0] if isinstance(state, (list, tuple)) else state


def glipsdp_lenet5_relu(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """GLipSDP ``LeNet5ReLU.pt``: zero-pad 2, Conv(1->6,k5)-ReLU-AvgPool(2)-Conv(6->16,k5)-ReLU-
    AvgPool(2)-Flatten-Linear(400->120)-ReLU-Linear(120->84)-ReLU-Linear(84->10); input (1, 28, 28)."""
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                        nn.Linear(84, 10))
    holder = nn.Module()  # the state dict's keys are net.0, net.3, ...
    holder.net = net
    holder.load_state_dict(_holder_state(path))
    return net.eval(), (1, 28, 28)


class _SameConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # TensorFlow "same" padding for k=4, s=2 on 28 and 14 inputs: one zero on each side
        self.conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


def glipsdp_2c2f(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """GLipSDP ``2C2F.pt``: same-padded Conv(1->16,k4,s2)-ReLU-Conv(16->32,k4,s2)-ReLU-Flatten-
    Linear(1568->100)-ReLU-Linear(100->10); input (1, 28, 28)."""
    model = nn.Sequential()
    model.features = nn.Sequential(_SameConv(1, 16), nn.ReLU(), _SameConv(16, 32), nn.ReLU())
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(1568, 100), nn.ReLU(), nn.Linear(100, 10))
    model.load_state_dict(_holder_state(path))
    return model.eval(), (1, 28, 28)


def eran_conv_small(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """alpha-beta-CROWN ``mnist_conv_small_nat.pth``: Conv(1->16,k4,s2)-ReLU-Conv(16->32,k4,s2)-ReLU-
    Flatten-Linear(800->100)-ReLU-Linear(100->10); input (1, 28, 28), normalisation outside the net."""
    model = nn.Sequential(nn.Conv2d(1, 16, 4, 2), nn.ReLU(), nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(800, 100), nn.ReLU(), nn.Linear(100, 10))
    model.load_state_dict(_holder_state(path))
    return model.eval(), (1, 28, 28)
