"""Linear operators: the one interface every spectral method works on (DESIGN §2).

This module gathers them: the interface (:mod:`lipbound.linalg.linear_operator`), convolutions
(:mod:`lipbound.linalg.conv`) and, here, the dense, diagonal, reshaping, black-box and composed
operators, with :func:`compose`, which folds exact simplifications.

A :class:`LinearOperator` maps a batch ``(B, *in_shape)`` to ``(B, *out_shape)``. Subclasses
write ``_matvec``; the adjoint ``rmatvec`` defaults to a vector-Jacobian product through autograd
(exact for a linear map), and ``gram`` gives ``(A v, A^T A v)`` with one forward and one backward
pass, as the paper's power method (its Algorithm 2) does.

Each subclass also states what it knows of its own norm through :meth:`LinearOperator.structural_bound`:
a number ``>= ||A||_2`` by proof (``exact=True`` when it is the norm itself), e.g. ``max |d|`` for a
diagonal, 1 for a reshape, the kernel's DFT bound for a convolution. Every such bound is computed
from the tensors the operator applies, never from a caller's claim about them.
:mod:`lipbound.linalg.spectral` chooses between that and an SVD of the materialised matrix.
Separable maps (pooling, resizing, padding) and selections are in :mod:`lipbound.linalg.structured`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .conv import Conv, circular_conv_norm, conv_dft_bound
from .dense_gram import matrix_norm_bound
from .linear_operator import LinearOperator, StructuralBound, _TensorOperator

__all__ = ["StructuralBound", "LinearOperator", "Dense", "Diagonal", "Reshape", "Permute", "Function", "Conv",
           "conv_dft_bound", "circular_conv_norm", "Compose", "compose"]


class Dense(_TensorOperator):
    """``x -> x W^T`` on the last axis of ``x`` (``nn.Linear`` without bias). ``||A|| = ||W||_2``:
    its SVD, or for large weights the shifted-Cholesky certificate on ``W W^T``
    (:func:`~lipbound.linalg.dense_gram.matrix_norm_bound`; ``method`` chooses, for every dense
    matrix, materialised operators included: ``"auto"``, ``"svd"`` or ``"cholesky"``)."""

    label = "Linear"
    _tensors = ("weight",)
    method = "auto"

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int]) -> None:
        in_shape = tuple(in_shape)
        if in_shape[-1] != weight.shape[1]:
            raise ValueError(f"Linear expects last input axis {weight.shape[1]}, got shape {in_shape}")
        super().__init__(in_shape, (*in_shape[:-1], weight.shape[0]))
        self.weight = weight.detach()

    def _matvec(self, x):
        return x @ self.weight.T

    def _rmatvec(self, y):
        return y @ self.weight

    def structural_bound(self):
        return matrix_norm_bound(self.weight, self.method, "weight")

    def to_dense(self, chunk: int = 256):
        if len(self.in_shape) == 1:
            return self.weight
        return super().to_dense(chunk)


class Diagonal(_TensorOperator):
    """``x -> d * x`` with ``d`` broadcast to the input (BatchNorm in eval mode, constant scaling).

    ``||A||_2 = max |d|`` exactly.
    """

    label = "Scale"
    _tensors = ("scale",)

    def __init__(self, scale: torch.Tensor, in_shape: Sequence[int], label: str = "Scale") -> None:
        super().__init__(in_shape, in_shape)
        try:
            fits = tuple(torch.broadcast_shapes(scale.shape, self.in_shape)) == self.in_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"a scale of shape {tuple(scale.shape)} does not broadcast to the input {self.in_shape}")
        self.scale = scale.detach()
        self.label = label

    def _matvec(self, x):
        return x * self.scale

    _rmatvec = _matvec

    def structural_bound(self):
        return StructuralBound(self.scale.abs().max().item(), True, "max |diagonal|")


class Reshape(LinearOperator):
    """Flatten / view / reshape: the same entries in the same order, ``||A|| = 1``."""

    label = "Reshape"

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__(in_shape, out_shape)
        if self.in_numel != self.out_numel:
            raise ValueError(f"cannot reshape {self.in_shape} ({self.in_numel} entries) to {self.out_shape}")

    def _matvec(self, x):
        return x.reshape(x.shape[0], *self.out_shape)

    def _rmatvec(self, y):
        return y.reshape(y.shape[0], *self.in_shape)

    def structural_bound(self):
        return StructuralBound(1.0, True, "isometry")


class Permute(LinearOperator):
    """A permutation of the non-batch axes (e.g. NHWC -> NCHW): ``||A|| = 1``."""

    label = "Permute"

    def __init__(self, perm: Sequence[int], in_shape: Sequence[int]) -> None:
        self.perm = tuple(perm)
        if sorted(self.perm) != list(range(len(in_shape))):
            raise ValueError(f"{self.perm} is not a permutation of the axes of {tuple(in_shape)}")
        super().__init__(in_shape, tuple(in_shape[p] for p in self.perm))
        self._inverse = tuple(sorted(range(len(self.perm)), key=lambda i: self.perm[i]))

    def _matvec(self, x):
        return x.permute(0, *(p + 1 for p in self.perm))

    def _rmatvec(self, y):
        return y.permute(0, *(p + 1 for p in self._inverse))

    def structural_bound(self):
        return StructuralBound(1.0, True, "isometry")


class Function(LinearOperator):
    """A linear map given only as a function: a black box. No structural bound: its certified
    norm is the SVD of its materialised matrix when that is small enough, else none. Maps with a
    known structure are built as such instead (:mod:`lipbound.linalg.structured`)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int],
                 label: str, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        self.fn = fn
        self.label = label
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else None
        out = fn(torch.zeros((1, *in_shape), dtype=self.dtype, device=self.device))
        super().__init__(in_shape, out.shape[1:])

    def _matvec(self, x):
        return self.fn(x)


