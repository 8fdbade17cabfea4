"""Registry of element-wise activations and what lipbound knows of each, from its definition.

Every fact is derived from the activation's formula and its parameters, never by probing a window
of inputs (a probe of ``|t| <= 3`` cannot tell ReLU6 from ReLU). An activation ``s`` has
:class:`ActivationFacts`:

* ``slope = [a, b]``: an interval that encloses every derivative ``s'(t)`` (and so every difference
  quotient ``(s(t) - s(u)) / (t - u)``) for all real ``t``. Its Lipschitz constant is
  ``max(|a|, |b|)``; SeqLip and the SDP methods use the interval.
* ``kinks``: the points where ``s`` is not continuously differentiable (ReLU: ``0``; ReLU6:
  ``0, 6``; ELU with ``alpha != 1``: ``0``).
  A Jacobian at an input where some pre-activation sits on a kink belongs to no linear region
  (DESIGN §8): witnesses must stay off them.
* ``pieces``: for a piecewise-linear activation with the same scalars on every element, its exact
  pieces (:class:`PiecewiseLinear`); ``None`` otherwise (smooth activations, PReLU with one
  slope per channel).

For the smooth activations whose derivative is not monotone (GELU, SiLU, Mish, Hardswish) the
slope end points are the extrema of ``s'`` found numerically in float64 on a fine grid and then
rounded outward (``tests/test_activations.py`` re-checks every enclosure). The other ranges are
exact:

=============  =====================================================================
ReLU, ReLU6    ``[0, 1]``; Hardtanh(lo, hi) and Clip ``[0, 1]``
LeakyReLU(α)   ``[min(α, 1), max(α, 1)]``; PReLU the same over its learnt slopes
ELU(α)         ``[min(0, α), max(1, α)]`` (``s'(t) = α e^t`` for ``t < 0``)
CELU(α)        ``[0, 1]`` (``s'(t) = e^{t/α}`` for ``t < 0``)
SELU(α, λ)     hull of ``{0, λ, λα}``
Sigmoid        ``[0, 1/4]``; Hardsigmoid ``[0, 1/6]``; HardSigmoid(α, β) hull of ``{0, α}``
Tanh, Softsign, Softplus, LogSigmoid, Tanhshrink   ``[0, 1]``
Abs            ``[-1, 1]``
GELU           ``[-0.12900, 1.12900]`` (both the erf and the tanh forms)
SiLU           ``[-0.09984, 1.09984]``; Mish ``[-0.11253, 1.08850]``
Hardswish      ``[-0.5, 1.5]``
=============  =====================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Slope = tuple[float, float]

__all__ = ["Slope", "PiecewiseLinear", "ActivationFacts", "ActivationSpec", "MODULES", "FUNCTIONS", "METHODS",
           "lipschitz_of_slope", "relu", "leaky_relu", "prelu", "hardtanh", "hard_sigmoid", "elu", "celu",
           "selu", "softplus", "softplus_function", "absolute", "smooth"]


@dataclass(frozen=True)
class PiecewiseLinear:
    """``s(t) = slopes[k] t + offsets[k]`` on the ``k``-th piece, the pieces separated by the
    sorted ``breakpoints`` (``len(slopes) == len(offsets) == len(breakpoints) + 1``); ``s`` is
    continuous."""

    breakpoints: tuple[float, ...]
    slopes: tuple[float, ...]
    offsets: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.breakpoints)
        if len(self.slopes) != n + 1 or len(self.offsets) != n + 1 or list(self.breakpoints) != sorted(self.breakpoints):
            raise ValueError(f"inconsistent pieces {self}")

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """``s(t)`` from the pieces (an evaluation path independent of the activation's code)."""
        piece = torch.bucketize(t, torch.tensor(self.breakpoints, dtype=t.dtype, device=t.device))
        slopes = torch.tensor(self.slopes, dtype=t.dtype, device=t.device)
        offsets = torch.tensor(self.offsets, dtype=t.dtype, device=t.device)
        return slopes[piece] * t + offsets[piece]

    @property
    def two_slope(self) -> Slope | None:
        """``(a, b)`` when ``s(t) = b t`` for ``t >= 0`` and ``a t`` for ``t < 0`` (ReLU, LeakyReLU,
        a PReLU with one weight), else None."""
        if self.breakpoints == (0.0,) and self.offsets == (0.0, 0.0):
            return self.slopes[0], self.slopes[1]
        return None


@dataclass(frozen=True)
class ActivationFacts:
    """What lipbound knows of one element-wise activation (module doc)."""

    slope: Slope
    kinks: tuple[float, ...] = ()
    pieces: PiecewiseLinear | None = None

    @property
    def lipschitz(self) -> float:
        return lipschitz_of_slope(self.slope)


def lipschitz_of_slope(slope: Slope) -> float:
    """Lipschitz constant of an activation with slope range ``[a, b]``: ``max(|a|, |b|)``."""
    return max(abs(slope[0]), abs(slope[1]))


def _pwl(breakpoints: Sequence[float], slopes: Sequence[float], offsets: Sequence[float]) -> ActivationFacts:
    """Facts of a continuous piecewise-linear activation: its slope hull, its breakpoints as kinks
    (dropping those where both sides have the same slope), its pieces."""
    pieces = PiecewiseLinear(tuple(float(b) for b in breakpoints), tuple(float(s) for s in slopes),
                             tuple(float(o) for o in offsets))
    kinks = tuple(b for k, b in enumerate(pieces.breakpoints) if pieces.slopes[k] != pieces.slopes[k + 1])
    return ActivationFacts((min(pieces.slopes), max(pieces.slopes)), kinks, pieces)


# ---- the activations, each from its definition -------------------------------------------------
def relu() -> ActivationFacts:
    return _pwl((0.0,), (0.0, 1.0), (0.0, 0.0))


def leaky_relu(negative_slope: float = 0.01) -> ActivationFacts:
    return _pwl((0.0,), (negative_slope, 1.0), (0.0, 0.0))


def prelu(weight: torch.Tensor) -> ActivationFacts:
    """``max(0, t) + w min(0, t)`` with one learnt ``w`` per channel (or one shared)."""
    w = weight.detach().to(torch.float64).flatten()
    lo, hi = float(w.min()), float(w.max())
    if lo == hi:
        return leaky_relu(lo)
    return ActivationFacts((min(lo, 1.0), max(hi, 1.0)), (0.0,), None)


def hardtanh(min_val: float = -1.0, max_val: float = 1.0) -> ActivationFacts:
    """``clamp(t, min_val, max_val)`` (ReLU6 is ``hardtanh(0, 6)``; ONNX ``Clip`` with ``None``
    for a missing end)."""
    if min_val is None and max_val is None:
        return _pwl((), (1.0,), (0.0,))
    if min_val is None:
        return _pwl((max_val,), (1.0, 0.0), (0.0, max_val))
    if max_val is None:
        return _pwl((min_val,), (0.0, 1.0), (min_val, 0.0))
    if min_val == max_val:  # a constant
        return _pwl((), (0.0,), (min_val,))
    return _pwl((min_val, max_val), (0.0, 1.0, 0.0), (min_val, 0.0, max_val))


def hard_sigmoid(alpha: float = 1.0 / 6.0, beta: float = 0.5) -> ActivationFacts:
    """``clamp(alpha t + beta, 0, 1)`` (torch's Hardsigmoid: ``alpha = 1/6``, ``beta = 1/2``)."""
    if alpha == 0:
        return _pwl((), (0.0,), (min(max(beta, 0.0), 1.0),))
    ends = sorted(((0.0 - beta) / alpha, (1.0 - beta) / alpha))
    low_value, high_value = (0.0, 1.0) if alpha > 0 else (1.0, 0.0)
    return _pwl(ends, (0.0, alpha, 0.0), (low_value, beta, high_value))


def elu(alpha: float = 1.0) -> ActivationFacts:
    """``t`` for ``t > 0``, ``alpha (e^t - 1)`` else: ``s'(0-) = alpha``, a kink unless ``alpha = 1``."""
    return ActivationFacts((min(0.0, alpha), max(1.0, alpha)), () if alpha == 1.0 else (0.0,))


def celu(alpha: float = 1.0) -> ActivationFacts:
    """``max(0, t) + min(0, alpha (e^{t/alpha} - 1))``: continuously differentiable, slopes in ``[0, 1]``."""
    return ActivationFacts((0.0, 1.0))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def selu(alpha: float = _SELU_ALPHA, scale: float = _SELU_SCALE) -> ActivationFacts:
    """``scale t`` for ``t > 0``, ``scale alpha (e^t - 1)`` else: slopes in the hull of
    ``{0, scale, scale alpha}``, a kink at 0 unless ``alpha = 1``."""
    ends = (0.0, scale, scale * alpha)
    return ActivationFacts((min(ends), max(ends)), () if alpha == 1.0 else (0.0,))


SOFTPLUS_MAX_JUMP = 1e-7  # the largest jump of torch's thresholded Softplus taken for rounding


def softplus(beta: float = 1.0, threshold: float = 20.0) -> ActivationFacts:
    """``log(1 + e^{beta t}) / beta``: smooth, slopes in ``[0, 1]``. lipbound evaluates this
    function (:func:`softplus_function`), not torch's, which switches to ``t`` above
    ``threshold / beta``: a jump of ``log(1 + e^{-threshold}) / beta`` that makes torch's function
    discontinuous (no finite constant holds for it). A jump above :data:`SOFTPLUS_MAX_JUMP` (2e-9
    with the default threshold 20) is refused with a ``ValueError``."""
    jump = math.log1p(math.exp(-threshold)) / beta
    if jump > SOFTPLUS_MAX_JUMP:
        raise ValueError(f"Softplus(beta={beta:g}, threshold={threshold:g}) jumps by {jump:.3g} at "
                         f"{threshold / beta:g}: it is discontinuous, no finite Lipschitz constant holds "
                         "(use a threshold of at least 20)")
    return ActivationFacts((0.0, 1.0))


def softplus_function(beta: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The mathematical softplus ``log(1 + e^{beta t}) / beta``, evaluated stably for every ``t``."""
    return lambda t: torch.logaddexp(beta * t, torch.zeros_like(t)) / beta


def absolute() -> ActivationFacts:
    return _pwl((0.0,), (-1.0, 1.0), (0.0, 0.0))


def smooth(slope: Slope) -> ActivationFacts:
    """A continuously differentiable activation with slopes in ``slope``."""
    return ActivationFacts((float(slope[0]), float(slope[1])))


_GELU = smooth((-0.12900, 1.12900))
_SILU = smooth((-0.09984, 1.09984))
_MISH = smooth((-0.11253, 1.08850))
_UNIT = smooth((0.0, 1.0))
HARDSWISH = ActivationFacts((-0.5, 1.5), (-3.0, 3.0))  # t relu6(t + 3) / 6: s' jumps at -3 and 3


@dataclass(frozen=True)
class ActivationSpec:
    """One registered activation: its ``name`` and ``facts``, called with the module, or with the
    call's arguments bound to the function's parameter names (see :func:`call_arguments`).
    ``function``, called the same way, gives the function lipbound evaluates when it is not
    torch's own (Softplus: the mathematical one, see :func:`softplus`)."""

    name: str
    facts: Callable[..., ActivationFacts]
    function: Callable[..., Callable[[torch.Tensor], torch.Tensor]] | None = None


def _const(facts: ActivationFacts) -> Callable[..., ActivationFacts]:
    return lambda *_, **__: facts


MODULES: dict[type[nn.Module], ActivationSpec] = {
    nn.ReLU: ActivationSpec("ReLU", _const(relu())),
    nn.ReLU6: ActivationSpec("ReLU6", _const(hardtanh(0.0, 6.0))),
    nn.LeakyReLU: ActivationSpec("LeakyReLU", lambda m: leaky_relu(m.negative_slope)),
    nn.PReLU: ActivationSpec("PReLU", lambda m: prelu(m.weight)),
    nn.ELU: ActivationSpec("ELU", lambda m: elu(m.alpha)),
    nn.CELU: ActivationSpec("CELU", lambda m: celu(m.alpha)),
    nn.SELU: ActivationSpec("SELU", _const(selu())),
    nn.Sigmoid: ActivationSpec("Sigmoid", _const(smooth((0.0, 0.25)))),
    nn.Hardsigmoid: ActivationSpec("Hardsigmoid", _const(hard_sigmoid())),
    nn.Tanh: ActivationSpec("Tanh", _const(_UNIT)),
    nn.Hardtanh: ActivationSpec("Hardtanh", lambda m: hardtanh(m.min_val, m.max_val)),
    nn.Softsign: ActivationSpec("Softsign", _const(_UNIT)),
    nn.Softplus: ActivationSpec("Softplus", lambda m: softplus(m.beta, m.threshold), lambda m: softplus_function(m.beta)),
    nn.LogSigmoid: ActivationSpec("LogSigmoid", _const(_UNIT)),
    nn.Tanhshrink: ActivationSpec("Tanhshrink", _const(_UNIT)),
    nn.GELU: ActivationSpec("GELU", _const(_GELU)),
    nn.SiLU: ActivationSpec("SiLU", _const(_SILU)),
    nn.Mish: ActivationSpec("Mish", _const(_MISH)),
    nn.Hardswish: ActivationSpec("Hardswish", _const(HARDSWISH)),
}

FUNCTIONS: dict[Any, ActivationSpec] = {
    F.relu: MODULES[nn.ReLU],
    torch.relu: MODULES[nn.ReLU],
    F.relu6: MODULES[nn.ReLU6],
    F.leaky_relu: ActivationSpec("LeakyReLU", lambda negative_slope=0.01, **_: leaky_relu(negative_slope)),
    F.elu: ActivationSpec("ELU", lambda alpha=1.0, **_: elu(alpha)),
    F.celu: ActivationSpec("CELU", lambda alpha=1.0, **_: celu(alpha)),
    F.selu: MODULES[nn.SELU],
    torch.selu: MODULES[nn.SELU],
    torch.sigmoid: MODULES[nn.Sigmoid],
    F.sigmoid: MODULES[nn.Sigmoid],
    F.hardsigmoid: MODULES[nn.Hardsigmoid],
    torch.tanh: MODULES[nn.Tanh],
    F.tanh: MODULES[nn.Tanh],
    F.hardtanh: ActivationSpec("Hardtanh", lambda min_val=-1.0, max_val=1.0, **_: hardtanh(min_val, max_val)),
    F.softsign: MODULES[nn.Softsign],
    F.softplus: ActivationSpec("Softplus", lambda beta=1.0, threshold=20.0, **_: softplus(beta, threshold),
                               lambda beta=1.0, **_: softplus_function(beta)),
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

# Parameter names of the functional forms after the input, in order: positional arguments of a
# call are bound to them so that ``F.leaky_relu(x, 0.2)`` gets the facts of slope 0.2.
_POSITIONAL: dict[Any, tuple[str, ...]] = {
    F.leaky_relu: ("negative_slope", "inplace"),
    F.elu: ("alpha", "inplace"),
    F.celu: ("alpha", "inplace"),
    F.hardtanh: ("min_val", "max_val", "inplace"),
    F.softplus: ("beta", "threshold"),
}


def call_arguments(fn: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a functional call ``fn(x, *args, **kwargs)`` after ``x``, by name."""
    names = _POSITIONAL.get(fn, ())
    if len(args) > len(names):
        raise TypeError(f"{getattr(fn, '__name__', fn)} got {len(args)} extra positional arguments")
    out = dict(zip(names, args))
    out.update(kwargs)
    out.pop("inplace", None)
    if any(isinstance(v, float) and not math.isfinite(v) for v in out.values()):
        raise ValueError(f"{getattr(fn, '__name__', fn)}: parameters must be finite, got {out}")
    return out
