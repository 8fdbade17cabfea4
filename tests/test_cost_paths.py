"""The cost model's LipSDP path on residual networks is the one ``lipsdp(solver="auto")`` takes.

Oracles: lipsdp's own routing (:func:`~lipbound.methods.lipsdp_conv.routes_to_blocks`) and the real
call, which refuses a budget too small for the "blocks" path's set-up before building anything.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import NotApplicable
from lipbound.methods.cost import graph_sizes, lipsdp_cost, lipsdp_path
from lipbound.methods.lipsdp import lipsdp
from lipbound.methods.lipsdp_conv import routes_to_blocks


class ResidualCNN(nn.Module):
    """ResNet-2B-like shapes: a stride-2 stem (3x32x32 -> 8x16x16), one residual block, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.conv2(torch.relu(self.conv1(h))))
        return self.head(h.flatten(1))


@pytest.fixture(scope="module")
def residual() -> lipbound.Graph:
    torch.manual_seed(0)
    return lipbound.as_graph(ResidualCNN().eval(), (3, 32, 32))


def test_a_residual_net_too_large_to_assemble_goes_to_blocks(residual):
    sizes = graph_sizes(residual)
    assert sizes.kind == "cnn" and sizes.chain_orders is None  # not a chain: a residual block
    assert routes_to_blocks(residual)  # lipsdp's own routing
    assert lipsdp_path(sizes, 300.0) == lipsdp_path(sizes) == "blocks"
    assert math.isfinite(lipsdp_cost(sizes)) and lipsdp_cost(sizes) > 0


def test_a_budget_below_the_blocks_set_up_is_refused_by_both(residual):
    assert lipsdp_path(graph_sizes(residual), 1e-3) == "refused"
    with pytest.raises(NotApplicable, match="would not fit"):
        lipsdp(residual, solver="auto", time_budget=1e-3)
