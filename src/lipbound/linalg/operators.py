"""Linear operators: the one interface every spectral method works on (DESIGN §2).

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
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

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
        """The matrix ``(out_numel, in_numel)``, built column block by column block."""
        n = self.in_numel
        cols = []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            eye = torch.zeros((stop - start, n), dtype=self.dtype, device=self.device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            cols.append(self.matvec(eye.reshape(-1, *self.in_shape)).reshape(stop - start, -1))
        return torch.cat(cols, 0).T


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


class Dense(_TensorOperator):
    """``x -> x W^T`` on the last axis of ``x`` (``nn.Linear`` without bias). ``||A|| = ||W||_2``."""

    label = "Linear"
    _tensors = ("weight",)

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
        s = torch.linalg.matrix_norm(self.weight.double(), ord=2).item()
        return StructuralBound(s, True, "SVD of the weight")

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


class Conv(_TensorOperator):
    """Convolution (``nn.ConvNd`` or ``nn.ConvTransposeNd`` without bias), zero padding, any
    stride, dilation and groups, for N = 1, 2, 3 spatial axes.

    **Certified bound** (:meth:`structural_bound`, after Sedghi, Gupta & Long, ICLR 2019, extended
    to strides by a polyphase split). Take one spatial axis of input size ``H``, padding ``p`` per
    side, kernel ``k``, dilation ``d``, stride ``s``; write ``t = a d`` for the offset of tap ``a``.
    The layer is ``y[i] = sum_a w[a] x_pad[s i + t]`` where ``x_pad`` is ``x`` surrounded by
    ``p`` zeros.

    * *Zero padding.* Embed ``x`` at positions ``p .. p+H-1`` of a circular grid of size
      ``N = s M >= H + 2p``. Every index ``s i + t`` read by the layer is at most ``H + 2p - 1``
      (the last window ends inside the padded input), hence below ``N``, and never wraps, so the layer equals the circular convolution on that grid restricted
      to inputs supported on the embedded positions and to the layer's outputs: it is a sub-block
      of the circular operator (an isometric embedding followed by a coordinate restriction), and a
      sub-block never has a larger norm.
    * *Stride.* Split the circular input into its ``s`` phases ``x_r[m] = x[s m + r]`` (a
      permutation, hence unitary) and write ``t = s q + r``: then
      ``y[i] = sum_r sum_q w_r[q] x_r[i + q]`` with ``w_r[q] = w[a]`` for ``a d = s q + r``, a sum
      of stride-1 circular convolutions on the grid of size ``M``. The 1-D DFT diagonalises each,
      so the whole map is unitarily equivalent to the block-diagonal matrix whose block at
      frequency ``f`` is the ``c_out x (c_in s)`` matrix ``[W_r(f)]_r`` of the phase kernels' DFTs.
      Its norm is the largest singular value over the ``M`` frequencies: the exact norm of the
      circular strided convolution, and a certified bound of the zero-padded one. Without the
      split (stride 1 bound followed by a subsampling of norm 1) the bound would hold too, but
      loosely; with ``s = 1`` both coincide. In several axes the phases and frequencies are
      products; groups make the operator block diagonal (the maximum over groups).
    * *Transposed convolution* is the adjoint of the convolution with the same weight, stride,
      padding and dilation acting on the transposed layer's output grid; adjoints have the same
      norm, so the same bound applies with ``H`` the output size.
    * *Circular padding* (``circular``: ``(before, after)`` per axis, each ``<= H``, applied before
      a convolution without zero padding): ``x_pad[i] = x[(i - b) mod H]``, so
      ``y[o] = sum_a w[a] x[(s o + a d - b) mod H] = (C x)[(s o - b) mod H]`` with ``C`` the
      stride-1 circular convolution on the torus of size ``H`` itself (taps at ``a d mod H``):
      ``y = R C x`` with ``R`` a selection of rows, ``||R|| = sqrt(m)``, ``m`` the most outputs
      that pick one row. The DFT on that torus gives ``||C||`` exactly, so
      ``||A|| <= sqrt(m) ||C||``. When ``s`` divides ``H`` (and the dilated kernel spans at most
      ``H`` on each axis), every row picked lies in one phase class ``-b mod s``, and a circular
      shift (unitary) takes that class to the rows ``s j``: ``C`` may then be replaced by the
      circular *strided* convolution, whose exact norm is the polyphase DFT above on the grid
      ``H``. Either way the bound is the norm itself when ``R`` is a bijection onto the rows
      (``m = 1`` and ``H / s`` outputs, e.g. stride 1 with ``(k - 1) d = b + after``). The other
      route, the padding's norm times the bound of the convolution without padding, is valid
      too: the smaller one is used.

    The computation is in float64 and costs one FFT of the kernel and one small SVD per frequency.
    """

    _tensors = ("weight",)

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int] | str, dilation: Sequence[int], groups: int = 1,
                 transposed: bool = False, output_padding: Sequence[int] | None = None,
                 circular: Sequence[tuple[int, int]] | None = None) -> None:
        self.weight = weight.detach()
        nd = weight.dim() - 2
        if nd not in (1, 2, 3):
            raise ValueError(f"convolution with {nd} spatial axes")
        self.circular = None if circular is None else tuple((int(b), int(a)) for b, a in circular)
        if self.circular is not None and (
                transposed or isinstance(padding, str) or any(padding) or len(self.circular) != nd
                or any(not 0 <= p <= h for pair, h in zip(self.circular, in_shape[1:]) for p in pair)):
            raise ValueError(f"circular padding {circular} needs a convolution without zero padding "
                             f"and pads <= {in_shape[1:]}")
        self.nd = nd
        self.stride = tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = int(groups)
        self.transposed = transposed
        self.output_padding = tuple(output_padding or (0,) * nd)
        self.label = f"ConvTranspose{nd}d" if transposed else f"Conv{nd}d"
        out = self._matvec(torch.zeros((1, *in_shape), dtype=weight.dtype, device=weight.device))
        super().__init__(in_shape, out.shape[1:])

    def _matvec(self, x):
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.nd - 1]
            return fn(x, self.weight, None, self.stride, self.padding, self.output_padding,
                      self.groups, self.dilation)
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        if self.circular is not None:
            x = F.pad(x, [p for pair in reversed(self.circular) for p in pair], mode="circular")
        return fn(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

    def _total_padding(self) -> tuple[int, ...]:
        k = self.weight.shape[2:]
        if isinstance(self.padding, str):  # 'valid' -> 0, 'same' -> d (k - 1) in total
            return tuple(0 if self.padding == "valid" else d * (kk - 1) for d, kk in zip(self.dilation, k))
        return tuple(2 * p for p in self.padding)

    def structural_bound(self):
        if self.circular is not None:
            return self._circular_bound()
        grid = self.out_shape[1:] if self.transposed else self.in_shape[1:]
        extra = self.output_padding if self.transposed else (0,) * self.nd
        sizes = tuple(h + pt + op for h, pt, op in zip(grid, self._total_padding(), extra))
        value = conv_dft_bound(self.weight, sizes, self.stride, self.dilation, self.groups)
        return StructuralBound(value, False, "DFT of the kernel (polyphase for strides)")

    def _circular_bound(self) -> StructuralBound:
        """``min(sqrt(m) ||C||, ||pad|| * bound of the unpadded convolution)`` (class docstring)."""
        sizes, outs = self.in_shape[1:], self.out_shape[1:]
        rows = [(s * torch.arange(n) - b) % h for (b, _), s, n, h in zip(self.circular, self.stride, outs, sizes)]
        reads = [(torch.arange(-b, h + a) % h) for (b, a), h in zip(self.circular, sizes)]
        m_rows = math.prod(int(torch.bincount(r).max()) for r in rows)
        m_pad = math.prod(int(torch.bincount(r).max()) for r in reads)
        k = self.weight.shape[2:]
        if all(h % s == 0 and (kk - 1) * d < h for h, s, kk, d in zip(sizes, self.stride, k, self.dilation)):
            torus = conv_dft_bound(self.weight, sizes, self.stride, self.dilation, self.groups)
            covered = tuple(h // s for h, s in zip(sizes, self.stride))
        else:
            torus = circular_conv_norm(self.weight, sizes, self.dilation, self.groups)
            covered = tuple(sizes)
        torus *= math.sqrt(m_rows)
        padded = tuple(h + b + a for (b, a), h in zip(self.circular, sizes))
        product = math.sqrt(m_pad) * conv_dft_bound(self.weight, padded, self.stride, self.dilation, self.groups)
        bijective = m_rows == 1 and tuple(outs) == covered
        if torus <= product:
            return StructuralBound(torus, bijective, "DFT of the kernel on the input's torus (circular padding)")
        return StructuralBound(product, False, "circular padding's norm times the DFT bound")


def conv_dft_bound(weight: torch.Tensor, padded_sizes: Sequence[int], stride: Sequence[int],
                   dilation: Sequence[int], groups: int) -> float:
    """Exact norm of the circular strided convolution that contains the zero-padded layer.

    ``weight`` has shape ``(c_out, c_in / groups, *k)``; ``padded_sizes`` are ``H + total padding``
    per axis. See :class:`Conv` for the proof that the result bounds the layer's norm.
    """
    nd = weight.dim() - 2
    c_out, cig, *k = weight.shape
    g = groups
    cog = c_out // g
    w = weight.detach().to(torch.float64).reshape(g, cog, cig, *k)
    # dilate the kernel and pad each axis to a multiple of its stride: extent s * qmax
    qmax = [((kk - 1) * d) // s + 1 for kk, d, s in zip(k, dilation, stride)]
    wd = torch.zeros((g, cog, cig, *(q * s for q, s in zip(qmax, stride))), dtype=torch.float64, device=w.device)
    wd[(Ellipsis, *(slice(None, (kk - 1) * d + 1, d) for kk, d in zip(k, dilation)))] = w
    # split every axis t = s q + r into (q, r), move the phases r next to the input channels
    wd = wd.reshape(g, cog, cig, *[n for q, s in zip(qmax, stride) for n in (q, s)])
    q_axes = [3 + 2 * i for i in range(nd)]
    r_axes = [4 + 2 * i for i in range(nd)]
    wd = wd.permute(0, 1, 2, *r_axes, *q_axes).reshape(g, cog, cig * math.prod(stride), *qmax)
    grid = [max(-(-h // s), q) for h, s, q in zip(padded_sizes, stride, qmax)]
    sym = torch.fft.fftn(wd, s=grid, dim=tuple(range(3, 3 + nd)))
    sym = sym.reshape(g, cog, cig * math.prod(stride), -1).permute(0, 3, 1, 2)
    return torch.linalg.matrix_norm(sym, ord=2).max().item()


def circular_conv_norm(weight: torch.Tensor, sizes: Sequence[int], dilation: Sequence[int], groups: int) -> float:
    """Exact norm of the stride-1 circular convolution ``(C x)[m] = sum_a w[a] x[(m + a d) mod H]``
    on the torus ``sizes``: the largest singular value over frequencies ``f`` of the
    ``c_out x c_in`` matrices ``sum_a w[a] exp(-2 pi i f a d / H)`` (per group), in float64."""
    g = groups
    c_out, cig, *k = weight.shape
    w = weight.detach().to(torch.complex128).reshape(g, c_out // g, cig, *k)
    for axis, (kk, d, h) in enumerate(zip(k, dilation, sizes)):
        phase = torch.outer(torch.arange(h, dtype=torch.float64), torch.arange(kk, dtype=torch.float64) * d) / h
        dft = torch.exp(-2j * math.pi * phase).to(w.device)  # (H, k) on this axis
        w = torch.tensordot(w, dft, dims=([3 + axis], [1])).movedim(-1, 3 + axis)
    sym = w.reshape(g, c_out // g, cig, -1).permute(0, 3, 1, 2)
    return torch.linalg.matrix_norm(sym, ord=2).max().item()


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
