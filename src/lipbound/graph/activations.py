"""The activation registry: one entry per element-wise activation, read by both frontends.

Each :class:`ActivationOp` declares, in one place (cvxpy's atoms are the model): its torch module,
functions and Tensor-method names; its ONNX operator and how the attributes map to its
parameters; for given parameters its :class:`ActivationFacts` (from the definition, never by
probing a window of inputs: a probe of ``|t| <= 3`` cannot tell ReLU6 from ReLU) and the function
lipbound evaluates. A refused parameter setting (a discontinuous function: no finite Lipschitz
constant holds) raises ``ValueError`` with the reason; the frontends turn it into
:class:`~lipbound.errors.UnsupportedOperation` naming the node. The facts of an activation ``s``:

* ``slope = [a, b]`` encloses every derivative ``s'(t)`` (and so every difference quotient) for all
  real ``t``; its Lipschitz constant is ``max(|a|, |b|)``;
* ``kinks``: the points where ``s`` is not continuously differentiable (DESIGN §8: a Jacobian
  witness must stay off them);
* ``pieces``: the exact pieces of a piecewise-linear ``s`` with the same scalars on every element;
* ``derivative``: ``s'`` from its definition, in float64, for the activations that are not
  piecewise linear; :meth:`ActivationFacts.slopes_on` reads it (the slope rule on an interval).

Global slope ranges (the non-monotone ``s'`` of GELU, SiLU, Mish were maximised numerically in
float64 on a fine grid and rounded outward; ``tests/test_activations.py`` re-checks each):

=============  =====================================================================
ReLU, ReLU6    ``[0, 1]``; Hardtanh(lo, hi) and Clip ``[0, 1]``; Threshold(v, v) ``[0, 1]``
LeakyReLU(α)   ``[min(α, 1), max(α, 1)]``; RReLU(l, u) as LeakyReLU((l + u) / 2); PReLU its hull
ELU(α)         ``[min(0, α), max(1, α)]``; CELU ``[0, 1]``; SELU(α, λ) hull of ``{0, λ, λα}``
Sigmoid        ``[0, 1/4]``; Hardsigmoid ``[0, 1/6]``; HardSigmoid(α, β) hull of ``{0, α}``
Tanh, Softsign, Softplus, LogSigmoid, Tanhshrink, Softshrink   ``[0, 1]``;  Abs ``[-1, 1]``
GELU           ``[-0.12900, 1.12900]`` (erf and tanh forms); SiLU ``[-0.09984, 1.09984]``
Mish           ``[-0.11253, 1.08850]``; Hardswish ``[-0.5, 1.5]``
=============  =====================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .activation_facts import SLOPE_PAD, ActivationFacts, Fn, PiecewiseLinear, Slope, smoothed

__all__ = ["Slope", "PiecewiseLinear", "ActivationFacts", "ActivationOp", "OnnxArgs", "REGISTRY", "MODULES",
           "FUNCTIONS", "METHODS", "ONNX", "smoothed", "SLOPE_PAD"]

# ---- facts of each activation, from its definition ----------------------------------------------
def _pwl(breakpoints: Sequence[float], slopes: Sequence[float], offsets: Sequence[float]) -> ActivationFacts:
    """Facts of a continuous piecewise-linear activation: its slope hull, its breakpoints as kinks
    (dropping those where both sides have the same slope), its pieces."""
    pieces = PiecewiseLinear(tuple(float(b) for b in breakpoints), tuple(float(s) for s in slopes),
                             tuple(float(o) for o in offsets))
    kinks = tuple(b for k, b in enumerate(pieces.breakpoints) if pieces.slopes[k] != pieces.slopes[k + 1])
    return ActivationFacts((min(pieces.slopes), max(pieces.slopes)), kinks, pieces)


def _smooth(slope: Slope, derivative: Fn, kinks: tuple[float, ...] = ()) -> ActivationFacts:
    return ActivationFacts((float(slope[0]), float(slope[1])), kinks, None, derivative)


def relu() -> ActivationFacts:
    return _pwl((0.0,), (0.0, 1.0), (0.0, 0.0))


def leaky_relu(negative_slope: float = 0.01) -> ActivationFacts:
    return _pwl((0.0,), (negative_slope, 1.0), (0.0, 0.0))


def rrelu(lower: float = 1.0 / 8.0, upper: float = 1.0 / 3.0, training: bool = False) -> ActivationFacts:
    """In eval mode, a LeakyReLU of slope ``(lower + upper) / 2``; in training mode the slopes are
    drawn at random: refused."""
    if training:
        raise ValueError("RReLU in training mode draws random slopes; put the model in eval mode")
    return leaky_relu((lower + upper) / 2.0)


def prelu(weight: torch.Tensor) -> ActivationFacts:
    """``max(0, t) + w min(0, t)`` with one learnt ``w`` per channel (or one shared)."""
    w = torch.as_tensor(weight).detach().to(torch.float64).flatten()
    lo, hi = float(w.min()), float(w.max())
    if lo == hi:
        return leaky_relu(lo)
    return ActivationFacts((min(lo, 1.0), max(hi, 1.0)), (0.0,), None)


def hardtanh(min_val: float | None = -1.0, max_val: float | None = 1.0) -> ActivationFacts:
    """``clamp(t, min_val, max_val)`` (ReLU6 is ``hardtanh(0, 6)``; ONNX ``Clip`` with ``None``
    for a missing end; ``min_val > max_val`` is the constant ``max_val``, as in ONNX and torch)."""
    if min_val is not None and max_val is not None and min_val > max_val:
        min_val = max_val
    if min_val is None and max_val is None:
        return _pwl((), (1.0,), (0.0,))
    if min_val is None:
        return _pwl((max_val,), (1.0, 0.0), (0.0, max_val))
    if max_val is None:
        return _pwl((min_val,), (0.0, 1.0), (min_val, 0.0))
    if min_val == max_val:
        return _pwl((), (0.0,), (min_val,))
    return _pwl((min_val, max_val), (0.0, 1.0, 0.0), (min_val, 0.0, max_val))


def hard_sigmoid(alpha: float = 1.0 / 6.0, beta: float = 0.5) -> ActivationFacts:
    """``clamp(alpha t + beta, 0, 1)`` (torch's Hardsigmoid: ``alpha = 1/6``, ``beta = 1/2``)."""
    if alpha == 0:
        return _pwl((), (0.0,), (min(max(beta, 0.0), 1.0),))
    ends = sorted(((0.0 - beta) / alpha, (1.0 - beta) / alpha))
    low_value, high_value = (0.0, 1.0) if alpha > 0 else (1.0, 0.0)
    return _pwl(ends, (0.0, alpha, 0.0), (low_value, beta, high_value))


def softshrink(lambd: float = 0.5) -> ActivationFacts:
    """``t - lambd`` above ``lambd``, ``t + lambd`` below ``-lambd``, 0 between (``lambd >= 0``)."""
    if not lambd >= 0:
        raise ValueError(f"Softshrink needs lambd >= 0, got {lambd}")
    if lambd == 0:
        return _pwl((), (1.0,), (0.0,))
    return _pwl((-lambd, lambd), (1.0, 0.0, 1.0), (lambd, 0.0, -lambd))


def shrink(bias: float = 0.0, lambd: float = 0.5) -> ActivationFacts:
    """ONNX Shrink: ``t - bias`` above ``lambd``, ``t + bias`` below ``-lambd``, 0 between. It
    jumps by ``|lambd - bias|`` at ``±lambd`` unless ``bias == lambd`` (then it is Softshrink)."""
    if bias != lambd:
        raise ValueError(f"Shrink(bias={bias:g}, lambd={lambd:g}) jumps by {abs(lambd - bias):g} at "
                         f"±{lambd:g}: it is discontinuous, no finite Lipschitz constant holds")
    return softshrink(lambd)


def hardshrink(lambd: float = 0.5) -> ActivationFacts:
    """``t`` where ``|t| > lambd``, else 0: it jumps by ``lambd`` at ``±lambd`` (the identity for 0)."""
    if lambd != 0:
        raise ValueError(f"Hardshrink(lambd={lambd:g}) jumps by {lambd:g} at ±{lambd:g}: it is discontinuous, "
                         "no finite Lipschitz constant holds")
    return _pwl((), (1.0,), (0.0,))


def threshold(threshold: float, value: float) -> ActivationFacts:
    """``t`` above ``threshold``, ``value`` else: it jumps by ``|threshold - value|`` unless
    ``value == threshold``, when it is ``max(t, threshold)``."""
    if value != threshold:
        raise ValueError(f"Threshold(threshold={threshold:g}, value={value:g}) jumps by {abs(threshold - value):g} "
                         f"at {threshold:g}: it is discontinuous, no finite Lipschitz constant holds")
    return _pwl((threshold,), (0.0, 1.0), (threshold, 0.0))


def thresholded_relu(alpha: float = 1.0) -> ActivationFacts:
    """ONNX ThresholdedRelu: ``t`` above ``alpha``, 0 else; it jumps by ``|alpha|`` unless
    ``alpha == 0`` (ReLU)."""
    if alpha != 0:
        raise ValueError(f"ThresholdedRelu(alpha={alpha:g}) jumps by {abs(alpha):g} at {alpha:g}: it is "
                         "discontinuous, no finite Lipschitz constant holds")
    return relu()


def elu(alpha: float = 1.0) -> ActivationFacts:
    """``t`` for ``t > 0``, ``alpha (e^t - 1)`` else: ``s'(0-) = alpha``, a kink unless ``alpha = 1``."""
    return _smooth((min(0.0, alpha), max(1.0, alpha)), lambda t: torch.where(t > 0, 1.0, alpha * torch.exp(t)),
                   () if alpha == 1.0 else (0.0,))


def celu(alpha: float = 1.0) -> ActivationFacts:
    """``max(0, t) + min(0, alpha (e^{t/alpha} - 1))``: continuously differentiable, slopes in ``[0, 1]``."""
    return _smooth((0.0, 1.0), lambda t: torch.where(t > 0, 1.0, torch.exp(t / alpha)))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def selu(alpha: float = _SELU_ALPHA, scale: float = _SELU_SCALE) -> ActivationFacts:
    """``scale t`` for ``t > 0``, ``scale alpha (e^t - 1)`` else: slopes in the hull of
    ``{0, scale, scale alpha}``, a kink at 0 unless ``alpha = 1``."""
    ends = (0.0, scale, scale * alpha)
    return _smooth((min(ends), max(ends)), lambda t: scale * torch.where(t > 0, 1.0, alpha * torch.exp(t)),
                   () if alpha == 1.0 else (0.0,))


SOFTPLUS_MAX_JUMP = 1e-7  # the largest jump of torch's thresholded Softplus taken for rounding


def softplus(beta: float = 1.0, threshold: float = 20.0) -> ActivationFacts:
    """``log(1 + e^{beta t}) / beta``: smooth, ``s' = sigmoid(beta t)`` in ``[0, 1]``. lipbound
    evaluates this function (:func:`softplus_function`), not torch's, which switches to ``t`` above
    ``threshold / beta``: a jump of ``log(1 + e^{-threshold}) / beta`` that makes torch's function
    discontinuous. A jump above :data:`SOFTPLUS_MAX_JUMP` (2e-9 with the default threshold 20) is
    refused."""
    jump = math.log1p(math.exp(-threshold)) / beta
    if jump > SOFTPLUS_MAX_JUMP:
        raise ValueError(f"Softplus(beta={beta:g}, threshold={threshold:g}) jumps by {jump:.3g} at "
                         f"{threshold / beta:g}: it is discontinuous, no finite Lipschitz constant holds "
                         "(use a threshold of at least 20)")
    return _smooth((0.0, 1.0), lambda t: torch.sigmoid(beta * t))


def softplus_function(beta: float = 1.0, **_: Any) -> Fn:
    """The mathematical softplus ``log(1 + e^{beta t}) / beta``, evaluated stably for every ``t``."""
    return lambda t: torch.logaddexp(beta * t, torch.zeros_like(t)) / beta


def _gelu_derivative(approximate: str) -> Fn:
    """``Phi(t) + t phi(t)``; the tanh form ``(1 + T) / 2 + t (1 - T^2) k (1 + 3 c t^2) / 2`` with
    ``T = tanh(k (t + c t^3))``, ``k = sqrt(2 / pi)``, ``c = 0.044715``."""
    if approximate == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715

        def d(t):
            th = torch.tanh(k * (t + c * t ** 3))
            return 0.5 * (1 + th) + 0.5 * t * (1 - th ** 2) * k * (1 + 3 * c * t ** 2)
        return d
    return lambda t: 0.5 * torch.special.erfc(-t / math.sqrt(2.0)) + t * torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def gelu(approximate: str = "none") -> ActivationFacts:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"GELU: unknown approximate={approximate!r}")
    return _smooth((-0.12900, 1.12900), _gelu_derivative(approximate))


