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
           "abcrown_cifar_resnet2b", "SUITE", "load_realnet",
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


class _CifarBasicBlock(nn.Module):
    """alpha-beta-CROWN ``BasicBlock`` with ``bn=False``: ``relu(conv2(relu(conv1(x))) + shortcut(x))``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride))

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class _CResNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.layer1 = nn.Sequential(_CifarBasicBlock(8, 16, 2), _CifarBasicBlock(16, 16, 1))
        self.linear1 = nn.Linear(1024, 100)
        self.linear2 = nn.Linear(100, 10)

    def forward(self, x):
        x = self.layer1(torch.relu(self.conv1(x)))
        return self.linear2(torch.relu(self.linear1(torch.flatten(x, 1))))


def abcrown_cifar_resnet2b(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """alpha-beta-CROWN ``resnet2b.pth``: ``CResNet5(BasicBlock, num_blocks=2, in_planes=8, bn=False,
    last_layer="dense")``: Conv(3->8,k3,s2,p1)-ReLU, a block 8->16 with stride 2 and a 1x1 conv
    shortcut, a block 16->16 with identity shortcut, Flatten-Linear(1024->100)-ReLU-Linear(100->10);
    input (3, 32, 32), normalisation outside the net (std 0.2471, 0.2435, 0.2616). The checkpoint is
    ``{'state_dict': sd, 'test_acc': ...}``; its weights equal those of ``cifar10_resnet_2b.onnx``."""
    model = _CResNet5()
    model.load_state_dict(_holder_state(path))
    return model.eval(), (3, 32, 32)


# The real-network suite: file -> (loader, std of the input normalisation outside the model or None).
# A loader of None means the file is read directly by lipbound.load (ONNX).
SUITE: dict[str, tuple[object, tuple[float, ...] | None]] = {
    "acasxu_1_1.onnx": (None, None),
    "acasxu_1_1_eran.onnx": (None, None),
    "acasxu_2_1.onnx": (None, None),
    "acasxu_3_3.onnx": (None, None),
    "mnistfc_256x2.onnx": (None, None),
    "mnistfc_256x6.onnx": (None, None),
    "eran_mnist_relu_9x200.onnx": (None, None),
    "eran_mnist_sigmoid_6x200.onnx": (None, None),
    "vnn20_mnist_tanh_200_50.onnx": (None, None),
    "rl_cartpole.onnx": (None, None),
    "oval21_cifar_base_kw.onnx": (None, (0.225,)),
    "oval21_cifar_wide_kw.onnx": (None, (0.225,)),
    "marabou_cifar10_small.onnx": (None, None),
    "verivital_mnist_maxpool.onnx": (None, None),
    "verivital_mnist_avgpool.onnx": (None, None),
    "cifar10_resnet_2b.onnx": (None, (0.2471, 0.2435, 0.2616)),
    "lipsdp_mnist_weights.mat": (lipsdp_mat, None),
    "lipsdp_random_weights.mat": (lipsdp_mat, None),
    "lirpa_mnist_spectral_nor_mlp_b.pth": (sequential_mlp_pth, None),
    "abcrown_eran_mnist_6x100_nat.pth": (sequential_mlp_pth, None),
    "abcrown_eran_mnist_conv_small_nat.pth": (eran_conv_small, (0.3081,)),
    "abcrown_cifar10_resnet2b.pth": (abcrown_cifar_resnet2b, (0.2471, 0.2435, 0.2616)),
    "glipsdp_LeNet5ReLU.pt": (glipsdp_lenet5_relu, None),
    "glipsdp_2C2F.pt": (glipsdp_2c2f, None),
    "glipsdp_FC-R18.pt": (glipsdp_fc_r18, None),
}


def load_realnet(path: str | Path):
    """The lipbound Graph of one file of the suite (:data:`SUITE` names its loader), computed on
    the model's own input: a normalisation outside the model is not included (compose it with
    ``lipbound.as_graph(graph, input_scale=SUITE[name][1])``)."""
    import lipbound

    path = Path(path)
    loader, _ = SUITE[path.name]
    if loader is None:
        return lipbound.load(path)
    model, shape = loader(path)
    return lipbound.from_torch(model, shape, name=path.stem)
