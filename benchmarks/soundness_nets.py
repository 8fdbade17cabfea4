"""Random networks and independent oracles for the soundness fuzz (``benchmarks/soundness.py``).

Nothing in this module imports lipbound: the networks are plain ``nn.Module`` objects, and every
fact the oracles use (where an activation has a kink, its linear pieces) is written here from the
activation's definition, a second time, so that a wrong fact in lipbound cannot hide itself.

* :func:`make_case` builds net ``index`` of run ``seed`` (same arguments, same net): mixed layers,
  every registered activation (:data:`ACTIVATIONS`), varied weight and bias scales, tiny
  piecewise-linear nets with thin slabs, with or without a box domain.
* :func:`lower_oracle` is a lower bound of the Lipschitz constant (L2 -> L2) of the module on the
  domain, from float64 Jacobian norms at sampled points that sit off every kink, pair quotients
  minus a rounding margin, a pair ascent and pairs straddling kinks.
* :func:`region_bound` enumerates the linear regions of a tiny piecewise-linear MLP with LPs
  (scipy's HiGHS): the largest Jacobian over the regions it cannot prove empty is an upper
  bound of the constant; the centres of the regions are points for the lower oracle.
* :func:`recheck_witness` re-checks a lipbound witness on the module.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linprog
from torch import nn

#: A Jacobian point is off the kinks when every activation input ``z`` of a layer satisfies
#: ``|z - k| > KINK_RTOL * (1 + max |z|)`` for every kink ``k`` (and likewise for max-pool ties):
#: thousands of float64 rounding errors.
KINK_RTOL = 1e-12
#: Largest Jacobian (outputs x inputs) materialised; larger ones get a power method.
MAX_JACOBIAN = 4096
#: Rounding margin of a pair quotient: ``||f(x) - f(y)||`` is lowered by
#: ``PAIR_RTOL * (1 + M_x + M_y) * layers`` with ``M`` the largest magnitude of any layer's input or
#: output (a generous bound of float64's accumulated error on these small nets).
PAIR_RTOL = 1e-10


# ---------------------------------------------------------------------------------------------
# Activations, each with its kinks and (when piecewise linear) its pieces, from its definition
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pieces:
    """``s(t) = slopes[k] t + offsets[k]`` for ``t`` in ``[breakpoints[k-1], breakpoints[k]]``."""

    breakpoints: tuple[float, ...]
    slopes: tuple[float, ...]
    offsets: tuple[float, ...]

    def intervals(self) -> list[tuple[float, float, float, float]]:
        """``(low, high, slope, offset)`` of each piece (``low``/``high`` may be infinite)."""
        ends = (-math.inf, *self.breakpoints, math.inf)
        return [(ends[k], ends[k + 1], self.slopes[k], self.offsets[k]) for k in range(len(self.slopes))]


@dataclass(frozen=True)
class ActInfo:
    """``kinks``: inputs where the activation is not continuously differentiable (or not
    continuous); ``pieces``: its linear pieces when it is piecewise linear with scalar parameters."""

    kinks: tuple[float, ...] = ()
    pieces: Pieces | None = None


def _pwl(breakpoints: Sequence[float], slopes: Sequence[float], offsets: Sequence[float]) -> ActInfo:
    kinks = tuple(float(b) for k, b in enumerate(breakpoints) if slopes[k] != slopes[k + 1])
    return ActInfo(kinks, Pieces(tuple(map(float, breakpoints)), tuple(map(float, slopes)), tuple(map(float, offsets))))


def _relu() -> ActInfo:
    return _pwl((0,), (0, 1), (0, 0))


def _leaky(alpha: float) -> ActInfo:
    return _pwl((0,), (alpha, 1), (0, 0))


def _hardtanh(lo: float, hi: float) -> ActInfo:
    return _pwl((lo, hi), (0, 1, 0), (lo, 0, hi))


_HARDSIGMOID = _pwl((-3, 3), (0, 1 / 6, 0), (0, 0.5, 1))
_SMOOTH = ActInfo()


class Fn(nn.Module):
    """An activation called in its functional form, ``fn(x, *args, **kwargs)``."""

    def __init__(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        return f"{getattr(self.fn, '__module__', '')}.{getattr(self.fn, '__name__', self.fn)}{self.args}{self.kwargs}"


class TensorMethod(nn.Module):
    """An activation called as a tensor method, ``x.name()``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(x, self.name)()

    def extra_repr(self) -> str:
        return f"x.{self.name}()"


class Rng:
    """Seeded choices (``random.Random``) and tensors (``torch.Generator``) of one net."""

    def __init__(self, seed: int, index: int) -> None:
        self.py = random.Random(f"lipbound-soundness:{seed}:{index}")
        self.torch = torch.Generator().manual_seed(self.py.getrandbits(62))

    def choice(self, seq: Sequence) -> Any:
        return seq[self.py.randrange(len(seq))]

    def chance(self, p: float) -> bool:
        return self.py.random() < p

    def int(self, lo: int, hi: int) -> int:
        return self.py.randint(lo, hi)

    def uniform(self, lo: float, hi: float) -> float:
        return self.py.uniform(lo, hi)

    def logu(self, lo: float, hi: float) -> float:
        return math.exp(self.py.uniform(math.log(lo), math.log(hi)))

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.torch, dtype=torch.float64)


ActBuilder = Callable[[Rng, int], tuple[nn.Module, ActInfo]]


def _prelu(r: Rng, channels: int) -> tuple[nn.Module, ActInfo]:
    per_channel = channels > 1 and r.chance(0.4)
    m = nn.PReLU(channels if per_channel else 1)
    with torch.no_grad():
        if per_channel:
            m.weight.copy_(r.normal(channels) * 0.7)
        else:
            m.weight.fill_(r.choice((0.25, -0.3, 0.0, 1.5, -1.0)))
    w = float(m.weight.detach()[0])
    return m, (_leaky(w) if not per_channel else ActInfo((0.0,)))


def _hardtanh_bounds(r: Rng) -> tuple[float, float]:
    m = r.choice((3.0, 4.0, 5.0, 10.0))
    return r.choice(((-1.0, 1.0), (-m, m), (-m, m), (-2.0, 0.5), (0.0, m)))


def _softplus_args(r: Rng) -> tuple[float, float]:
    return r.choice((1.0, 2.0, 0.5)), r.choice((20.0, 5.0, 2.0))


