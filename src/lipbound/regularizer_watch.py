"""What the training regulariser (:mod:`lipbound.regularizer`) says about its own limits.

* **Its value is an estimate.** ``reg()`` combines power-method norms (``||A v||`` for a unit
  ``v``, each a *lower* estimate of its layer's norm) that take ``n_power_iterations`` steps per
  call from persistent vectors; while the weights move, the vectors lag and ``reg()`` reads below
  the certified AutoLip bound. It is never a certified upper bound. :func:`warn_estimate` says so
  once per regulariser, and :func:`certify_now` brackets the live model when asked.
* **BatchNorm in training mode.** The bound uses BatchNorm as the eval-mode model does,
  ``gamma / sqrt(running_var + eps)`` folded into the affine layers next to it. Its running
  statistics are buffers that the forward passes of training overwrite, outside the reach of the
  gradient of ``reg()``: shrinking a convolution's weights shrinks the variance of its output, the
  running variance follows, and the folded product ``gamma W / sqrt(var)`` does not decrease (it
  may grow). :func:`warn_batchnorm_training` says so once; :func:`freeze_batchnorm` holds the
  statistics fixed instead (each BatchNorm runs in eval mode, normalising with its running
  statistics, so the function trained is the one bounded).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

from torch import nn
from torch.utils.hooks import RemovableHandle

from .api import autolip, lower_bound

logger = logging.getLogger("lipbound.regularizer")

BATCHNORM_MODES = ("fold", "freeze")
_USER_FRAME = 6  # warn_* <- _warn_once <- forward <- Module._call_impl <- Module._wrapped_call_impl <- reg()


class RegularizerWarning(UserWarning):
    """A limit of the training regulariser (filter it with ``warnings.filterwarnings``)."""


@dataclass(frozen=True)
class Certification:
    """The bracket of the live model at one call of the regulariser.

    ``estimate``: what ``reg.bound()`` returned at that call (power-method AutoLip, no guarantee);
    ``upper``: certified AutoLip of the model as it is (eval mode: BatchNorm from its running
    statistics), ``>= L(f)`` by proof; ``lower``: a witnessed lower bound (Jacobian search), or
    None when not asked for.
    """

    call: int
    estimate: float
    upper: float
    lower: float | None

    @property
    def ratio(self) -> float | None:
        return self.upper / self.lower if self.lower else None

    def __str__(self) -> str:
        low = "none" if self.lower is None else f"{self.lower:.4g}"
        ratio = "" if self.ratio is None else f" ratio {self.ratio:.3g}"
        return (f"call {self.call}: estimate {self.estimate:.4g}, certified bracket "
                f"[lower {low}, upper {self.upper:.4g}]{ratio}")


def certify_now(model: nn.Module, input_shape: Sequence[int], call: int, estimate: float, seed: int,
                lower_steps: int) -> Certification:
    """Certified AutoLip of ``model`` with its current parameters (a traced eval-mode copy: the
    model itself is untouched) and, when ``lower_steps > 0``, a witnessed lower bound from a small
    deterministic Jacobian search (8 starts, ``lower_steps`` ascent steps, no pairs; its 600 s budget only caps it); logged at
    INFO on the ``lipbound.regularizer`` logger."""
    upper = autolip(model, input_shape, certified=True, seed=seed).value
    low = None
    if lower_steps > 0:
        low = lower_bound(model, input_shape, seed=seed, starts=8, steps=lower_steps, pairs=False,
                          walk_rounds=0, time_budget=600.0).value
    record = Certification(call, estimate, upper, low)
    logger.info("lipbound regulariser, %s", record)
    return record


def batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """The BatchNorm modules whose running statistics the bound reads, by name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def warn_batchnorm_training(modules: dict[str, nn.Module]) -> bool:
    """Warn if a BatchNorm is in training mode; True when it warned."""
    training = [f"'{name}'" for name, m in modules.items() if m.training]
    if not training:
        return False
    warnings.warn(
        f"BatchNorm in training mode ({', '.join(training)}): its running statistics change at every "
        "forward pass and reg() cannot act on them, so the trained model's bound can grow while reg() "
        "falls. Pass batchnorm='freeze' to hold them fixed (BatchNorm then normalises with its running "
        "statistics during training), or keep these modules in eval mode yourself.",
        RegularizerWarning, stacklevel=_USER_FRAME)
    return True


def warn_estimate(n_power_iterations: int) -> None:
    """Say once that ``reg()`` is an estimate, not a certified bound."""
    warnings.warn(
        f"reg() is an AutoLip estimate (power-method norms, {n_power_iterations} step(s) per call from "
        "persistent vectors): it reads at or below the certified AutoLip bound and bounds the constant in "
        "neither direction. Pass "
        "certified_every=N to log the certified bracket every N calls, or run "
        "lipbound.certify_training(model, input_shape) after training.",
        RegularizerWarning, stacklevel=_USER_FRAME)


def freeze_batchnorm(modules: Sequence[nn.Module]) -> list[RemovableHandle]:
    """Hooks that run each BatchNorm in eval mode (a forward pre-hook) and give it back its mode
    after (a forward hook): its running statistics stay fixed whatever mode the model is in, and
    ``module.training`` still follows ``model.train()``. Remove them with ``handle.remove()``."""
    handles = []
    for m in modules:
        modes: list[bool] = []
        handles.append(m.register_forward_pre_hook(functools.partial(_enter_eval, modes=modes)))
        handles.append(m.register_forward_hook(functools.partial(_leave_eval, modes=modes)))
    return handles


def _enter_eval(module: nn.Module, args: tuple, modes: list[bool]) -> None:
    modes.append(module.training)
    module.train(False)


def _leave_eval(module: nn.Module, args: tuple, out: object, modes: list[bool]) -> None:
    module.train(modes.pop())
