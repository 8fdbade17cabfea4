"""The float64 evaluation of a graph with a rigorous bound of its rounding error at every node
(DESIGN §8: what makes a witness valid rests on these bounds).

**Rounding model** (:func:`enclose`, primitives in :mod:`lipbound.methods.float_error`). With
``u = 2^-53`` and ``gamma_k = k u / (1 - k u)``: an affine node ``y = A h + b`` computed in float64 is
within ``gamma_k (|A| |h| + |b|)`` of the exact value for the computed ``h`` (``k`` the operator's
input size, at least the number of terms of every sum, in any summation order: Higham, Accuracy and
Stability of Numerical Algorithms, §3.1); an input error ``e`` adds ``|A| e``. ``|A|`` is the
operator with absolute weights for dense layers, convolutions and diagonals, the operator itself
for non-negative maps (pooling, padding, reshapes), and otherwise the provable substitute
``(|A| w)_i <= ||A||_2 ||w||_2`` with a certified norm (infinite when none is known: the witness is
then declined). An activation with slope range ``[a, b]`` adds ``max(|a|, |b|) e``; its own
evaluation error is bounded by ``gamma_4 (max|slope| |t| + max|offset|)`` for a piecewise-linear one
and by ``16 u (|s(t)| + |t|)`` for the smooth ones (the assumption that torch's float64 kernels are
accurate to a few units in the last place). Max pooling passes the largest error of its window,
sums add their errors and one rounding. Evaluations run on the CPU (no FFT or Winograd
convolution algorithms), and every bound is rounded upwards.

**Norm-wise bounds on deep nets.** Element-wise propagation multiplies the errors by ``|A|`` at every
layer, whose norm can exceed ``||A||_2`` several times over: on a 65-layer MLP the bound passes the
values themselves by layer 20 and no witness can be checked. Every node therefore also carries
``E >= ||error||_2`` per batch element, propagated with the layers' certified norms
(:func:`~lipbound.linalg.spectral.certified_norm`): an affine node's propagated error is
``A (h~ - h)``, whose every element is at most ``||A||_2 E`` (``|a_i . d| <= ||a_i|| ||d||``) and
whose norm is at most ``||A||_2 E``; an activation's is at most ``max|slope| E``. Each element's
bound is the smaller of the two, both sound. The norm path is taken only where the element-wise
bound has grown past ``1e-10`` of the values (shallow nets never pay for the norms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool
from ..graph.walk import GraphInterpreter
from ..linalg.linear_operator import LinearOperator
from .float_error import (UNIT_ROUNDOFF, activation_rounding, error_norm, gamma, linear_error, operator_norm_bound,
                          round_up)
from .jacobian import tangents

__all__ = ["Enclosure", "enclose", "piece_slopes"]


@dataclass
class Enclosure:
    """Float64 values of every node of a graph at a batch ``x`` and element-wise bounds of their
    distance to the exact values: ``|values[n] - f_n(x)| <= errors[n]``; with a direction ``v``,
    also the directional derivatives ``D f_n(x) v`` in ``tangents`` and their error bounds in
    ``tangent_errors``."""

    values: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]
    tangents: dict[str, torch.Tensor] = field(default_factory=dict)
    tangent_errors: dict[str, torch.Tensor] = field(default_factory=dict)


def enclose(graph: Graph, x: torch.Tensor, v: torch.Tensor | None = None) -> Enclosure:
    """Evaluate ``graph`` (float64, CPU) at the batch ``x`` with a rigorous element-wise bound of
    the rounding error of every node (rounding model: module doc); with ``v``, propagate the
    tangent ``D f_n(x) v`` forward as well (affine nodes without their bias, activations times
    their derivative at the computed input, max pooling by the selected input) with its error
    bound. A piecewise-linear activation's derivative is exact wherever :func:`~lipbound.methods.witness_region.region_check`
    passes; a smooth one's is taken within twice its secant change over the input's error interval
    plus ``16 u`` (an estimate, not a proof).

    Raises:
        UnsupportedOperation: for a node kind the error analysis does not know.
    """
    with torch.no_grad():
        env = _Enclose(x, v).run(graph)
    enc = Enclosure({k: e.value for k, e in env.items()}, {k: e.error for k, e in env.items()})
    if v is not None:
        enc.tangents = {k: e.tangent for k, e in env.items()}
        enc.tangent_errors = {k: e.tangent_error for k, e in env.items()}
    return enc


class _Enclosed(NamedTuple):
    """One node's float64 value and error bound; its tangent and the tangent's bound (None without ``v``)."""

    value: torch.Tensor
    error: torch.Tensor
    tangent: torch.Tensor | None = None
    tangent_error: torch.Tensor | None = None
    norm: torch.Tensor | None = None  # >= ||value - exact||_2 per batch element
    tangent_norm: torch.Tensor | None = None  # >= ||tangent - exact||_2 per batch element


class _Enclose(GraphInterpreter[_Enclosed]):
    """The visits of :func:`enclose`, one per node kind (module doc, rounding model)."""

    name = "the rounding-error analysis of witnesses"

    def __init__(self, x: torch.Tensor, v: torch.Tensor | None) -> None:
        self.x, self.v = x, v

    def visit_input(self, node: Input) -> _Enclosed:
        zero = torch.zeros(self.x.shape[0], dtype=self.x.dtype)
        if self.v is None:
            return _Enclosed(self.x, torch.zeros_like(self.x), norm=zero)
        return _Enclosed(self.x, torch.zeros_like(self.x), self.v, torch.zeros_like(self.v), zero, zero)

    def visit_affine(self, node: Affine, h: _Enclosed) -> _Enclosed:
        y, e, big = _linear_normwise(node.op, h.value, h.error, h.norm)
        if node.bias is not None:
            k = node.op.in_numel + 1
            fresh = gamma(k) * node.bias.abs()
            e = round_up(e + fresh, k)  # one more term in every sum
            big = round_up(big + error_norm(fresh.expand_as(y)), k)
            y = y + node.bias
        if h.tangent is None:
            return _Enclosed(y, e, norm=torch.minimum(big, error_norm(e)))
        t, e_t, big_t = _linear_normwise(node.op, h.tangent, h.tangent_error, h.tangent_norm)
        return _Enclosed(y, e, t, e_t, torch.minimum(big, error_norm(e)), big_t)

    def visit_activation(self, node: Activation, h: _Enclosed) -> _Enclosed:
        y = node.evaluate(h.value)
        rounding = activation_rounding(node, h.value, y)
        e = round_up(node.lipschitz * h.error + rounding, 4)
        big = torch.minimum(error_norm(e), round_up(node.lipschitz * h.norm + error_norm(rounding), 4))
        if h.tangent is None:
            return _Enclosed(y, e, norm=big)
        return _Enclosed(y, e, *_activation_tangent(node, h.value, h.error, h.tangent, h.tangent_error,
                                                    h.tangent_norm), big)

    def visit_maxpool(self, node: MaxPool, h: _Enclosed) -> _Enclosed:
        y, e = node.evaluate(h.value), node.evaluate(h.error)  # |max a - max b| <= max |a - b|
        if h.tangent is None:
            return _Enclosed(y, e, norm=error_norm(e))
        with torch.enable_grad():
            hg = h.value.detach().requires_grad_(True)
            (t,) = tangents([node.evaluate(hg)], hg, h.tangent)
        # the selected input's error is at most the window's largest
        e_t = node.evaluate(h.tangent_error)
        return _Enclosed(y, e, t, e_t, error_norm(e), error_norm(e_t))

    def visit_add(self, node: Add, *hs: _Enclosed) -> _Enclosed:
        def total(ts: list[torch.Tensor], es: list[torch.Tensor], bigs: list[torch.Tensor]):
            k = len(ts)
            fresh = gamma(k) * sum(t.abs() for t in ts)
            e = round_up(sum(es) + fresh, k)
            return node.evaluate(*ts), e, torch.minimum(error_norm(e), round_up(sum(bigs) + error_norm(fresh), k + 1))

        y, e, big = total([h.value for h in hs], [h.error for h in hs], [h.norm for h in hs])
        if hs[0].tangent is None:
            return _Enclosed(y, e, norm=big)
        t, e_t, big_t = total([h.tangent for h in hs], [h.tangent_error for h in hs], [h.tangent_norm for h in hs])
        return _Enclosed(y, e, t, e_t, big, big_t)

    def visit_concat(self, node: Concat, *hs: _Enclosed) -> _Enclosed:
        y, e = node.evaluate(*[h.value for h in hs]), node.evaluate(*[h.error for h in hs])
        if hs[0].tangent is None:
            return _Enclosed(y, e, norm=error_norm(e))
        e_t = node.evaluate(*[h.tangent_error for h in hs])
        return _Enclosed(y, e, node.evaluate(*[h.tangent for h in hs]), e_t, error_norm(e), error_norm(e_t))


def _derivative(node: Activation, z: torch.Tensor) -> torch.Tensor:
    """``s'(z)`` element-wise, by autograd of the activation's own code."""
    with torch.enable_grad():
        zg = z.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(node.evaluate(zg).sum(), zg)
    return d


def piece_slopes(node: Activation, z: torch.Tensor) -> torch.Tensor:
    """The slope of the piece each element of ``z`` lies in (the left one on a breakpoint), from
    the activation's exact pieces."""
    breaks = torch.tensor(node.pieces.breakpoints, dtype=z.dtype)
    return torch.tensor(node.pieces.slopes, dtype=z.dtype)[torch.bucketize(z.contiguous(), breaks)]


