"""Every registered slope range encloses the activation's derivative (checked on a fine grid)."""

import pytest
import torch
from torch import nn

from lipbound.graph.activations import MODULES


@pytest.mark.parametrize("cls", list(MODULES))
def test_slope_range_encloses_the_derivative(cls):
    kwargs = {nn.LeakyReLU: {"negative_slope": 0.2}, nn.ELU: {"alpha": 1.7}, nn.CELU: {"alpha": 0.5}}.get(cls, {})
    module = cls(**kwargs).double()
    if cls is nn.PReLU:
        module.weight.data.fill_(-0.3)
    a, b = MODULES[cls].facts(module).slope
    x = torch.linspace(-30, 30, 600_001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(module(x).sum(), x)
    # (1e-7: torch computes some derivatives with float32 constants, e.g. 1/6 for Hardsigmoid)
    assert g.min().item() >= a - 1e-7 * abs(a) - 1e-12 and g.max().item() <= b + 1e-7 * abs(b) + 1e-12
    # the range is not loose by more than the outward rounding
    assert g.min().item() <= a + 1e-4 or a == 0.0
    assert g.max().item() >= b - 1e-4
