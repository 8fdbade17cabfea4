"""The linear-operator interface every spectral method works on (DESIGN §2).

A :class:`LinearOperator` maps a batch ``(B, *in_shape)`` to ``(B, *out_shape)``. Subclasses
write ``_matvec``; the adjoint ``rmatvec`` defaults to a vector-Jacobian product through autograd
(exact for a linear map), and ``gram`` gives ``(A v, A^T A v)`` with one forward and one backward
pass, as the paper's power method (its Algorithm 2) does. Each subclass states what it knows of
its own norm through :meth:`LinearOperator.structural_bound` (a :class:`StructuralBound`). The
concrete operators are in :mod:`lipbound.linalg.operators` (which re-exports this module's names),
:mod:`lipbound.linalg.conv` and :mod:`lipbound.linalg.structured`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class StructuralBound:
    """A certified upper bound of ``||A||_2`` from the operator's structure."""

    value: float
    exact: bool  # True when ``value`` is the norm itself (up to rounding)
    how: str


def _numel(shape: Shape) -> int:
    return math.prod(shape)


class LinearOperator:
    """A linear map between tensors of fixed shapes, applied to batches.

    Subclasses set ``in_shape``/``out_shape`` (through ``__init__``) and write ``_matvec``;
    they may write ``_rmatvec`` when a direct adjoint is cheaper than autograd.
    """

    label = "Linear operator"

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        self.in_shape: Shape = tuple(int(s) for s in in_shape)
        self.out_shape: Shape = tuple(int(s) for s in out_shape)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def in_numel(self) -> int:
        return _numel(self.in_shape)

    @property
    def out_numel(self) -> int:
        return _numel(self.out_shape)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}: {self.in_shape} -> {self.out_shape}>"

    # ---- application -------------------------------------------------------------------
    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for a batch ``x`` of shape ``(B, *in_shape)``."""
        _check_batch(x, self.in_shape, "input")
        return self._matvec(x)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` for a batch ``y`` of shape ``(B, *out_shape)``."""
        _check_batch(y, self.out_shape, "output")
        return self._rmatvec(y)

    def gram(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A v, A^T A v)`` with one forward and one backward pass."""
        _check_batch(v, self.in_shape, "input")
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            y = self._matvec(v)
            (g,) = torch.autograd.grad(y, v, grad_outputs=y.detach())
        return y.detach(), g

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = torch.zeros((y.shape[0], *self.in_shape), dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self._matvec(x), x, grad_outputs=y)
        return g

    # ---- facts -------------------------------------------------------------------------
    def structural_bound(self) -> StructuralBound | None:
        """A certified ``>= ||A||_2`` from the structure, or None when there is none cheap."""
        return None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors that define the map (weights, factors, indices)."""
        return ()

    def norm_cache(self) -> dict:
        """A memo for norms of this operator (used by :mod:`lipbound.linalg.spectral`).

        It holds only while the operator computes what it computed when the memo was filled: it
        is emptied when its dtype or device changes, or when one of its :meth:`tensors` is
        replaced or changed in place (torch's version counter, which a weight shares with the
        parameter it was detached from). A copy made by :meth:`to` starts with an empty memo.
        """
        stamp = (self.dtype, self.device, *((t, t._version) for t in self.tensors()))
        held = self.__dict__.get("_norm_cache")
        if held is None or not _same_stamp(held[0], stamp):
            held = (stamp, {})
            self.__dict__["_norm_cache"] = held
        return held[1]

    @property
    def device(self) -> torch.device:
        return getattr(self, "_device", None) or torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, "_dtype", None) or torch.get_default_dtype()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LinearOperator":
        """A copy for another device or dtype (the tensors it works on, and its own if any). An
        operator folded from others in a lower precision (:func:`compose`) keeps its float64 fold:
        ``to(dtype=torch.float64)`` returns that one, not the rounded weights cast back."""
        exact = self.__dict__.get("_exact64")
        if dtype == torch.float64 and exact is not None:
            return exact.to(device=device)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_norm_cache", None)
        if dtype is not None:
            new._dtype = dtype
        if device is not None:
            new._device = torch.device(device)
        return new

    def to_dense(self, chunk: int = 256) -> torch.Tensor:
        """The matrix ``(out_numel, in_numel)``, built column block by column block (``matvec`` of
        basis vectors), or row block by row block (``rmatvec``, the adjoint, exact for a linear
        map) when there are fewer outputs than inputs."""
        by_rows = self.out_numel < self.in_numel
        n, shape = (self.out_numel, self.out_shape) if by_rows else (self.in_numel, self.in_shape)
        apply = self.rmatvec if by_rows else self.matvec
        blocks = []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            eye = torch.zeros((stop - start, n), dtype=self.dtype, device=self.device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            blocks.append(apply(eye.reshape(-1, *shape)).reshape(stop - start, -1))
        dense = torch.cat(blocks, 0)
        return dense if by_rows else dense.T


def _same_stamp(a: tuple, b: tuple) -> bool:
    """Equal stamps: same dtype and device, the same tensor objects at the same versions."""
    return len(a) == len(b) and a[:2] == b[:2] and all(
        ta is tb and va == vb for (ta, va), (tb, vb) in zip(a[2:], b[2:]))


def _check_batch(x: torch.Tensor, shape: Shape, what: str) -> None:
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"expected a batch of {what} shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")


class _TensorOperator(LinearOperator):
    """An operator defined by tensors in ``self._tensors`` (moved together by :meth:`to`)."""

    _tensors: tuple[str, ...] = ()

    def _first(self) -> torch.Tensor:
        return getattr(self, self._tensors[0])

    @property
    def device(self) -> torch.device:
        return self._first().device

    @property
    def dtype(self) -> torch.dtype:
        return self._first().dtype

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self._tensors)

    def to(self, device=None, dtype=None):
        exact = self.__dict__.get("_exact64")
        if dtype == torch.float64 and exact is not None:  # a fold kept in float64 (see LinearOperator.to)
            return exact.to(device=device)
        new = super().to(device, dtype)
        for name in self._tensors:
            setattr(new, name, getattr(self, name).to(device=device, dtype=dtype))
        return new
