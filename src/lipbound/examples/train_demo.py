"""Train the demo network (:mod:`lipbound.examples.demo_net`) and write its shipped files.

    python -m lipbound.examples.train_demo        # needs scikit-learn (the ``examples`` extra)

Data: scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits" data set
(CC BY 4.0; see :mod:`lipbound.examples.demo_net`), pixels divided by 16. A stratified split
holds out 20% (360 images) as the test split, which is saved with the weights.

Training: Adam (lr 1e-2), 30 epochs of minibatches of 64, loss = cross-entropy + ``LAMBDA *
reg()`` with ``reg = lipbound.regularizer(model, (1, 8, 8), target=TARGET)``: the hinge
``relu(log L_AutoLip - log TARGET)`` of the AutoLip estimate. Everything is seeded (seed 0) and runs
on the CPU, so a run reproduces the files (up to the CPU's floating point on another machine).
It prints the test accuracy and the bracket of the default method set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import lipbound
from lipbound.examples.demo_net import INPUT_SHAPE, TEST_SPLIT, WEIGHTS, digits_cnn

SEED = 0
TEST_FRACTION = 0.2
EPOCHS = 30
BATCH = 64
LR = 1e-2
LAMBDA = 0.1  # weight of the Lipschitz penalty
TARGET = 8.0  # the AutoLip estimate above which it penalises


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train images, train labels, test images, test labels)``: images ``(N, 1, 8, 8)`` in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("training the demo net needs scikit-learn: pip install 'lipbound[examples]'") from None
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(data.target, dtype=torch.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SEED,
                                   stratify=data.target)
    return images[train], labels[train], images[test], labels[test]


def train(images: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """The demo net trained on ``images`` / ``labels`` (module doc), returned in eval mode."""
    torch.manual_seed(SEED)
    model = digits_cnn()
    reg = lipbound.regularizer(model, INPUT_SHAPE, target=TARGET, seed=SEED)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(labels), generator=order)
        for i in range(0, len(labels), BATCH):
            batch = perm[i:i + BATCH]
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch]) + LAMBDA * reg()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    x_train, y_train, x_test, y_test = digits()
    model = train(x_train, y_train)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).double().mean().item()
    torch.save(model.state_dict(), WEIGHTS)
    torch.save({"images": x_test.contiguous(), "labels": y_test.contiguous()}, TEST_SPLIT)
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} held-out images; wrote {WEIGHTS.name}, {TEST_SPLIT.name}")
    print(lipbound.estimate(model, INPUT_SHAPE, progress=False).table())


if __name__ == "__main__":
    main()