class Compose(LinearOperator):
    """``A_n ... A_2 A_1`` (``ops`` in the order they are applied). Certified bound: the product
    of the factors' bounds (the SVD of the materialised product is used instead when small)."""

    def __init__(self, ops: Sequence[LinearOperator]) -> None:
        self.ops = list(ops)
        for a, b in zip(self.ops, self.ops[1:]):
            if a.out_shape != b.in_shape:
                raise ValueError(f"cannot compose {a} with {b}")
        self.label = "+".join(o.label for o in self.ops)
        super().__init__(self.ops[0].in_shape, self.ops[-1].out_shape)

    def _matvec(self, x):
        for op in self.ops:
            x = op._matvec(x)
        return x

    def _rmatvec(self, y):
        for op in reversed(self.ops):
            y = op._rmatvec(y)
        return y

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for o in self.ops for t in o.tensors())

    @property
    def device(self):
        return self._tensor_op().device

    @property
    def dtype(self):
        return self._tensor_op().dtype

    def _tensor_op(self) -> LinearOperator:
        return next((o for o in self.ops if o.tensors()), self.ops[0])

    def to(self, device=None, dtype=None):
        return Compose([o.to(device, dtype) for o in self.ops])

    def structural_bound(self):
        bounds = [o.structural_bound() for o in self.ops]
        if any(b is None for b in bounds):
            return None
        others = [b for o, b in zip(self.ops, bounds) if not isinstance(o, (Reshape, Permute))]
        if len(others) <= 1:  # reshapes and permutations are unitary: ||U A V|| = ||A||
            only = others[0] if others else StructuralBound(1.0, True, "isometry")
            return StructuralBound(only.value, only.exact, only.how)
        return StructuralBound(math.prod(b.value for b in bounds), False, "product of factors")