def _activation_tangent(node: Activation, z: torch.Tensor, e_z: torch.Tensor, t: torch.Tensor, e_t: torch.Tensor,
                        big_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``s'(z) t``, its error bound ``|s'~ - s'(z)| (|t| + e_t) + |s'~| e_t + u |s'~ t|`` (:func:`enclose`)
    and a bound of that error's norm from ``big_t >= ||e_t||_2`` (``max(|s'~| + |s'~ - s'|) big_t``
    for the propagated part)."""
    if node.pieces is not None:  # the slope of z's piece, exactly, where the piece is certain
        d = piece_slopes(node, z)
        slope_error = torch.zeros_like(d)
    else:
        d = _derivative(node, z)
        secant = torch.maximum((_derivative(node, z + e_z) - d).abs(), (_derivative(node, z - e_z) - d).abs())
        slope_error = 2 * secant + 16 * UNIT_ROUNDOFF * (d.abs() + node.lipschitz)
    out = d * t
    fresh, gain = slope_error * t.abs() + UNIT_ROUNDOFF * out.abs(), d.abs() + slope_error
    e = round_up(fresh + gain * e_t, 3)
    big = round_up(error_norm(fresh) + gain.flatten(1).amax(dim=1) * big_t, 3)
    return out, e, torch.minimum(error_norm(e), big)



def _linear_normwise(op: LinearOperator, h: torch.Tensor, e: torch.Tensor,
                     big: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~.float_error.linear_error` with ``big >= ||e||_2``: ``(A h, element-wise error bound, bound of its norm)``.
    Where the element-wise bound has grown past ``1e-10`` of ``||A h||``, each element is also
    bounded by ``||A||_2 big`` plus the fresh rounding (module doc), and the smaller bound is kept."""
    y, out = linear_error(op, h, e)
    out_norm = error_norm(out)
    if not bool((out_norm > 1e-10 * y.flatten(1).norm(dim=1)).any()):
        return y, out, out_norm
    a = operator_norm_bound(op)
    if not math.isfinite(a):
        return y, out, out_norm
    _, fresh = linear_error(op, h, torch.zeros_like(e))
    spread = round_up(a * big, 1)
    out = torch.minimum(out, round_up(fresh + spread.reshape(-1, *([1] * (y.dim() - 1))), 2))
    return y, out, torch.minimum(error_norm(out), round_up(error_norm(fresh) + spread, 2))