def _mish_derivative(t: torch.Tensor) -> torch.Tensor:
    """``tanh(sp(t)) + t (1 - tanh(sp(t))^2) sigmoid(t)`` with ``sp`` the softplus."""
    th = torch.tanh(F.softplus(t, threshold=math.inf))
    return th + t * (1 - th ** 2) * torch.sigmoid(t)


_CONST_FACTS: dict[str, ActivationFacts] = {
    "Sigmoid": _smooth((0.0, 0.25), lambda t: torch.sigmoid(t) * torch.sigmoid(-t)),
    "Tanh": _smooth((0.0, 1.0), lambda t: 1.0 / torch.cosh(t) ** 2),
    "Softsign": _smooth((0.0, 1.0), lambda t: 1.0 / (1.0 + t.abs()) ** 2),
    "LogSigmoid": _smooth((0.0, 1.0), lambda t: torch.sigmoid(-t)),
    "Tanhshrink": _smooth((0.0, 1.0), lambda t: torch.tanh(t) ** 2),
    "SiLU": _smooth((-0.09984, 1.09984), lambda t: torch.sigmoid(t) * (1 + t * torch.sigmoid(-t))),
    "Mish": _smooth((-0.11253, 1.08850), _mish_derivative),
    # t relu6(t + 3) / 6: s' = 0, (2t + 3) / 6, 1 on the three pieces, jumps at -3 and 3
    "Hardswish": _smooth((-0.5, 1.5), lambda t: torch.where(t < -3, 0.0, torch.where(t > 3, 1.0, (2 * t + 3) / 6)),
                         (-3.0, 3.0)),
    "Abs": _pwl((0.0,), (-1.0, 1.0), (0.0, 0.0)),
}


