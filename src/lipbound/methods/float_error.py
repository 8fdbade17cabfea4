"""Float64 rounding-error primitives: the one home of the unit roundoff and of the error bounds
that every rigorous float64 computation of lipbound builds on (witnesses, interval and linear
bound propagation, the LMI's assembly).

With ``u = 2^-53`` (:data:`UNIT_ROUNDOFF`) and ``gamma_k = k u / (1 - k u)`` (:func:`gamma`), a sum
of ``k`` float64 terms in any order is within ``gamma_k`` times the sum of the terms' absolute
values of its exact value (Higham, Accuracy and Stability of Numerical Algorithms, §3.1). Hence
an affine map ``A h`` computed in float64 from a computed ``h`` with ``|h - h_exact| <= e`` is within
``|A| e + gamma_k |A| |h|`` of ``A h_exact`` (:func:`linear_error`), ``k`` the operator's input size
(at least the terms of every sum). ``|A|`` is the operator with absolute entries where that is cheap
(:func:`magnitude`), else the provable substitute ``(|A| w)_i <= ||A||_2 ||w||_2`` with a certified
norm (:func:`operator_norm_bound`, infinite when none is known). Every bound computed here is
itself a float64 computation and is rounded upwards (:func:`round_up`); an underflow adds at most
:data:`TINY` per operation. Smooth activations are assumed accurate to ``16 u`` of their value plus
input (torch's float64 kernels: an assumption, not a proof); piecewise-linear ones are exact pieces.
"""

from __future__ import annotations

import torch

from ..graph.ir import Activation
from ..linalg.operators import Compose, Conv, Dense, Diagonal, Function, LinearOperator, Permute, Reshape
from ..linalg.float_units import TINY64, U64, gamma
from ..linalg.spectral import certified_norm
from ..linalg.structured import Gather, Kronecker

__all__ = ["UNIT_ROUNDOFF", "TINY", "gamma", "round_up", "error_norm", "operator_norm_bound", "linear_error",
           "magnitude", "activation_rounding"]

UNIT_ROUNDOFF = U64  # unit roundoff of float64 (linalg.float_units: the one home of the units)
TINY = TINY64  # smallest normal float64: bounds the absolute error of an underflow


def round_up(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t >= 0`` computed in float64 by sums of at most ``n`` non-negative terms, rounded up to a
    rigorous upper bound of its exact value: ``t (1 + 2 gamma_{n+4}) + TINY``."""
    return t * (1 + 2 * gamma(n + 4)) + TINY


def error_norm(e: torch.Tensor) -> torch.Tensor:
    """A rigorous upper bound of ``||e_b||_2`` for each batch element of ``e >= 0``."""
    return round_up(e.flatten(1).norm(dim=1), e[0].numel())


def operator_norm_bound(op: LinearOperator) -> float:
    """A certified ``||A||_2`` (cached on the operator), infinite when none is known."""
    if "_lipbound_row_bound" not in op.__dict__:
        op.__dict__["_lipbound_row_bound"] = certified_norm(op.to(dtype=torch.float64)).value
    return op.__dict__["_lipbound_row_bound"]


def linear_error(op: LinearOperator, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A h`` and a bound of its error ``|A| e + gamma_k |A| |h|`` (stage by stage for a
    composition, as it is evaluated)."""
    if isinstance(op, Compose):
        for sub in op.ops:
            h, e = linear_error(sub, h, e)
        return h, e
    y = op.matvec(h)
    k = op.in_numel
    if isinstance(op, (Reshape, Permute)):  # moves entries: no rounding
        return y, op.matvec(e)
    w = e + gamma(k) * h.abs()
    if isinstance(op, Function):  # unknown internals (interpolation weights, lerps): one more max|h| term
        w = w + gamma(k) * h.abs().flatten(1).amax(dim=1).reshape(-1, *([1] * (h.dim() - 1)))
    mag = magnitude(op)
    if mag is not None:
        bound = mag.matvec(w)
    else:  # (|A| w)_i <= ||row_i||_2 ||w||_2 <= ||A||_2 ||w||_2
        scale = operator_norm_bound(op) * error_norm(w)
        bound = scale.reshape(-1, *([1] * (y.dim() - 1))).expand_as(y)
    return y, round_up(bound, k) + k * TINY


def magnitude(op: LinearOperator) -> LinearOperator | None:
    """The operator ``|A|`` (entry-wise absolute values) when it is cheap, else None: dense and
    convolution weights (circular padding kept), diagonals and the per-axis factors of a separable
    map in absolute value; selections, reshapes and permutations are their own (0/1 entries)."""
    if isinstance(op, Dense):
        return Dense(op.weight.abs(), op.in_shape)
    if isinstance(op, Conv):
        return Conv(op.weight.abs(), op.in_shape, op.stride, op.padding, op.dilation, op.groups, op.transposed,
                    op.output_padding, op.circular)
    if isinstance(op, Diagonal):
        return Diagonal(op.scale.abs(), op.in_shape)
    if isinstance(op, Kronecker):
        return Kronecker([f.abs() for f in op.factors], op.in_shape, op.label)
    if isinstance(op, (Gather, Reshape, Permute)):
        return op
    if isinstance(op, Compose):
        mags = [magnitude(sub) for sub in op.ops]  # |A B| <= |A| |B| entry-wise
        return None if any(m is None for m in mags) else Compose(mags)
    return None


def activation_rounding(node: Activation, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Bound of ``|fl(s(t)) - s(t)|`` for a float64 input ``t`` and the computed ``s = fl(s(t))``:
    ``gamma_4 (max|slope| |t| + max|offset|)`` for a piecewise-linear activation (one product, one
    sum, exact pieces), ``16 u (|s| + |t|)`` for a smooth one (the assumption of the module doc)."""
    pieces = node.pieces
    if pieces is not None:
        slope = max(abs(a) for a in pieces.slopes)
        offset = max(abs(b) for b in pieces.offsets)
        return gamma(4) * (slope * t.abs() + offset) + TINY
    return 16 * UNIT_ROUNDOFF * (s.abs() + t.abs()) + 16 * TINY

