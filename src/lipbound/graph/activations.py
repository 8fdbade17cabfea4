"""Registry of element-wise activations and their slope ranges.

An element-wise activation ``s`` is recorded with an interval ``[a, b]`` that encloses every
derivative ``s'(t)`` (and every difference quotient ``(s(t) - s(u)) / (t - u)``), for all real
``t``. Its Lipschitz constant is ``max(|a|, |b|)``; SeqLip and the SDP methods use the interval.

For the smooth activations whose derivative is not monotone (GELU, SiLU, Mish, Hardswish) the
end points are the extrema of ``s'`` found numerically in float64 on a fine grid and then rounded
outward (``tests/test_activations.py`` re-checks every enclosure). The other ranges are exact:

=============  =====================================================================
ReLU, ReLU6    ``[0, 1]``
LeakyReLU(α)   ``[min(α, 1), max(α, 1)]``; PReLU the same over its learnt slopes
ELU(α)         ``[min(0, α), max(1, α)]`` (``s'(t) = α e^t`` for ``t < 0``)
CELU(α)        ``[0, 1]`` (``s'(t) = e^{t/α}`` for ``t < 0``)
SELU           ``[0, λα]`` with ``λ = 1.0507..., α = 1.6732...``
Sigmoid        ``[0, 1/4]``; Hardsigmoid ``[0, 1/6]``
Tanh, Hardtanh, Softsign, Softplus, LogSigmoid, Tanhshrink   ``[0, 1]``
GELU           ``[-0.12900, 1.12900]`` (both the erf and the tanh forms)
SiLU           ``[-0.09984, 1.09984]``; Mish ``[-0.11253, 1.08850]``
Hardswish      ``[-0.5, 1.5]``
=============  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

Slope = tuple[float, float]


@dataclass(frozen=True)
class ActivationSpec:
    """What lipbound knows of one element-wise activation."""

    name: str
    slope: Callable[..., Slope]  # called with the module, or with the call's keyword arguments


def _leaky(alpha: float) -> Slope:
    return (min(alpha, 1.0), max(alpha, 1.0))


def _elu(alpha: float) -> Slope:
    return (min(0.0, alpha), max(1.0, alpha))


_SELU = (0.0, 1.0507009873554805 * 1.6732632423543772)
_GELU = (-0.12900, 1.12900)
_SILU = (-0.09984, 1.09984)
_MISH = (-0.11253, 1.08850)
_UNIT = (0.0, 1.0)


def _const(rng: Slope) -> Callable[..., Slope]:
    return lambda *_, **__: rng


def _prelu(module: nn.PReLU) -> Slope:
    w = module.weight.detach()
    return (min(float(w.min()), 1.0), max(float(w.max()), 1.0))


MODULES: dict[type[nn.Module], ActivationSpec] = {
    nn.ReLU: ActivationSpec("ReLU", _const(_UNIT)),
    nn.ReLU6: ActivationSpec("ReLU6", _const(_UNIT)),
    nn.LeakyReLU: ActivationSpec("LeakyReLU", lambda m: _leaky(m.negative_slope)),
    nn.PReLU: ActivationSpec("PReLU", _prelu),
    nn.ELU: ActivationSpec("ELU", lambda m: _elu(m.alpha)),
    nn.CELU: ActivationSpec("CELU", _const(_UNIT)),
    nn.SELU: ActivationSpec("SELU", _const(_SELU)),
    nn.Sigmoid: ActivationSpec("Sigmoid", _const((0.0, 0.25))),
    nn.Hardsigmoid: ActivationSpec("Hardsigmoid", _const((0.0, 1.0 / 6.0))),
    nn.Tanh: ActivationSpec("Tanh", _const(_UNIT)),
    nn.Hardtanh: ActivationSpec("Hardtanh", _const(_UNIT)),
    nn.Softsign: ActivationSpec("Softsign", _const(_UNIT)),
    nn.Softplus: ActivationSpec("Softplus", _const(_UNIT)),
    nn.LogSigmoid: ActivationSpec("LogSigmoid", _const(_UNIT)),
    nn.Tanhshrink: ActivationSpec("Tanhshrink", _const(_UNIT)),
    nn.GELU: ActivationSpec("GELU", _const(_GELU)),
    nn.SiLU: ActivationSpec("SiLU", _const(_SILU)),
    nn.Mish: ActivationSpec("Mish", _const(_MISH)),
    nn.Hardswish: ActivationSpec("Hardswish", _const((-0.5, 1.5))),
}

FUNCTIONS: dict[Any, ActivationSpec] = {
    F.relu: MODULES[nn.ReLU],
    torch.relu: MODULES[nn.ReLU],
    F.relu6: MODULES[nn.ReLU6],
    F.leaky_relu: ActivationSpec("LeakyReLU", lambda negative_slope=0.01, **_: _leaky(negative_slope)),
    F.elu: ActivationSpec("ELU", lambda alpha=1.0, **_: _elu(alpha)),
    F.celu: MODULES[nn.CELU],
    F.selu: MODULES[nn.SELU],
    torch.selu: MODULES[nn.SELU],
    torch.sigmoid: MODULES[nn.Sigmoid],
    F.sigmoid: MODULES[nn.Sigmoid],
    F.hardsigmoid: MODULES[nn.Hardsigmoid],
    torch.tanh: MODULES[nn.Tanh],
    F.tanh: MODULES[nn.Tanh],
    F.hardtanh: MODULES[nn.Hardtanh],
    F.softsign: MODULES[nn.Softsign],
    F.softplus: MODULES[nn.Softplus],
    F.logsigmoid: MODULES[nn.LogSigmoid],
    F.tanhshrink: MODULES[nn.Tanhshrink],
    F.gelu: MODULES[nn.GELU],
    F.silu: MODULES[nn.SiLU],
    F.mish: MODULES[nn.Mish],
    F.hardswish: MODULES[nn.Hardswish],
}

# Tensor methods (``x.relu()``) by name.
METHODS: dict[str, ActivationSpec] = {
    "relu": MODULES[nn.ReLU],
    "sigmoid": MODULES[nn.Sigmoid],
    "tanh": MODULES[nn.Tanh],
}


def lipschitz_of_slope(slope: Slope) -> float:
    """Lipschitz constant of an activation with slope range ``[a, b]``: ``max(|a|, |b|)``."""
    return max(abs(slope[0]), abs(slope[1]))