def _catalogue() -> dict[Any, ActBuilder]:
    """The activations, keyed by the object lipbound's registry knows them by (module class,
    function, or tensor-method name): ``builder(rng, channels) -> (module, ActInfo)``."""
    c: dict[Any, ActBuilder] = {
        nn.ReLU: lambda r, ch: (nn.ReLU(), _relu()),
        nn.ReLU6: lambda r, ch: (nn.ReLU6(), _hardtanh(0.0, 6.0)),
        nn.PReLU: _prelu,
        nn.Sigmoid: lambda r, ch: (nn.Sigmoid(), _SMOOTH),
        nn.Hardsigmoid: lambda r, ch: (nn.Hardsigmoid(), _HARDSIGMOID),
        nn.Tanh: lambda r, ch: (nn.Tanh(), _SMOOTH),
        nn.Softsign: lambda r, ch: (nn.Softsign(), _SMOOTH),
        nn.LogSigmoid: lambda r, ch: (nn.LogSigmoid(), _SMOOTH),
        nn.Tanhshrink: lambda r, ch: (nn.Tanhshrink(), _SMOOTH),
        nn.SiLU: lambda r, ch: (nn.SiLU(), _SMOOTH),
        nn.Mish: lambda r, ch: (nn.Mish(), _SMOOTH),
        nn.SELU: lambda r, ch: (nn.SELU(), ActInfo((0.0,))),  # s'(0-) = scale * alpha != scale
        nn.Hardswish: lambda r, ch: (nn.Hardswish(), ActInfo((-3.0, 3.0))),  # t relu6(t + 3) / 6
        F.relu: lambda r, ch: (Fn(F.relu), _relu()),
        torch.relu: lambda r, ch: (Fn(torch.relu), _relu()),
        F.relu6: lambda r, ch: (Fn(F.relu6), _hardtanh(0.0, 6.0)),
        F.selu: lambda r, ch: (Fn(F.selu), ActInfo((0.0,))),
        torch.selu: lambda r, ch: (Fn(torch.selu), ActInfo((0.0,))),
        torch.sigmoid: lambda r, ch: (Fn(torch.sigmoid), _SMOOTH),
        F.sigmoid: lambda r, ch: (Fn(F.sigmoid), _SMOOTH),
        F.hardsigmoid: lambda r, ch: (Fn(F.hardsigmoid), _HARDSIGMOID),
        torch.tanh: lambda r, ch: (Fn(torch.tanh), _SMOOTH),
        F.tanh: lambda r, ch: (Fn(F.tanh), _SMOOTH),
        F.softsign: lambda r, ch: (Fn(F.softsign), _SMOOTH),
        F.logsigmoid: lambda r, ch: (Fn(F.logsigmoid), _SMOOTH),
        F.tanhshrink: lambda r, ch: (Fn(F.tanhshrink), _SMOOTH),
        F.silu: lambda r, ch: (Fn(F.silu), _SMOOTH),
        F.mish: lambda r, ch: (Fn(F.mish), _SMOOTH),
        F.hardswish: lambda r, ch: (Fn(F.hardswish), ActInfo((-3.0, 3.0))),
        "relu": lambda r, ch: (TensorMethod("relu"), _relu()),
        "sigmoid": lambda r, ch: (TensorMethod("sigmoid"), _SMOOTH),
        "tanh": lambda r, ch: (TensorMethod("tanh"), _SMOOTH),
    }

    def leaky(r: Rng, ch: int, functional: bool) -> tuple[nn.Module, ActInfo]:
        a = r.choice((0.01, 0.2, -0.5, 2.0))
        if not functional:
            return nn.LeakyReLU(a), _leaky(a)
        return (Fn(F.leaky_relu, a) if r.chance(0.5) else Fn(F.leaky_relu, negative_slope=a)), _leaky(a)

    def hardtanh(r: Rng, ch: int, functional: bool) -> tuple[nn.Module, ActInfo]:
        lo, hi = _hardtanh_bounds(r)
        if not functional:
            return nn.Hardtanh(lo, hi), _hardtanh(lo, hi)
        return (Fn(F.hardtanh, lo, hi) if r.chance(0.5) else Fn(F.hardtanh, min_val=lo, max_val=hi)), _hardtanh(lo, hi)

    def elu(r: Rng, ch: int, functional: bool, celu: bool) -> tuple[nn.Module, ActInfo]:
        a = r.choice((1.0, 0.5, 2.0))
        # ELU: s'(0-) = alpha, a kink unless alpha = 1; CELU: s'(0-) = 1, continuously differentiable
        info = ActInfo() if celu or a == 1.0 else ActInfo((0.0,))
        if not functional:
            return (nn.CELU(a) if celu else nn.ELU(a)), info
        return Fn(F.celu if celu else F.elu, alpha=a), info

    def softplus(r: Rng, ch: int, functional: bool) -> tuple[nn.Module, ActInfo]:
        beta, threshold = _softplus_args(r)
        # torch switches to the identity for beta t > threshold, a jump of log(1 + e^-threshold) / beta:
        # lipbound refuses it above 1e-7 and otherwise bounds (and evaluates) the smooth softplus
        info = ActInfo() if math.log1p(math.exp(-threshold)) / beta <= 1e-7 else ActInfo((threshold / beta,))
        if not functional:
            return nn.Softplus(beta, threshold), info
        return (Fn(F.softplus, beta, threshold) if r.chance(0.5) else Fn(F.softplus, beta=beta, threshold=threshold)), info

    def gelu(r: Rng, ch: int, functional: bool) -> tuple[nn.Module, ActInfo]:
        approximate = r.choice(("none", "tanh"))
        return (Fn(F.gelu, approximate=approximate) if functional else nn.GELU(approximate)), _SMOOTH

    for module, function, build in ((nn.LeakyReLU, F.leaky_relu, leaky), (nn.Hardtanh, F.hardtanh, hardtanh),
                                    (nn.Softplus, F.softplus, softplus), (nn.GELU, F.gelu, gelu)):
        c[module] = lambda r, ch, b=build: b(r, ch, False)
        c[function] = lambda r, ch, b=build: b(r, ch, True)
    def shrink(r: Rng, ch: int, kind: str) -> tuple[nn.Module, ActInfo]:
        lam = r.choice((0.5, 1.0))  # lambd = 0 is the identity, whose torch derivative at 0 is 0: not drawn
        if kind == "soft":  # continuous: t + lam, 0, t - lam
            info = _pwl((-lam, lam), (1, 0, 1), (lam, 0, -lam))
            return (nn.Softshrink(lam) if r.chance(0.5) else Fn(F.softshrink, lam)), info
        info = ActInfo((-lam, lam))  # hardshrink jumps at +-lam: refused
        return (nn.Hardshrink(lam) if r.chance(0.5) else Fn(torch.hardshrink, lam)), info

    def threshold(r: Rng, ch: int, functional: bool) -> tuple[nn.Module, ActInfo]:
        th = r.choice((0.0, 0.5, -1.0))
        value = th if r.chance(0.8) else th - 1.0  # value != threshold jumps: refused
        info = _pwl((th,), (0, 1), (th, 0)) if value == th else ActInfo((th,))
        return (Fn(F.threshold, th, value) if functional else nn.Threshold(th, value)), info

    def rrelu(r: Rng, ch: int, functional: bool) -> tuple[nn.Module, ActInfo]:
        lower, upper = r.choice(((1 / 8, 1 / 3), (0.1, 0.3), (0.0, 0.5)))
        info = _leaky((lower + upper) / 2)  # eval mode: the mean slope
        return (Fn(F.rrelu, lower, upper) if functional else nn.RReLU(lower, upper).eval()), info

    c[nn.Softshrink] = lambda r, ch: shrink(r, ch, "soft")
    c[F.softshrink] = lambda r, ch: shrink(r, ch, "soft")
    c[nn.Hardshrink] = lambda r, ch: shrink(r, ch, "hard")
    c[torch.hardshrink] = lambda r, ch: shrink(r, ch, "hard")
    c[nn.Threshold] = lambda r, ch: threshold(r, ch, False)
    c[F.threshold] = lambda r, ch: threshold(r, ch, True)
    c[nn.RReLU] = lambda r, ch: rrelu(r, ch, False)
    c[F.rrelu] = lambda r, ch: rrelu(r, ch, True)
    c[torch.abs] = lambda r, ch: (Fn(torch.abs), _pwl((0,), (-1, 1), (0, 0)))
    c["abs"] = lambda r, ch: (TensorMethod("abs"), _pwl((0,), (-1, 1), (0, 0)))
    c[nn.ELU] = lambda r, ch: elu(r, ch, False, False)
    c[F.elu] = lambda r, ch: elu(r, ch, True, False)
    c[nn.CELU] = lambda r, ch: elu(r, ch, False, True)
    c[F.celu] = lambda r, ch: elu(r, ch, True, True)
    return c


