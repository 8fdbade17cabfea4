"""Operators whose exact norm follows from their structure, read off the function they replace.

* :class:`Kronecker` — a separable map of the last ``d`` axes, ``A = I ⊗ B_1 ⊗ ... ⊗ B_d``:
  pooling (average, adaptive, any padding, ``ceil_mode``, ``count_include_pad``), resizing
  (``interpolate``/``Upsample`` in every mode, ``align_corners``, ``antialias``), padding (zero,
  reflect, replicate, circular) and cropping. :func:`separable` reads the 1-D matrices ``B_k`` off
  the function.
* :class:`Gather` — a selection ``y_i = x_{index_i}`` (indexing and slicing). :func:`selection`
  reads the index off the function.

Both operators *apply* what they store (the factors, the index): they never call the function
again. Their norm is therefore a proof about the map the graph computes, without trusting any
claim about the function (e.g. that its weights are non-negative). That this map is the function
is checked once, on random inputs, as the frontends check the whole graph against the model.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import UnsupportedOperation
from .operators import LinearOperator, StructuralBound

PROBE_NUMEL = 1 << 22  # entries per batch of probe inputs
_CHECK_RTOL = 1e-9  # float64 read-off against float64 evaluation: rounding is ~1e-15


class Kronecker(LinearOperator):
    """``y[c, i_1..i_d] = sum_j B_1[i_1, j_1] ... B_d[i_d, j_d] x[c, j_1..j_d]``: the matrices
    ``B_k`` (``factors``) act on the last ``d`` axes; the leading axes ``c`` (channels) are kept.

    **Norm (exact).** The matrix is ``I ⊗ B_1 ⊗ ... ⊗ B_d`` (row-major order). The singular values
    of a Kronecker product are the products of its factors' singular values, and those of ``I``
    are 1, so ``||A||_2 = prod_k ||B_k||_2``: the SVD norms of ``d`` small matrices, in float64.
    No sign of the weights is assumed (bicubic weights are negative).

    The map applies one factor per axis, as a matrix product over that axis (BLAS beats a sparse
    gather of the few non-zero weights per row at the sizes of pooling and resizing layers).

    ``factors`` are kept as given (e.g. float64 read-offs) and applied in ``dtype`` (default: theirs);
    the norm is the one of the factors applied, and :meth:`to` rounds from the factors as given,
    so a float32 operator cast back to float64 is the float64 map again.
    """

    def __init__(self, factors: Sequence[torch.Tensor], in_shape: Sequence[int], label: str,
                 dtype: torch.dtype | None = None) -> None:
        in_shape = tuple(int(s) for s in in_shape)
        self._given = [f.detach() for f in factors]
        factors = [f.to(dtype or f.dtype) for f in self._given]
        d = len(factors)
        if not 1 <= d <= len(in_shape) or any(f.dim() != 2 or f.shape[1] != n or f.shape[0] == 0
                                               for f, n in zip(factors, in_shape[len(in_shape) - d:])):
            raise ValueError(f"factors {[tuple(f.shape) for f in factors]} do not act on the last axes of {in_shape}")
        self.factors = factors
        self.label = label
        super().__init__(in_shape, (*in_shape[: len(in_shape) - d], *(f.shape[0] for f in factors)))

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.factors)
        for k, b in enumerate(self.factors):
            axis = x.dim() - d + k
            x = torch.matmul(x.movedim(axis, -1), b.T).movedim(-1, axis)
        return x

    def structural_bound(self) -> StructuralBound:
        value = math.prod(torch.linalg.matrix_norm(f.double(), ord=2).item() for f in self.factors)
        return StructuralBound(value, True, "product of the per-axis matrices' SVD norms (Kronecker)")

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.factors)

    @property
    def device(self) -> torch.device:
        return self.factors[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.factors[0].dtype

    def to(self, device=None, dtype=None) -> "Kronecker":
        return Kronecker([f.to(device=device) for f in self._given], self.in_shape, self.label, dtype or self.dtype)


def separable(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int], label: str, axes: int,
              dtype: torch.dtype | None = None, device: torch.device | str | None = None,
              where: str = "a linear map") -> Kronecker:
    """The :class:`Kronecker` operator of ``fn``, a linear map of the last ``axes`` axes that acts
    alike on every index of the leading ones (true of torch's pooling, interpolation and padding).

    **Read-off.** On one channel (leading axes of size 1) write ``A = B_1 ⊗ ... ⊗ B_d``,
    ``1`` for the all-ones vector and ``e_j`` for a basis vector. Then ``z = A 1 = ⊗_l (B_l 1)``;
    take ``r = argmax |z|`` (``z_r != 0``). Along axis ``k``,
    ``M_k[:, j] = (A (1 ⊗ .. ⊗ e_j ⊗ .. ⊗ 1))[r_1, .., :, .., r_d] = B_k[:, j] prod_{l != k} (B_l 1)[r_l]``,
    so ``⊗_k M_k = z_r^{d-1} A``, and ``A = (M_1 / z_r^{d-1}) ⊗ M_2 ⊗ ... ⊗ M_d``. This costs
    ``1 + sum_k n_k`` evaluations on one channel, computed in float64.

    **Check.** The returned operator applies these factors, so its exact norm is a proof about the
    map it computes. That this map is ``fn`` is checked on two random inputs of the full shape, in
    float64, to a relative ``1e-9``: a map that is not separable, or that mixes channels, differs
    there (with probability one). Such a map raises :class:`~lipbound.errors.UnsupportedOperation`.
    """
    in_shape = tuple(int(s) for s in in_shape)
    if not 1 <= axes <= len(in_shape):
        raise ValueError(f"axes must be in 1..{len(in_shape)}, got {axes}")
    lead, spatial = in_shape[: len(in_shape) - axes], in_shape[len(in_shape) - axes:]
    ones = (1,) * len(lead)
    f64 = dict(dtype=torch.float64, device=device)

    def one_channel(x: torch.Tensor) -> torch.Tensor:  # (n, *ones, *spatial) -> (n, *spatial_out)
        y = _call(fn, x, label, where)
        if y.dim() != x.dim() or tuple(y.shape[: 1 + len(lead)]) != (x.shape[0], *ones):
            raise UnsupportedOperation(label, where, f"it does not act on its last {axes} axes alone")
        return y.reshape(y.shape[0], *y.shape[1 + len(lead):])

    z = one_channel(torch.ones((1, *ones, *spatial), **f64))[0]
    if not bool((z != 0).any()):
        raise UnsupportedOperation(label, where, "it maps constant inputs to zero: no per-axis matrices to read")
    r = tuple(int(i) for i in torch.unravel_index(z.abs().argmax(), z.shape))
    factors = []
    for k, n in enumerate(spatial):
        basis_shape = (-1, *ones, *([1] * k), n, *([1] * (axes - k - 1)))
        chunk = max(1, PROBE_NUMEL // math.prod(spatial))
        cols = []
        for start in range(0, n, chunk):
            j = torch.arange(start, min(n, start + chunk), device=device)
            basis = (torch.arange(n, device=device) == j[:, None]).to(torch.float64).reshape(basis_shape)
            y = one_channel(torch.ones((len(j), *ones, *spatial), **f64) * basis)
            cols.append(y[(slice(None), *(slice(None) if l == k else r[l] for l in range(axes)))])
        factors.append(torch.cat(cols).T)
    factors[0] = factors[0] / z[r] ** (axes - 1)
    _check_reproduces(Kronecker(factors, in_shape, label), fn, where, f"a separable map of its last {axes} axes")
    return Kronecker(factors, in_shape, label, dtype or torch.get_default_dtype())


class Gather(LinearOperator):
    """``y_i = x_{index_i}`` on flattened inputs and outputs (indexing, slicing: ``x[:, 1:3]``,
    ``x[:, [0, 0, 2]]``).

    **Norm (exact).** ``A_ij = 1`` when ``index_i = j``, so ``A^T A = diag(count_j)`` with
    ``count_j`` the number of outputs that read input ``j``: ``||A||_2 = sqrt(max_j count_j)``
    (1 for a slice, which reads each input at most once).
    """

    def __init__(self, index: torch.Tensor, in_shape: Sequence[int], label: str = "Select",
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_shape, index.shape)
        if index.dtype != torch.long or index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= self.in_numel:
            raise ValueError(f"a gather needs a non-empty long index into {self.in_numel} entries")
        self.index = index
        self.label = label
        self._dtype = dtype

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).index_select(1, self.index.reshape(-1)).reshape(x.shape[0], *self.out_shape)

    def structural_bound(self) -> StructuralBound:
        counts = torch.bincount(self.index.reshape(-1), minlength=self.in_numel)
        return StructuralBound(math.sqrt(int(counts.max())), True, "selection: sqrt(most reads of one input)")

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.index,)

    @property
    def device(self) -> torch.device:
        return self.index.device

    def to(self, device=None, dtype=None) -> "Gather":
        return Gather(self.index.to(device=device), self.in_shape, self.label, dtype or self.dtype)


def selection(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int], label: str,
              dtype: torch.dtype | None = None, device: torch.device | str | None = None,
              where: str = "a selection") -> Gather:
    """The :class:`Gather` operator of ``fn``, a map that picks entries of its input (indexing).

    The index is ``fn`` applied to the numbers ``0 .. n-1`` laid out in the input shape (float64,
    exact below ``2^53``). The returned operator applies that index; that it reproduces ``fn``
    exactly is checked on two random inputs (a map that is not a selection fails there), else
    :class:`~lipbound.errors.UnsupportedOperation`.
    """
    in_shape = tuple(int(s) for s in in_shape)
    positions = torch.arange(math.prod(in_shape), dtype=torch.float64, device=device).reshape(1, *in_shape)
    index = _call(fn, positions, label, where)
    if index.shape[:1] != (1,) or index.numel() == 0 or not bool(
            ((index == index.round()) & (index >= 0) & (index < positions.numel())).all()):
        raise UnsupportedOperation(label, where, "it does not pick entries of its input")
    op = Gather(index[0].long(), in_shape, label, dtype)
    _check_reproduces(op.to(dtype=torch.float64), fn, where, "a selection of its input entries")
    return op


def _call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, label: str, where: str) -> torch.Tensor:
    with torch.no_grad():
        try:
            return fn(x)
        except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError) as exc:
            reason = f"it fails on a probe input ({type(exc).__name__}: {exc})"
            raise UnsupportedOperation(label, where, reason) from None


def _check_reproduces(op: LinearOperator, fn: Callable[[torch.Tensor], torch.Tensor], where: str, what: str) -> None:
    """``op`` computes ``fn`` on two random float64 inputs (relative ``1e-9`` of the largest entry)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *op.in_shape), generator=gen, dtype=torch.float64).to(op.device)
    expected = _call(fn, x, op.label, where)
    with torch.no_grad():
        got = op.matvec(x)
    if got.shape != expected.shape or not bool((got - expected).abs().max() <= _CHECK_RTOL * expected.abs().max()):
        raise UnsupportedOperation(op.label, where, f"it is not {what} (its read-off does not reproduce it)")