def compose(first: LinearOperator, second: LinearOperator) -> LinearOperator:
    """``second o first``, folding exact simplifications: a per-channel or scalar
    :class:`Diagonal` (BatchNorm, constant scaling) is merged into a neighbouring convolution or
    dense layer, reshapes into neighbouring reshapes, and diagonals into diagonals. The result
    computes the same linear map; only its certified norm bound gets tighter."""
    if isinstance(first, Compose) or isinstance(second, Compose):
        ops = (first.ops if isinstance(first, Compose) else [first]) + (second.ops if isinstance(second, Compose) else [second])
        merged: list[LinearOperator] = []
        for op in ops:
            if merged:
                folded = _fold(merged[-1], op)
                if folded is not None:
                    merged[-1] = folded
                    continue
            merged.append(op)
        return merged[0] if len(merged) == 1 else Compose(merged)
    folded = _fold(first, second)
    return folded if folded is not None else Compose([first, second])


def _channel_scale(d: Diagonal, channels: int, channel_axis: int) -> torch.Tensor | None:
    """The per-channel vector of a diagonal constant over every axis but ``channel_axis``."""
    s = d.scale
    if s.numel() == 1:
        return s.reshape(1).expand(channels)
    shape = d.in_shape
    full = torch.broadcast_to(s, shape) if s.dim() <= len(shape) else None
    if full is None or shape[channel_axis] != channels:
        return None
    moved = full.movedim(channel_axis, 0).reshape(channels, -1)
    if not bool((moved == moved[:, :1]).all()):
        return None
    return moved[:, 0].clone()


def _fold(first: LinearOperator, second: LinearOperator) -> LinearOperator | None:
    """``second o first`` as one operator when a simplification applies (:func:`compose`), else
    None. The products of weights are taken in float64 (exact for float32 weights) and rounded to
    the operators' dtype for evaluation; the float64 fold stays attached (see :meth:`LinearOperator.to`),
    so that certified norms are those of the unrounded composition."""
    dtype = torch.promote_types(first.dtype, second.dtype)  # what the product of their tensors would be
    if dtype == torch.float64:
        return _fold64(first, second)
    folded = _fold64(first.to(dtype=torch.float64), second.to(dtype=torch.float64))
    if folded is None:
        return None
    rounded = folded.to(dtype=dtype)
    rounded.__dict__["_exact64"] = folded
    return rounded


def _fold64(first: LinearOperator, second: LinearOperator) -> LinearOperator | None:
    if isinstance(first, Reshape) and isinstance(second, Reshape):
        return Reshape(first.in_shape, second.out_shape)
    if isinstance(first, Diagonal) and isinstance(second, Diagonal):
        return Diagonal(first.scale * second.scale, first.in_shape, first.label)
    if isinstance(second, Diagonal) and isinstance(first, Conv) and not first.transposed:
        c = _channel_scale(second, first.weight.shape[0], 0)
        if c is not None:
            w = first.weight * c.reshape(-1, *([1] * (first.weight.dim() - 1)))
            return _conv_like(first, w)
    if isinstance(first, Diagonal) and isinstance(second, Conv) and not second.transposed:
        cin = second.in_shape[0]
        c = _channel_scale(first, cin, 0)
        if c is not None:
            g = second.groups
            w = second.weight.reshape(g, -1, cin // g, *second.weight.shape[2:])
            w = w * c.reshape(g, 1, cin // g, *([1] * (second.weight.dim() - 2)))
            return _conv_like(second, w.reshape(second.weight.shape))
    if isinstance(second, Diagonal) and isinstance(first, Dense):
        c = _channel_scale(second, first.weight.shape[0], len(second.in_shape) - 1)
        if c is not None:
            return Dense(first.weight * c[:, None], first.in_shape)
    if isinstance(first, Diagonal) and isinstance(second, Dense):
        c = _channel_scale(first, second.weight.shape[1], len(first.in_shape) - 1)
        if c is not None:
            return Dense(second.weight * c[None, :], second.in_shape)
    return None


def _conv_like(conv: Conv, weight: torch.Tensor) -> Conv:
    return Conv(weight, conv.in_shape, conv.stride, conv.padding, conv.dilation, conv.groups,
                conv.transposed, conv.output_padding, conv.circular)