#: Every activation the fuzz draws, keyed like lipbound's registry (``MODULES``, ``FUNCTIONS``, ``METHODS``).
ACTIVATIONS: dict[Any, ActBuilder] = _catalogue()
#: The piecewise-linear ones (for the tiny nets whose regions :func:`region_bound` enumerates).
PIECEWISE_LINEAR: tuple[Any, ...] = (nn.ReLU, nn.ReLU, nn.ReLU, F.relu, "relu", nn.LeakyReLU, F.leaky_relu,
                                     nn.PReLU, nn.ReLU6, F.relu6, nn.Hardtanh, F.hardtanh, nn.Hardsigmoid)
ACTIVATION_KEYS: tuple[Any, ...] = tuple(ACTIVATIONS)


def key_name(key: Any) -> str:
    if isinstance(key, str):
        return f"x.{key}()"
    if isinstance(key, type):
        return f"nn.{key.__name__}"
    return f"{'F' if key.__module__ == 'torch.nn.functional' else 'torch'}.{key.__name__}"


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Branches(nn.Module):
    """``torch.cat([a(x), b(x)], dim=1)`` or ``a(x) + b(x)``."""

    def __init__(self, a: nn.Module, b: nn.Module, how: str) -> None:
        super().__init__()
        self.a, self.b, self.how = a, b, how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1) if self.how == "cat" else self.a(x) + self.b(x)

    def extra_repr(self) -> str:
        return self.how


@dataclass
class Case:
    """One fuzz network. ``acts``: module path -> :class:`ActInfo` of every activation module;
    ``domain``: ``None`` (all of ``R^n``) or ``(low, high)``; ``mlp``: for tiny piecewise-linear
    MLPs, the layers ``(W, b, pieces of the activation after it or None)`` for :func:`region_bound`."""

    seed: int
    index: int
    family: str
    module: nn.Module
    input_shape: tuple[int, ...]
    domain: tuple[float, float] | None
    acts: dict[str, ActInfo]
    mlp: list[tuple[torch.Tensor, torch.Tensor, Pieces | None]] | None = None
    notes: list[str] = field(default_factory=list)
    dtype: torch.dtype = torch.float64  # of the module's parameters (and of its inputs)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    def offset_free(self) -> Case | None:
        """The case with its output offset ``c`` (:func:`_finish`) taken back out of the last bias,
        or None without one. ``b - c`` is exact (Sterbenz: ``b = fl(b0 + c)`` lies within a factor
        2 of ``c``), so the twin's exact outputs are ``f - c``: the same differences
        ``f(x) - f(y)``, evaluated in float64 without the rounding of the large outputs."""
        module = copy.deepcopy(self.module)
        layers = [m for m in module.modules() if hasattr(m, "fuzz_output_offset")]
        if not layers:
            return None
        with torch.no_grad():
            layers[0].bias.sub_(layers[0].fuzz_output_offset)
        return replace(self, module=module)

    def describe(self) -> str:
        """A one-line description of the net (the reproducer is ``make_case(seed, index)``)."""
        dom = "R^n" if self.domain is None else f"box[{self.domain[0]:.3g},{self.domain[1]:.3g}]"
        extra = f" [{'; '.join(self.notes)}]" if self.notes else ""
        return (f"{self.family} in={self.input_shape} {dom} {str(self.dtype)[6:]}{extra}: "
                + _structure(self.module))


def _structure(m: nn.Module) -> str:
    """``a > b > ...`` for a Sequential, ``x + (...)`` for a residual, ``cat(..., ...)``."""
    if isinstance(m, nn.Sequential):
        return " > ".join(_structure(c) for c in m)
    if isinstance(m, Residual):
        return f"x + ({_structure(m.body)})"
    if isinstance(m, Branches):
        return f"{m.how}({_structure(m.a)}, {_structure(m.b)})"
    return f"{type(m).__name__}({m.extra_repr()})"


def _scale_layer(layer: nn.Module, r: Rng, weight_scale: float, bias_scale: float) -> None:
    with torch.no_grad():
        if getattr(layer, "weight", None) is not None:
            layer.weight.mul_(weight_scale * r.logu(0.5, 2.0))
        if getattr(layer, "bias", None) is not None:
            layer.bias.copy_(r.normal(*layer.bias.shape) * bias_scale)


class _Builder:
    """Grows a ``Sequential`` layer by layer, tracking the output shape with a dummy forward."""

    MAX_NUMEL = 160

    def __init__(self, r: Rng, shape: tuple[int, ...], weight_scale: float, bias_scale: float) -> None:
        self.r, self.shape = r, shape
        self.weight_scale, self.bias_scale = weight_scale, bias_scale
        self.layers: list[nn.Module] = []
        self.acts: list[tuple[nn.Module, ActInfo]] = []

    def try_add(self, layer: nn.Module, info: ActInfo | None = None) -> bool:
        """Append ``layer`` when it runs on the current shape and keeps the size in range."""
        try:
            with torch.no_grad():
                out = layer.double()(torch.zeros(2, *self.shape, dtype=torch.float64))
        except (RuntimeError, ValueError):
            return False
        if out.numel() // 2 > self.MAX_NUMEL or out.numel() == 0:
            return False
        self.layers.append(layer)
        self.shape = tuple(out.shape[1:])
        if info is not None:
            self.acts.append((layer, info))
        return True

    def affine(self, layer: nn.Module) -> bool:
        _scale_layer(layer, self.r, self.weight_scale, self.bias_scale)
        return self.try_add(layer)

    def activation(self, key: Any | None = None) -> None:
        key = self.r.choice(ACTIVATION_KEYS) if key is None else key
        # channels for a per-channel PReLU (axis 1); an activation on the raw input gets one weight
        module, info = ACTIVATIONS[key](self.r, self.shape[0] if len(self.shape) > 1 or self.layers else 1)
        self.try_add(module, info)


def _conv_layer(b: _Builder, dims: int) -> bool:
    r, ch = b.r, b.shape[0]
    conv, tconv = (nn.Conv1d, nn.ConvTranspose1d) if dims == 1 else (nn.Conv2d, nn.ConvTranspose2d)
    out = r.int(1, 4)
    groups = r.choice([g for g in (1, 2, 3) if ch % g == 0 and out % g == 0])
    k, stride, dil = r.int(1, 3), r.choice((1, 1, 2)), r.choice((1, 1, 2))
    if r.chance(0.25):
        pad = r.int(0, 1)
        return b.affine(tconv(ch, out, k + 1, stride=stride, padding=pad, dilation=dil, groups=groups,
                              output_padding=r.int(0, max(stride, dil) - 1), bias=r.chance(0.8)))
    mode = r.choice(("zeros", "zeros", "circular", "reflect", "replicate"))
    return b.affine(conv(ch, out, k, stride=stride, padding=r.int(0 if mode == "zeros" else 1, 2), dilation=dil,
                         groups=groups, padding_mode=mode, bias=r.chance(0.8)))


def _batchnorm(b: _Builder, dims: int) -> bool:
    r = b.r
    bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(b.shape[0], affine=r.chance(0.7))
    with torch.no_grad():
        bn.running_mean.copy_(r.normal(b.shape[0]) * b.bias_scale)
        bn.running_var.copy_(torch.tensor([r.logu(0.05, 10.0) for _ in range(b.shape[0])]))
        if bn.affine:
            bn.weight.copy_(r.normal(b.shape[0]) * b.weight_scale)
            bn.bias.copy_(r.normal(b.shape[0]) * b.bias_scale)
    return b.try_add(bn.eval())