# ---- the registry -------------------------------------------------------------------------------
class OnnxArgs(Protocol):
    """What an ONNX entry reads from its node (the ONNX frontend implements it)."""

    def attr(self, name: str, default: Any) -> Any:
        """The attribute ``name``, or ``default`` when absent."""

    def scalar(self, position: int, what: str, default: float | None) -> float | None:
        """The optional constant scalar input at ``position`` (``default`` when absent)."""

    def tensor(self, position: int, what: str) -> torch.Tensor:
        """The constant input at ``position``, broadcast-aligned to the activation's input per sample."""


class _PReLU(nn.Module):
    """``max(0, t) + w min(0, t)`` with the weight as a buffer (``Graph.to`` moves it)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.weight)


def _no_params(_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ActivationOp:
    """One activation: ``facts(**params)`` and ``function(**params)`` (what lipbound evaluates) from
    its parameters; where the frontends find it and how they read the parameters:

    * torch: an instance of one of ``modules`` (parameters ``module_params(m)``), a call of one of
      ``functions`` (positional arguments after the input bound to ``positional``, then keywords)
      or a Tensor method in ``methods``; the graph evaluates the model's own call unless
      ``replaces_torch`` (Softplus: torch's thresholded form jumps);
    * ONNX: the operator ``onnx`` (parameters ``onnx_params(args)``), labelled ``onnx_label``.
    """

    name: str
    facts: Callable[..., ActivationFacts]
    function: Callable[..., Fn]
    modules: tuple[type[nn.Module], ...] = ()
    module_params: Callable[[nn.Module], dict[str, Any]] = _no_params
    functions: tuple[Any, ...] = ()
    positional: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    onnx: str | None = None
    onnx_params: Callable[[OnnxArgs], dict[str, Any]] = _no_params
    onnx_label: str | None = None
    replaces_torch: bool = False

    def call_params(self, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The parameters of a call ``fn(x, *args, **kwargs)`` by name (``inplace`` dropped).
        Raises ``TypeError`` for extra positional arguments, ``ValueError`` for non-finite ones."""
        if len(args) > len(self.positional):
            raise TypeError(f"{self.name} got {len(args)} extra positional arguments")
        out = dict(zip(self.positional, args))
        out.update(kwargs)
        out.pop("inplace", None)
        if any(isinstance(v, float) and not math.isfinite(v) for v in out.values()):
            raise ValueError(f"{self.name}: parameters must be finite, got {out}")
        return out


def _op(name: str, facts: Callable[..., ActivationFacts], function: Callable[..., Fn], **where: Any) -> ActivationOp:
    return ActivationOp(name, facts, function, **where)


def _fixed(fn: Fn) -> Callable[..., Fn]:
    return lambda **_: fn


def _clamp(min_val: float | None = -1.0, max_val: float | None = 1.0) -> Fn:
    if min_val is None and max_val is None:
        return lambda x: x
    return lambda x: torch.clamp(x, min_val, max_val)


_ENTRIES = (
    _op("ReLU", relu, _fixed(torch.relu), modules=(nn.ReLU,), functions=(F.relu, torch.relu), positional=("inplace",),
        methods=("relu",), onnx="Relu"),
    _op("ReLU6", lambda: hardtanh(0.0, 6.0), _fixed(F.relu6), modules=(nn.ReLU6,), functions=(F.relu6,),
        positional=("inplace",)),
    _op("LeakyReLU", leaky_relu, lambda negative_slope=0.01: lambda x: F.leaky_relu(x, negative_slope),
        modules=(nn.LeakyReLU,), module_params=lambda m: {"negative_slope": m.negative_slope},
        functions=(F.leaky_relu,), positional=("negative_slope", "inplace"),
        onnx="LeakyRelu", onnx_params=lambda a: {"negative_slope": float(a.attr("alpha", 0.01))}),
    _op("RReLU", rrelu, lambda lower=1 / 8, upper=1 / 3, training=False: lambda x: F.leaky_relu(x, (lower + upper) / 2),
        modules=(nn.RReLU,), module_params=lambda m: {"lower": m.lower, "upper": m.upper, "training": m.training},
        functions=(F.rrelu,), positional=("lower", "upper", "training", "inplace")),
    _op("PReLU", prelu, lambda weight: _PReLU(weight), modules=(nn.PReLU,), module_params=lambda m: {"weight": m.weight},
        onnx="PRelu", onnx_params=lambda a: {"weight": a.tensor(1, "slope")}),
    _op("ELU", elu, lambda alpha=1.0: lambda x: F.elu(x, alpha), modules=(nn.ELU,),
        module_params=lambda m: {"alpha": m.alpha}, functions=(F.elu,), positional=("alpha", "inplace"),
        onnx="Elu", onnx_params=lambda a: {"alpha": float(a.attr("alpha", 1.0))}),
    _op("CELU", celu, lambda alpha=1.0: lambda x: F.celu(x, alpha), modules=(nn.CELU,),
        module_params=lambda m: {"alpha": m.alpha}, functions=(F.celu,), positional=("alpha", "inplace"),
        onnx="Celu", onnx_params=lambda a: {"alpha": float(a.attr("alpha", 1.0))}),
    _op("SELU", selu, lambda alpha=_SELU_ALPHA, scale=_SELU_SCALE:
        lambda x: scale * torch.where(x > 0, x, alpha * torch.expm1(x)),
        modules=(nn.SELU,), functions=(F.selu, torch.selu), positional=("inplace",), onnx="Selu",
        onnx_params=lambda a: {"alpha": float(a.attr("alpha", 1.67326319217681884765625)),
                               "scale": float(a.attr("gamma", 1.05070102214813232421875))}),
    _op("Sigmoid", lambda: _CONST_FACTS["Sigmoid"], _fixed(torch.sigmoid), modules=(nn.Sigmoid,),
        functions=(torch.sigmoid, F.sigmoid), methods=("sigmoid",), onnx="Sigmoid"),
    _op("Hardsigmoid", hard_sigmoid, lambda alpha=1 / 6, beta=0.5: lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0),
        modules=(nn.Hardsigmoid,), functions=(F.hardsigmoid,), positional=("inplace",), onnx="HardSigmoid",
        onnx_params=lambda a: {"alpha": float(a.attr("alpha", 0.2)), "beta": float(a.attr("beta", 0.5))},
        onnx_label="HardSigmoid"),
    _op("Tanh", lambda: _CONST_FACTS["Tanh"], _fixed(torch.tanh), modules=(nn.Tanh,), functions=(torch.tanh, F.tanh),
        methods=("tanh",), onnx="Tanh"),
    _op("Hardtanh", hardtanh, _clamp, modules=(nn.Hardtanh,),
        module_params=lambda m: {"min_val": m.min_val, "max_val": m.max_val}, functions=(F.hardtanh,),
        positional=("min_val", "max_val", "inplace"), onnx="Clip", onnx_label="Clip",
        onnx_params=lambda a: {"min_val": a.scalar(1, "min", a.attr("min", None)),
                               "max_val": a.scalar(2, "max", a.attr("max", None))}),
    _op("Softsign", lambda: _CONST_FACTS["Softsign"], _fixed(F.softsign), modules=(nn.Softsign,),
        functions=(F.softsign,), onnx="Softsign"),
    # ONNX Softplus is log(1 + e^x) exactly; torch's switches to x above threshold / beta
    _op("Softplus", softplus, softplus_function, modules=(nn.Softplus,),
        module_params=lambda m: {"beta": m.beta, "threshold": m.threshold}, functions=(F.softplus,),
        positional=("beta", "threshold"), onnx="Softplus", replaces_torch=True),
    _op("LogSigmoid", lambda: _CONST_FACTS["LogSigmoid"], _fixed(F.logsigmoid), modules=(nn.LogSigmoid,),
        functions=(F.logsigmoid,)),
    _op("Tanhshrink", lambda: _CONST_FACTS["Tanhshrink"], _fixed(F.tanhshrink), modules=(nn.Tanhshrink,),
        functions=(F.tanhshrink,)),
    _op("Softshrink", lambda lambd=0.5, bias=None: shrink(lambd if bias is None else bias, lambd),
        lambda lambd=0.5, bias=None: lambda x: F.softshrink(x, lambd), modules=(nn.Softshrink,),
        module_params=lambda m: {"lambd": m.lambd}, functions=(F.softshrink,), positional=("lambd",), onnx="Shrink",
        onnx_params=lambda a: {"lambd": float(a.attr("lambd", 0.5)), "bias": float(a.attr("bias", 0.0))},
        onnx_label="Shrink"),
    _op("Hardshrink", hardshrink, lambda lambd=0.5: lambda x: F.hardshrink(x, lambd), modules=(nn.Hardshrink,),
        module_params=lambda m: {"lambd": m.lambd}, functions=(F.hardshrink,), positional=("lambd",)),
    _op("Threshold", threshold, lambda threshold, value: lambda x: F.threshold(x, threshold, value),
        modules=(nn.Threshold,), module_params=lambda m: {"threshold": m.threshold, "value": m.value},
        functions=(F.threshold,), positional=("threshold", "value", "inplace")),
    _op("ThresholdedRelu", thresholded_relu, lambda alpha=1.0: lambda x: torch.where(x > alpha, x, 0.0),
        onnx="ThresholdedRelu", onnx_params=lambda a: {"alpha": float(a.attr("alpha", 1.0))}),
    _op("GELU", gelu, lambda approximate="none": lambda x: F.gelu(x, approximate=approximate), modules=(nn.GELU,),
        module_params=lambda m: {"approximate": m.approximate}, functions=(F.gelu,), onnx="Gelu",
        onnx_params=lambda a: {"approximate": a.attr("approximate", "none")}),
    _op("SiLU", lambda: _CONST_FACTS["SiLU"], _fixed(F.silu), modules=(nn.SiLU,), functions=(F.silu,),
        positional=("inplace",)),
    _op("Mish", lambda: _CONST_FACTS["Mish"], _fixed(F.mish), modules=(nn.Mish,), functions=(F.mish,),
        positional=("inplace",), onnx="Mish"),
    _op("Hardswish", lambda: _CONST_FACTS["Hardswish"], _fixed(F.hardswish), modules=(nn.Hardswish,),
        functions=(F.hardswish,), positional=("inplace",), onnx="HardSwish"),
    _op("Abs", lambda: _CONST_FACTS["Abs"], _fixed(torch.abs), functions=(torch.abs,), methods=("abs",), onnx="Abs"),
)


def _index(key: Callable[[ActivationOp], Sequence[Any]]) -> dict[Any, ActivationOp]:
    out: dict[Any, ActivationOp] = {}
    for op in _ENTRIES:
        for k in key(op):
            if k in out:
                raise RuntimeError(f"{k!r} is registered by both {out[k].name} and {op.name}")
            out[k] = op
    return out


REGISTRY: dict[str, ActivationOp] = _index(lambda op: (op.name,))
MODULES: dict[type[nn.Module], ActivationOp] = _index(lambda op: op.modules)
FUNCTIONS: dict[Any, ActivationOp] = _index(lambda op: op.functions)
METHODS: dict[str, ActivationOp] = _index(lambda op: op.methods)
ONNX: dict[str, ActivationOp] = _index(lambda op: (op.onnx,) if op.onnx else ())