def _pool(b: _Builder, dims: int) -> bool:
    r = b.r
    k = r.int(2, 3)
    stride = r.int(1, k)  # stride < kernel: overlapping windows
    pad = r.int(0, k // 2)
    if r.chance(0.5):
        pool = (nn.MaxPool1d if dims == 1 else nn.MaxPool2d)(k, stride, padding=pad)
    else:
        pool = (nn.AvgPool1d if dims == 1 else nn.AvgPool2d)(k, stride, padding=pad, count_include_pad=r.chance(0.5))
    return b.try_add(pool)


def _resample(b: _Builder, dims: int) -> bool:
    r = b.r
    modes = ("nearest", "linear", "area", "nearest-exact") if dims == 1 else \
        ("nearest", "bilinear", "bicubic", "bicubic", "area", "nearest-exact")
    mode = r.choice(modes)
    spatial = b.shape[1:]
    if r.chance(0.5) or mode == "area":
        size = tuple(max(1, int(s * r.choice((0.5, 0.75, 1.5, 2.0)))) for s in spatial)
        kwargs: dict[str, Any] = {"size": size if dims == 2 else size[0]}
    else:
        kwargs = {"scale_factor": r.choice((2.0, 1.5, 0.5))}
    if mode in ("linear", "bilinear", "bicubic"):
        kwargs["align_corners"] = r.chance(0.5)
    layer = nn.Upsample(mode=mode, **kwargs) if r.chance(0.5) else Fn(F.interpolate, mode=mode, **kwargs)
    return b.try_add(layer)


def _dense_head(b: _Builder, outputs: int) -> None:
    if len(b.shape) > 1:
        b.try_add(nn.Flatten())
    if b.r.chance(0.4):
        b.affine(nn.Linear(b.shape[0], b.r.int(2, 6)))
        b.activation()
    b.affine(nn.Linear(b.shape[0], outputs))


def _finish(b: _Builder, r: Rng) -> list[str]:
    """Optionally a large output offset on the last layer (pairs must carry a rounding margin)."""
    notes = []
    last = b.layers[-1]
    if r.chance(0.12) and getattr(last, "bias", None) is not None:
        offset = r.choice((1e3, 1e6, 1e9)) * r.choice((1.0, -1.0))
        with torch.no_grad():
            last.bias.add_(offset)
        last.fuzz_output_offset = offset  # read by Case.offset_free
        notes.append(f"output offset {offset:g}")
    return notes


def _mlp(r: Rng) -> tuple[nn.Module, tuple[int, ...], list[tuple[nn.Module, ActInfo]], list[str]]:
    n = r.int(1, 8)
    b = _Builder(r, (n,), r.logu(0.3, 4.0), r.choice((0.0, 0.1, 1.0, 3.0, 10.0)))
    for _ in range(r.int(1, 3)):
        width = r.int(2, 8)
        if r.chance(0.2) and b.shape[0] == width:
            body = _Builder(r, b.shape, b.weight_scale, b.bias_scale)
            body.affine(nn.Linear(width, width))
            body.activation()
            body.affine(nn.Linear(width, width))
            if b.try_add(Residual(nn.Sequential(*body.layers))):
                b.acts += body.acts
        elif r.chance(0.15):
            parts = []
            for _ in range(2):
                branch = _Builder(r, b.shape, b.weight_scale, b.bias_scale)
                branch.affine(nn.Linear(b.shape[0], r.int(1, 4)))
                branch.activation()
                parts.append(branch)
            how = "cat" if parts[0].shape != parts[1].shape or r.chance(0.5) else "add"
            if b.try_add(Branches(nn.Sequential(*parts[0].layers), nn.Sequential(*parts[1].layers), how)):
                b.acts += parts[0].acts + parts[1].acts
        else:
            b.affine(nn.Linear(b.shape[0], width))
        b.activation()
    b.affine(nn.Linear(b.shape[0], r.int(1, 4)))
    return nn.Sequential(*b.layers), (n,), b.acts, _finish(b, r)


def _conv(r: Rng, dims: int) -> tuple[nn.Module, tuple[int, ...], list[tuple[nn.Module, ActInfo]], list[str]]:
    shape = (r.int(1, 3), r.int(5, 12)) if dims == 1 else (r.int(1, 2), r.int(4, 7), r.int(4, 7))
    b = _Builder(r, shape, r.logu(0.3, 4.0), r.choice((0.0, 0.1, 1.0, 3.0)))
    steps = (_conv_layer, _conv_layer, _batchnorm, _pool, _resample, "act", "act", "residual", "cat")
    for _ in range(r.int(2, 5)):
        step = r.choice(steps)
        if step == "act":
            b.activation()
        elif step in ("residual", "cat"):
            ch = b.shape[0]
            conv = nn.Conv1d if dims == 1 else nn.Conv2d
            body = _Builder(r, b.shape, b.weight_scale, b.bias_scale)
            body.affine(conv(ch, ch if step == "residual" else r.int(1, 3), 3, padding=1,
                             padding_mode=r.choice(("zeros", "circular", "reflect", "replicate"))))
            body.activation()
            block = (Residual(nn.Sequential(*body.layers)) if step == "residual"
                     else Branches(nn.Sequential(*body.layers), nn.Identity(), "cat"))
            if b.try_add(block):
                b.acts += body.acts
        else:
            step(b, dims)
    _dense_head(b, r.int(1, 3))
    return nn.Sequential(*b.layers), shape, b.acts, _finish(b, r)


def _tiny(r: Rng) -> tuple[nn.Module, tuple[int, ...], list[tuple[nn.Module, ActInfo]], list[str],
                          list[tuple[torch.Tensor, torch.Tensor, Pieces | None]]]:
    """A piecewise-linear MLP with 1-4 inputs and at most 8 neurons; sometimes with a thin slab
    (two neurons whose kinks are ``eps`` apart, weighted ``+K`` and ``-K``: slope ``K`` on a slab of
    width ``eps`` only)."""
    n = r.int(1, 4)
    hidden = [r.int(1, 4)] if r.chance(0.6) else [r.int(1, 3), r.int(1, 3)]
    slab = r.chance(0.3) and len(hidden) == 1
    notes = []
    sizes = [n, *hidden, r.int(1, 2)]
    keys = [nn.ReLU if slab else r.choice(PIECEWISE_LINEAR) for _ in hidden]
    wscale, bscale = r.choice((1.0, 1.0, 3.0, 8.0)), r.choice((0.1, 1.0, 3.0))
    linears = [nn.Linear(sizes[i], sizes[i + 1]).double() for i in range(len(sizes) - 1)]
    with torch.no_grad():
        for lin in linears:
            lin.weight.copy_(r.normal(*lin.weight.shape) * wscale)
            lin.bias.copy_(r.normal(*lin.bias.shape) * bscale)
    if slab:
        eps, K = r.choice((1e-3, 1e-6, 1e-9)), r.choice((10.0, 100.0))
        a, c = r.normal(1, n), r.normal(1) * bscale
        first, second = linears[0], linears[1]
        w1 = torch.cat([first.weight.data, a, a])
        b1 = torch.cat([first.bias.data, c, c - eps * a.norm()])
        u = r.normal(second.out_features, 1)
        new1, new2 = nn.Linear(n, w1.shape[0]).double(), nn.Linear(w1.shape[0], second.out_features).double()
        with torch.no_grad():
            new1.weight.copy_(w1), new1.bias.copy_(b1)
            new2.weight.copy_(torch.cat([second.weight.data, K * u, -K * u], dim=1)), new2.bias.copy_(second.bias)
        linears[0], linears[1] = new1, new2
        notes.append(f"slab eps={eps:g} K={K:g}")
    layers: list[nn.Module] = []
    acts = []
    mlp = []
    for i, lin in enumerate(linears):
        layers.append(lin)
        if i < len(keys):
            module, info = ACTIVATIONS[keys[i]](r, 1)
            layers.append(module)
            acts.append((module, info))
            mlp.append((lin.weight.detach().clone(), lin.bias.detach().clone(), info.pieces))
        else:
            mlp.append((lin.weight.detach().clone(), lin.bias.detach().clone(), None))
    return nn.Sequential(*layers), (n,), acts, notes, mlp


def _operator(r: Rng) -> tuple[nn.Module, tuple[int, ...], list[tuple[nn.Module, ActInfo]], list[str]]:
    """One linear operator (resampling, convolution, pooling, batch norm) on a larger input, where
    lipbound bounds it without materialising it; sometimes an activation or a max pool after it."""
    dims = r.choice((1, 2, 2))
    side = r.choice((16, 32, 48, 96))  # bounds of large resampling operators are not materialised
    shape = (r.int(1, 2), r.int(side, 4 * side)) if dims == 1 else (r.int(1, 2), r.int(side // 2, side), r.int(side // 2, side))
    b = _Builder(r, shape, r.logu(0.3, 3.0), r.choice((0.0, 1.0)))
    b.MAX_NUMEL = 40000
    step = r.choice((_resample, _resample, _resample, _conv_layer, _pool, _batchnorm))
    for _ in range(20):
        if step(b, dims):
            break
    if r.chance(0.3):
        b.activation()
    return nn.Sequential(*b.layers), shape, b.acts, []


FAMILIES = ("mlp", "mlp", "tiny", "tiny", "conv1d", "conv2d", "conv2d", "operator")


def make_case(seed: int, index: int, family: str | None = None) -> Case:
    """Net ``index`` of the run with ``seed`` (deterministic). ``family`` forces one of
    :data:`FAMILIES`."""
    r = Rng(seed, index)
    family = family or r.choice(FAMILIES)
    mlp = None
    with torch.random.fork_rng(devices=[]):  # layers' default initialisations draw from the global generator
        torch.manual_seed(r.py.getrandbits(62))
        if family == "tiny":
            module, shape, acts, notes, mlp = _tiny(r)
        elif family == "mlp":
            module, shape, acts, notes = _mlp(r)
        elif family == "operator":
            module, shape, acts, notes = _operator(r)
        else:
            module, shape, acts, notes = _conv(r, 1 if family == "conv1d" else 2)
    domain = None
    if r.chance(0.4):
        low = r.choice((0.0, -1.0, r.uniform(-3.0, 1.0)))
        domain = (low, low + r.choice((1.0, 2.0, r.logu(0.01, 4.0))))
        if mlp is not None and r.chance(0.3):
            notes.append(_kink_on_face(module, mlp, domain, r))
    # float32 weights for a quarter of the nets: lipbound then computes in float32 through them
    dtype = torch.float32 if family != "tiny" and r.chance(0.25) else torch.float64
    module = module.eval().to(dtype)
    names = {id(m): name for name, m in module.named_modules()}
    return Case(seed, index, family, module, shape, domain, {names[id(m)]: info for m, info in acts}, mlp, notes,
                dtype)


def _kink_on_face(module: nn.Sequential, mlp: list, domain: tuple[float, float], r: Rng) -> str:
    """Put the kink of one first-layer neuron exactly on a face of the box: ``z = w (x_j - low)``."""
    first = module[0]
    i, j = r.int(0, first.out_features - 1), r.int(0, first.in_features - 1)
    w = r.choice((1.0, -1.0)) * r.logu(0.5, 4.0)
    pieces = mlp[0][2]
    kink = pieces.breakpoints[0] if pieces is not None and pieces.breakpoints else 0.0
    with torch.no_grad():
        first.weight[i].zero_()
        first.weight[i, j] = w
        first.bias[i] = kink - w * domain[0]  # z = w (x_j - low) + kink
    mlp[0] = (first.weight.detach().clone(), first.bias.detach().clone(), pieces)
    return f"kink of neuron {i} on the face x_{j} = {domain[0]:g}"


# ---------------------------------------------------------------------------------------------
# Evaluation on the module: activation inputs, kinks, Jacobians, pair quotients
# ---------------------------------------------------------------------------------------------
class Probe:
    """The module in float64 with forward hooks that record every activation's and max-pool's
    input and the largest magnitude of every leaf module's input or output."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.module = copy.deepcopy(case.module).double().eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.shape = case.input_shape
        self.box = case.domain
        self.records: list[tuple[str, Any, torch.Tensor]] = []
        self.magnitude: torch.Tensor | None = None
        self.recording = False  # the hooks act only while True (Probe.forward(..., record=True))
        self.leaves = 0
        for name, m in self.module.named_modules():
            if name in case.acts:
                m.register_forward_hook(lambda mod, inp, out, info=case.acts[name]: self._record(("act", info), inp[0]))
            elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
                m.register_forward_hook(lambda mod, inp, out: self._record(("pool", mod), inp[0]))
            if not list(m.children()):
                self.leaves += 1
                m.register_forward_hook(lambda mod, inp, out: self._magnitude(inp[0], out))

    def _record(self, what: tuple[str, Any], z: torch.Tensor) -> None:
        if self.recording:
            self.records.append((what[0], what[1], z))

    def _magnitude(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        if not self.recording:
            return
        m = torch.maximum(inp.detach().flatten(1).abs().amax(1), out.detach().flatten(1).abs().amax(1))
        self.magnitude = m if self.magnitude is None else torch.maximum(self.magnitude, m)

    def forward(self, x: torch.Tensor, record: bool = False) -> torch.Tensor:
        """``f(x)`` for a batch (float64); with ``record``, the hooks' data is kept in
        ``records`` (activation and max-pool inputs) and ``magnitude``."""
        self.records, self.magnitude, self.recording = [], None, record
        try:
            return self.module(x.reshape(-1, *self.shape)).flatten(1)
        finally:
            self.recording = False

    def off_kinks(self, x: torch.Tensor) -> torch.Tensor:
        """Mask of the points of the batch where every activation input and every max-pool
        window sits off its kinks / ties by more than the margin :data:`KINK_RTOL` (and is
        finite). A kink or tie that persists at a point moved randomly by 1e-7 (relative) is structural (an input
        that does not depend on ``x``, two copies of one value in a window): autograd's choice
        is then the derivative, and it does not count."""
        gen = torch.Generator().manual_seed(0)
        moved = x + 1e-7 * (1.0 + x.abs()) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        with torch.no_grad():
            self.forward(x, record=True)
            here = self.records
            self.forward(moved, record=True)
            there = self.records
        ok = torch.ones(x.shape[0], dtype=torch.bool)
        for (kind, what, z), (_, _, z2) in zip(here, there):
            flat, flat2 = z.flatten(1), z2.flatten(1)
            tol = KINK_RTOL * (1.0 + torch.nan_to_num(flat.abs(), nan=0.0).amax(1, keepdim=True))
            tol2 = KINK_RTOL * (1.0 + torch.nan_to_num(flat2.abs(), nan=0.0).amax(1, keepdim=True))
            ok &= torch.isfinite(flat).all(1)
            if kind == "act":
                for k in what.kinks:
                    ok &= ~(((flat - k).abs() <= tol) & ((flat2 - k).abs() > tol2)).any(1)
            else:
                ok &= ~_pool_ties(what, z, z2, tol, tol2)
        return ok

    def jacobians(self, x: torch.Tensor) -> torch.Tensor:
        """Jacobians ``(B, m, n)`` at a batch of points, one backward pass per output."""
        x = x.detach().reshape(-1, *self.shape).clone().requires_grad_(True)
        out = self.forward(x)
        rows = [torch.autograd.grad(out[:, j].sum(), x, retain_graph=j + 1 < out.shape[1])[0].flatten(1)
                for j in range(out.shape[1])]
        return torch.stack(rows, dim=1)

    def power(self, x: torch.Tensor, iters: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||Df(x) v||, v)`` per point after ``iters`` power iterations on ``J^T J`` (``J v`` by
        forward mode, ``J^T u`` by a backward pass), ``v`` a unit vector: a lower bound of
        ``||Df(x)||_2``, for Jacobians too large to materialise."""
        x = x.detach()
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
        for step in range(iters + 1):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-300).reshape(-1, *[1] * (x.dim() - 1))
            u = torch.func.jvp(self.module, (x,), (v,))[1]
            if step == iters:
                break
            xg = x.clone().requires_grad_(True)
            (v,) = torch.autograd.grad(self.module(xg), xg, u)
        return u.flatten(1).norm(dim=1), v.flatten(1)

    def pair_quotients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(low, value, margin)`` per pair: ``value = ||f(x) - f(y)|| / ||x - y||`` in float64 and
        ``low = (||f(x) - f(y)|| - margin) / ||x - y||``, a lower bound despite rounding."""
        with torch.no_grad():
            fx = self.forward(x, record=True)
            mx = self.magnitude
            fy = self.forward(y, record=True)
            my = self.magnitude
        diff = (fx - fy).norm(dim=1)
        dist = (x - y).flatten(1).norm(dim=1)
        margin = PAIR_RTOL * (1.0 + mx + my) * self.leaves
        low = (diff - margin).clamp_min(0.0) / (dist * (1 + 1e-15))
        return low, diff / dist, margin

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return torch.ones(x.shape[0], dtype=torch.bool)
        flat = x.flatten(1)
        return ((flat >= self.box[0]) & (flat <= self.box[1])).all(1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.box is None else x.clamp(self.box[0], self.box[1])


def _pool_windows(pool: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The max-pool windows of ``z`` as ``(B, C, windows, entries)``, padding as ``-inf``."""
    dims = z.dim() - 2
    k, s, p = (_tuple(getattr(pool, a), dims) for a in ("kernel_size", "stride", "padding"))
    z = F.pad(z, [q for pad in reversed(p) for q in (pad, pad)], value=-math.inf)
    for d in range(dims):
        z = z.unfold(2 + d, k[d], s[d])
    return z.reshape(z.shape[0], z.shape[1], -1, math.prod(k))


def _pool_ties(pool: nn.Module, z: torch.Tensor, z2: torch.Tensor, tol: torch.Tensor,
               tol2: torch.Tensor) -> torch.Tensor:
    """Per sample: some max-pool window of ``z`` has several entries within ``tol`` of its
    maximum that differ (by more than ``tol2``) at the moved point ``z2``."""
    w, w2 = _pool_windows(pool, z), _pool_windows(pool, z2)
    near = w >= w.amax(-1, keepdim=True) - tol[:, :, None, None]
    spread = w2.masked_fill(~near, -math.inf).amax(-1) - w2.masked_fill(~near, math.inf).amin(-1)
    return ((near.sum(-1) > 1) & (spread > tol2[:, :, None])).flatten(1).any(1)


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _Points:
    """Sampling inside the domain: uniform in the box (interior with probability 1) or, on
    ``R^n``, Gaussian at several scales (the kinks of nets with large biases lie far out)."""

    def __init__(self, probe: Probe, gen: torch.Generator) -> None:
        self.probe, self.gen = probe, gen

    def sample(self, n: int) -> torch.Tensor:
        shape = (n, *self.probe.shape)
        if self.probe.box is not None:
            lo, hi = self.probe.box
            return lo + (hi - lo) * torch.rand(shape, generator=self.gen, dtype=torch.float64)
        scales = torch.tensor([0.1, 1.0, 3.0, 10.0, 100.0], dtype=torch.float64)
        pick = scales[torch.randint(0, len(scales), (n,), generator=self.gen)]
        return torch.randn(shape, generator=self.gen, dtype=torch.float64) * pick.reshape(-1, *[1] * len(self.probe.shape))


@dataclass
class Oracle:
    """An independent lower bound of the constant on the domain and how it was reached."""

    value: float = 0.0
    how: str = "none"

    def offer(self, values: torch.Tensor, how: str) -> None:
        values = torch.nan_to_num(values.detach(), nan=0.0, posinf=0.0)
        if values.numel() and float(values.max()) > self.value:
            self.value, self.how = float(values.max()), how


def spectral(j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top singular values and right singular vectors of a batch of matrices (float64 SVD)."""
    _, s, vh = torch.linalg.svd(j, full_matrices=False)
    return s[:, 0], vh[:, 0, :]


def jacobian_oracle(probe: Probe, x: torch.Tensor, oracle: Oracle, how: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offer ``||Df(x)||_2`` at the points of ``x`` inside the domain and off every kink.
    Returns the kept points, their norms and top right singular vectors."""
    keep = probe.inside(x) & probe.off_kinks(x)
    x = x[keep]
    if not len(x):
        return x, torch.zeros(0, dtype=torch.float64), x.flatten(1)
    with torch.no_grad():
        outputs = probe.forward(x[:1]).shape[1]
    if outputs * math.prod(probe.shape) <= MAX_JACOBIAN:
        s, v = spectral(probe.jacobians(x))
    else:
        s, v = probe.power(x)
    oracle.offer(s, how)
    return x, s, v


def lower_oracle(case: Case, *, samples: int = 24, ascent_steps: int = 20, seed: int = 0,
                 extra_points: torch.Tensor | None = None, on_domain: bool = True) -> Oracle:
    """Lower bound of the Lipschitz constant (L2 -> L2) of ``case.module`` on its domain
    (``on_domain``) or on all of ``R^n``, from the module alone:

    1. ``||Df(x)||_2`` (float64 SVD of the autograd Jacobian) at sampled points and at
       ``extra_points``, kept only inside the domain and off every kink (:meth:`Probe.off_kinks`);
    2. pair quotients with the rounding margin (:meth:`Probe.pair_quotients`) along the top
       singular direction at the best points, then improved by normalised gradient steps on the pair (projected into
       the box): a short gradient ascent;
    3. pairs straddling a kink: from the best points, Newton steps move one activation input onto
       its kink, and the pair ``x -/+ d u`` (``u`` the gradient direction of that input, ``d``
       small) crosses it; a discontinuous activation shows there as a huge quotient.
    Every value offered is a valid lower bound, so the result is.
    """
    probe = Probe(case)
    if not on_domain:
        probe.box = None
    gen = torch.Generator().manual_seed(seed)
    pts = _Points(probe, gen)
    oracle = Oracle()
    found = [jacobian_oracle(probe, pts.sample(samples), oracle, "jacobian")]
    if extra_points is not None and len(extra_points):
        found.append(jacobian_oracle(probe, extra_points.to(torch.float64), oracle, "region-centre"))
    x, s, v = (torch.cat(parts) for parts in zip(*found))
    if not len(x):
        return oracle
    top = torch.argsort(s, descending=True)[:4]
    x0, v0 = x[top], v[top].reshape(-1, *probe.shape)
    scale = 1e-3 * (1.0 + x0.flatten(1).norm(dim=1)).reshape(-1, *[1] * len(probe.shape))
    px, py = probe.project(x0 - scale * v0), probe.project(x0 + scale * v0)
    low, _, _ = probe.pair_quotients(px, py)
    oracle.offer(low, "pair")
    if ascent_steps:
        _pair_ascent(probe, px, py, ascent_steps, oracle)
    _kink_pairs(probe, x0, oracle)
    return oracle


def _pair_ascent(probe: Probe, x: torch.Tensor, y: torch.Tensor, steps: int, oracle: Oracle) -> None:
    """Normalised gradient ascent of ``log ||f(x) - f(y)|| - log ||x - y||`` over both points of
    each pair, projected into the box, steps shrinking from a tenth of the pairs' distance."""
    for k in range(steps):
        x, y = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        dist = (x - y).flatten(1).norm(dim=1)
        gain = torch.log((probe.forward(x) - probe.forward(y)).norm(dim=1) + 1e-300) - torch.log(dist + 1e-300)
        gx, gy = torch.autograd.grad(gain.sum(), (x, y))
        with torch.no_grad():
            g = torch.cat([gx.flatten(1), gy.flatten(1)], 1).norm(dim=1).clamp_min(1e-300)
            step = (0.1 * 0.85 ** k * dist / g).reshape(-1, *[1] * (x.dim() - 1))
            x, y = probe.project(x + step * gx), probe.project(y + step * gy)
            x, y = torch.nan_to_num(x), torch.nan_to_num(y)
    with torch.no_grad():
        ok = (x - y).flatten(1).norm(dim=1) > 0
        low, _, _ = probe.pair_quotients(x[ok], y[ok])
    oracle.offer(low, "pair-ascent")


def _kink_pairs(probe: Probe, x0: torch.Tensor, oracle: Oracle, newton: int = 4) -> None:
    """Pairs straddling the kink nearest to each start, for every activation layer and kink."""
    with torch.no_grad():
        probe.forward(x0, record=True)
    targets = [(i, k) for i, (kind, what, _) in enumerate(probe.records) if kind == "act" for k in what.kinks]
    pairs_x, pairs_y = [], []
    for b in range(x0.shape[0] if math.prod(probe.shape) <= 1000 else 1):
        for layer, kink in targets[:12]:
            x = x0[b:b + 1].clone()
            elem = None
            for _ in range(newton):
                x.requires_grad_(True)
                probe.forward(x, record=True)
                z = probe.records[layer][2].flatten()
                if elem is None:
                    elem = int((z.detach() - kink).abs().argmin())
                (g,) = torch.autograd.grad(z[elem], x)
                gn = float(g.norm())
                if not math.isfinite(gn) or gn == 0.0:
                    break
                with torch.no_grad():
                    x = probe.project(x - (float(z[elem]) - kink) * g / gn ** 2)
            if elem is None or not math.isfinite(gn) or gn == 0.0:
                continue
            u = (g / gn).detach()
            for d in (1e-4, 1e-8, 1e-12):
                h = d * (1.0 + float(x.norm()))
                pairs_x.append(probe.project(x.detach() - h * u))
                pairs_y.append(probe.project(x.detach() + h * u))
    if pairs_x:
        px, py = torch.cat(pairs_x), torch.cat(pairs_y)
        ok = (px - py).flatten(1).norm(dim=1) > 0
        low, _, _ = probe.pair_quotients(px[ok], py[ok])
        oracle.offer(low, "kink-pair")


# ---------------------------------------------------------------------------------------------
# Brute force for tiny piecewise-linear MLPs
# ---------------------------------------------------------------------------------------------
@dataclass
class Regions:
    """Result of :func:`region_bound`: ``upper`` (max Jacobian norm over every region not proved
    empty), ``centres`` (LP points of the regions with interior, for the lower oracle),
    and the number of ``regions`` (leaves) kept."""

    upper: float
    centres: torch.Tensor
    regions: int


def exactly_off_kinks(case: Case, x: torch.Tensor) -> bool:
    """Whether every activation input of a tiny piecewise-linear MLP at ``x`` differs from every
    kink of its activation, in exact rational arithmetic (``fractions.Fraction`` on the float64
    weights, biases and ``x``, which are dyadic rationals): off every kink, the pattern is constant
    around ``x`` and autograd's Jacobian is the derivative. It settles the points
    :meth:`Probe.off_kinks` cannot tell apart (closer to a kink than its float64 margin). False when
    the case has no ``mlp`` (no exact evaluation)."""
    if case.mlp is None:
        return False
    h = [Fraction(float(v)) for v in x.reshape(-1)]
    for W, b, pieces in case.mlp:
        z = [sum((Fraction(float(w)) * hj for w, hj in zip(row, h)), Fraction(float(bi)))
             for row, bi in zip(W.tolist(), b.tolist())]
        if pieces is None:
            return True
        kinks = [Fraction(k) for k in pieces.breakpoints]
        if any(zi == k for zi in z for k in kinks):
            return False
        h = [_piece_value(pieces, zi) for zi in z]
    return True


def _piece_value(pieces: Pieces, z: Fraction) -> Fraction:
    """The exact value of a piecewise-linear activation at ``z`` (``z`` off its breakpoints)."""
    k = sum(1 for bp in pieces.breakpoints if z > Fraction(bp))
    return Fraction(pieces.slopes[k]) * z + Fraction(pieces.offsets[k])


def region_bound(case: Case, *, cap: float = 1.0) -> Regions | None:
    """Enumerate the activation patterns (one piece per neuron) of a tiny piecewise-linear MLP,
    depth first, neuron by neuron; a pattern's region ``{x in domain : every pre-activation in
    its piece}`` is pruned only when its LP (maximise the radius ``t`` of a ball inside it) has
    ``t < -1e-9``: regions the LP cannot prove empty are kept, so the largest ``||J_P||_2`` over
    the kept leaves bounds the constant from above. A child that contains its parent's centre
    with room to spare needs no LP. None when the case has no ``mlp``."""
    if case.mlp is None:
        return None
    n = case.n_inputs
    box = case.domain
    best = 0.0
    centres: list[np.ndarray] = []
    leaves = 0

    def lp(rows: list[tuple[np.ndarray, float]]) -> tuple[float, np.ndarray]:
        """max t s.t. a.x + t ||a|| <= c for each (a, c), x in box shrunk by t, t <= cap."""
        a_ub = np.array([np.append(a, np.linalg.norm(a)) for a, _ in rows]).reshape(-1, n + 1)
        b_ub = np.array([c for _, c in rows])
        bounds = [(None, None)] * n + [(-cap, cap)]
        if box is not None:
            extra = np.hstack([np.vstack([np.eye(n), -np.eye(n)]), np.ones((2 * n, 1))])
            a_ub = np.vstack([a_ub, extra])
            b_ub = np.concatenate([b_ub, np.full(n, box[1]), np.full(n, -box[0])])
        res = linprog(np.append(np.zeros(n), -1.0), A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if res.status != 0:
            return (-math.inf if res.status == 2 else math.inf), np.zeros(n)
        return float(res.x[-1]), res.x[:n]

    def descend(layer: int, A: np.ndarray, c: np.ndarray, i: int, d: list[float], off: list[float],
                rows: list[tuple[np.ndarray, float]], centre: np.ndarray, t: float) -> None:
        nonlocal best, leaves
        W, b, pieces = case.mlp[layer]
        if i == 0:
            A, c = W.numpy() @ A, W.numpy() @ c + b.numpy()
        if pieces is None:  # output layer: a leaf
            leaves += 1
            best = max(best, float(np.linalg.norm(A, 2)))
            if t > 0:
                centres.append(centre)
            return
        if i == A.shape[0]:
            D, O = np.array(d), np.array(off)
            descend(layer + 1, D[:, None] * A, D * c + O, 0, [], [], rows, centre, t)
            return
        a, ci = A[i], c[i]
        norm = float(np.linalg.norm(a))
        for lo, hi, slope, offset in pieces.intervals():
            if norm == 0.0:  # constant neuron: the piece holding its value (either one at a kink)
                if lo <= ci <= hi:
                    descend(layer, A, c, i + 1, d + [slope], off + [offset], rows, centre, t)
                    break
                continue
            new = [(-a, ci - lo)] if lo > -math.inf else []
            new += [(a, hi - ci)] if hi < math.inf else []
            z = float(a @ centre + ci)
            room = min(z - lo, hi - z) / norm
            if t > 0 and room > 1e-6 * (1 + abs(z) / norm):  # the parent's centre lies well inside
                descend(layer, A, c, i + 1, d + [slope], off + [offset], rows + new, centre, min(t, room))
                continue
            t_new, x_new = lp(rows + new)
            if t_new >= -1e-9:
                descend(layer, A, c, i + 1, d + [slope], off + [offset], rows + new, x_new, t_new)

    t0, x0 = lp([])
    descend(0, np.eye(n), np.zeros(n), 0, [], [], [], x0, t0)
    pts = torch.tensor(np.array(centres), dtype=torch.float64).reshape(-1, *case.input_shape)
    return Regions(best, pts, leaves)


def grid_points(case: Case, per_axis: int) -> torch.Tensor | None:
    """A regular grid of the box (or of ``[-R, R]^n`` around the first layer's kinks on
    ``R^n``), for nets with 1 or 2 inputs; None otherwise."""
    n = case.n_inputs
    if n > 2:
        return None
    if case.domain is not None:
        lo, hi = case.domain
    else:
        R = 1.0
        if case.mlp is not None:
            W, b, _ = case.mlp[0]
            R = 1.0 + 2.0 * float((b.abs() / W.norm(dim=1).clamp_min(1e-12)).max())
        lo, hi = -R, R
    axis = torch.linspace(lo, hi, per_axis, dtype=torch.float64)
    grid = torch.cartesian_prod(*[axis] * n).reshape(-1, n)
    return grid.reshape(-1, *case.input_shape)


def grid_oracle(case: Case, per_axis: int, oracle: Oracle) -> None:
    """Jacobians at the grid points (off kinks) and pair quotients of grid neighbours."""
    grid = grid_points(case, per_axis)
    if grid is None:
        return
    probe = Probe(case)
    jacobian_oracle(probe, grid, oracle, "grid-jacobian")
    n = case.n_inputs
    g = grid.reshape(*[per_axis] * n, n)
    for axis in range(n):
        a = g.narrow(axis, 0, per_axis - 1).reshape(-1, *case.input_shape)
        b = g.narrow(axis, 1, per_axis - 1).reshape(-1, *case.input_shape)
        low, _, _ = probe.pair_quotients(a, b)
        oracle.offer(low, "grid-pair")


# ---------------------------------------------------------------------------------------------
# Witness re-check
# ---------------------------------------------------------------------------------------------
def recheck_witness(case: Case, witness: dict[str, Any], claimed: float, on_domain: bool,
                    atol: float = 0.0) -> list[tuple[str, str]]:
    """Problems of a lipbound witness for ``claimed``, re-checked on the module (empty: valid);
    ``atol``: absolute slack of the value checks (float64 noise, ``1e-10`` of the net's AutoLip).

    * Jacobian ``(x, v)``: ``x`` in the domain box, every activation input and max-pool window
      off its kinks/ties (:data:`KINK_RTOL`), and ``claimed <= ||Df(x) v|| / ||v||`` (relative
      ``1e-7``), the Jacobian taken by autograd on the module.
    * pair ``(x, y)``: both in the box; ``claimed <= (||f(x) - f(y)|| + margin) / ||x - y||``
      (else the claim is unsupported), and ``claimed <= (||f(x) - f(y)|| - ulp / 2) / ||x - y||``
      with ``ulp`` the float64 spacing of the outputs: a correct pair bound from the float64
      outputs subtracts at least the rounding of ``f(x)`` and ``f(y)`` themselves, so a claim above
      this has no rounding margin. On a net with an output offset (:func:`_finish`) the claim may
      instead come from lipbound's exact re-check, which can sit anywhere within that rounding of the
      float64 quotient (seed 0, net 193: 1623 of 1800 exact pair bounds broke the half-ulp rule,
      none the exact quotient); there it is checked against the quotient of
      :meth:`Case.offset_free`, whose float64 rounding is ~1e-16 of its small outputs, plus its
      margin: a claim above that exceeds the exact quotient.
    """
    probe = Probe(case)
    if not on_domain:
        probe.box = None
    problems: list[tuple[str, str]] = []
    if hasattr(witness, "to_dict"):  # a lipbound.PointWitness / PairWitness: check its plain tensors
        witness = witness.to_dict()
    form = witness.get("form") if isinstance(witness, dict) else None
    if form not in ("jacobian", "pair"):
        return [("witness-form", f"unknown witness {type(witness).__name__} {form!r}")]
    x = torch.as_tensor(witness["x"], dtype=torch.float64).reshape(1, *case.input_shape)
    other = "v" if form == "jacobian" else "y"
    y = torch.as_tensor(witness[other], dtype=torch.float64).reshape(1, *case.input_shape)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return [("witness-nan", f"non-finite witness {form} x={x.flatten()[:4].tolist()} (claimed {claimed:.10g})")]
    outside = [p for p, t in (("x", x), (other, y)) if (form == "pair" or p == "x") and not bool(probe.inside(t)[0])]
    if outside:
        problems.append(("witness-outside", f"{'/'.join(outside)} outside the box {case.domain}"))
    if form == "jacobian":
        if not bool(probe.off_kinks(x)[0]) and not exactly_off_kinks(case, x):
            problems.append(("witness-kink", f"Jacobian witness at a kink or max-pool tie (claimed {claimed:.10g})"))
        jv = (probe.jacobians(x)[0] @ y.flatten()).norm() / y.norm()
        if claimed > float(jv) * (1 + 1e-7) + atol:
            problems.append(("witness-value", f"claimed {claimed:.10g} > ||J v||/||v|| = {float(jv):.10g}"))
        return problems
    low, value, margin = probe.pair_quotients(x, y)
    dist = float((x - y).norm())
    if claimed > (float(value) * dist + float(margin)) / dist * (1 + 1e-7) + atol:
        problems.append(("witness-value", f"claimed {claimed:.10g} > pair quotient {float(value):.10g} "
                                          f"(+ margin {float(margin) / dist:.3g})"))
    twin = case.offset_free()
    if twin is not None:  # the same differences without the large outputs' rounding: near-exact
        _, t_value, t_margin = Probe(twin).pair_quotients(x, y)
        if claimed > (float(t_value) * dist + float(t_margin)) / dist * (1 + 1e-12):
            problems.append(("pair-no-margin", f"claimed {claimed:.10g} > quotient {float(t_value):.10g} of the "
                                               f"offset-free twin (+ margin {float(t_margin) / dist:.3g})"))
        return problems
    with torch.no_grad():
        fx, fy = probe.forward(x)[0], probe.forward(y)[0]
    ulp = torch.tensor(np.spacing(np.maximum(fx.abs().numpy(), fy.abs().numpy()))).norm()
    if claimed > 0 and claimed * dist > float(value) * dist - 0.5 * float(ulp):  # 0 <= L needs no margin
        problems.append(("pair-no-margin", f"claimed {claimed:.10g} >= float64 quotient {float(value):.10g} minus "
                                           f"half an ulp of the outputs ({0.5 * float(ulp) / dist:.3g})"))
    return problems
