"""ONNX ``Resize`` as an exact linear map (a mixin of the ONNX builder,
:mod:`lipbound.frontends.onnx_builder`).

Every mode of Resize but ``tf_crop_and_resize`` is *separable*: along each resized axis, output
``i`` is a fixed combination ``sum_j B[i, j] x_j`` of the input entries along that axis, and the
n-D map applies those 1-D matrices one axis after the other (the ONNX reference does exactly
that). The per-sample map is therefore ``I ⊗ B_1 ⊗ ... ⊗ B_d``, a
:class:`~lipbound.linalg.structured.Kronecker` operator, and its norm ``prod_k ||B_k||_2`` is exact
(SVDs of ``d`` small matrices). No sign of the weights is assumed: bicubic weights are negative
near the centre's neighbours, and a bound that assumed non-negative weights (the row sums, 1)
would be wrong for them.

:func:`resize_matrix` builds each ``B_k`` in float64 from the ONNX operator's definition (opset 19,
as ``onnx.reference`` implements it): the source coordinate ``x`` of output ``i`` from
``coordinate_transformation_mode``; ``r`` the fraction of ``x`` in ``(0, 1]`` (1 at an integer,
so that the window prefers the pixel on the left); the window of the ``n`` input indices nearest
``x``, clamped to the input (edge padding); the weights of ``r`` for ``nearest`` (by
``nearest_mode``), ``linear`` (``1 - r, r``), ``cubic`` (Keys' kernel with ``cubic_coeff_a``);
with ``antialias`` (opset 18) and a downscale ``s < 1``, the kernel stretched by ``1 / s`` and
normalised; with ``exclude_outside``, the weights outside the input zeroed and renormalised. The
operator applies these matrices, so its norm is a proof about the map the graph computes; that
the map is the model's Resize is checked against ``onnx.reference`` with the rest of the graph
(``from_onnx(check=True)``), and tests compare the dense matrices with it and with torch.

``tf_crop_and_resize`` (extrapolated constants, ``roi``) is refused, and so are ``align_corners`` and
``pytorch_half_pixel`` with scales whose output length ``scale x n`` is fractional: the spec divides
by the (integer) output length there and ``onnx.reference`` by ``scale x n``, so the model's map
is ambiguous.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import InvalidInput, UnsupportedOperation
from ..linalg.structured import Kronecker
from .onnx_common import where as _where

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source(n_in: int, n_out: int, scale: float, coordinate_mode: str) -> np.ndarray:
    """The source coordinate of each output index along one axis (``scale``: output per input)."""
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in  # the output size before flooring
    if coordinate_mode == "align_corners":
        return np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)
    if coordinate_mode == "asymmetric":
        return y / scale
    if coordinate_mode == "pytorch_half_pixel":
        return np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    if coordinate_mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    # half_pixel_symmetric: the centre of the input maps to the centre of the output
    offset = n_in / 2 * (1 - n_out / width)
    return offset + (y + 0.5) / scale - 0.5


def _keys(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` (``a = -0.75``: ONNX's default)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _weights(r: np.ndarray, scale: float, mode: str, nearest_mode: str, cubic_a: float,
             antialias: bool) -> tuple[int, np.ndarray]:
    """The first window offset ``start`` (relative to ``x - r``) and the weights ``(n_out, n)`` of
    the window ``x - r + start + [0, n)`` for each fraction ``r`` in ``(0, 1]``."""
    if mode == "nearest":
        right = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5, "floor": np.zeros_like(r, bool),
                 "ceil": np.ones_like(r, bool)}[nearest_mode] | (r == 1.0)
        return 0, np.stack([~right, right], axis=1).astype(np.float64)
    if not antialias:
        if mode == "linear":
            return 0, np.stack([1 - r, r], axis=1)
        return -1, _keys(np.arange(-1, 3)[None, :] - r[:, None], cubic_a)
    s = min(scale, 1.0)  # antialias stretches the kernel by 1 / s when downscaling
    start = int(np.floor((-1 if mode == "linear" else -2) / s) + 1)
    t = (np.arange(start, 2 - start)[None, :] - r[:, None]) * s
    w = np.clip(1 - np.abs(t), 0, 1) if mode == "linear" else _keys(t, cubic_a)
    return start, w / w.sum(axis=1, keepdims=True)


def resize_matrix(n_in: int, n_out: int, scale: float, mode: str, coordinate_mode: str = "half_pixel",
                  nearest_mode: str = "round_prefer_floor", cubic_a: float = -0.75, exclude_outside: bool = False,
                  antialias: bool = False) -> np.ndarray:
    """The ``(n_out, n_in)`` float64 matrix of ONNX Resize along one axis (module docstring)."""
    x = _source(n_in, n_out, scale, coordinate_mode)
    floor = np.floor(x)
    integer = x == floor
    r = np.where(integer, 1.0, x - floor)
    start, w = _weights(r, scale, mode, nearest_mode, cubic_a, antialias)
    index = (floor - integer).astype(np.int64)[:, None] + start + np.arange(w.shape[1])[None, :]
    if exclude_outside:
        w = np.where((index < 0) | (index >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    out = np.zeros((n_out, n_in))
    rows = np.broadcast_to(np.arange(n_out)[:, None], index.shape)
    np.add.at(out, (rows, np.clip(index, 0, n_in - 1)), w)
    return out


class ResizeOps:
    """The ``Resize`` handler (``_op_Resize``) of the ONNX builder."""

    def _resize_axes(self, node, shape: Sequence[int]) -> tuple[list[float], list[int]]:
        """The scale and output size of every axis of the ONNX tensor of ``shape``, as
        ``onnx.reference`` resolves them (``scales`` or ``sizes``, ``axes``,
        ``keep_aspect_ratio_policy``)."""
        a = self._attrs(node)
        where = _where(node)
        rank = len(shape)
        scales = self._const(node.input[2], node, "scales") if len(node.input) > 2 and node.input[2] else None
        sizes = self._const(node.input[3], node, "sizes") if len(node.input) > 3 and node.input[3] else None
        scales = None if scales is None or scales.size == 0 else np.asarray(scales, np.float32).reshape(-1)
        sizes = None if sizes is None or sizes.size == 0 else [int(v) for v in np.asarray(sizes).reshape(-1)]
        if (scales is None) == (sizes is None):
            raise InvalidInput(f"Resize at {where} needs exactly one of scales and sizes")
        axes = [int(v) % rank for v in a.get("axes", range(rank))]
        given = scales if scales is not None else sizes
        if len(given) != len(axes) or len(set(axes)) != len(axes):
            raise InvalidInput(f"Resize at {where}: {len(given)} scales or sizes for the axes {axes} of a "
                               f"rank-{rank} tensor")
        if scales is not None:
            if not bool((scales > 0).all()) or not bool(np.isfinite(scales).all()):
                raise InvalidInput(f"Resize at {where}: scales must be positive, got {scales.tolist()}")
            factor = [1.0] * rank
            for ax, s in zip(axes, scales):
                factor[ax] = float(s)
            return factor, [int(f * n) for f, n in zip(factor, shape)]
        if min(sizes) < 1:
            raise InvalidInput(f"Resize at {where}: sizes must be positive, got {sizes}")
        out = list(shape)
        for ax, n in zip(axes, sizes):
            out[ax] = n
        factor = [o / n for o, n in zip(out, shape)]
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise InvalidInput(f"Resize at {where}: unknown keep_aspect_ratio_policy {policy!r}")
            common = (min if policy == "not_larger" else max)(factor[ax] for ax in axes)
            factor = [common if i in axes else 1.0 for i in range(rank)]
            out = [int(common * n + 0.5) if i in axes else n for i, n in enumerate(shape)]
        return factor, out

    def _op_Resize(self, node):
        a = self._attrs(node)
        where = _where(node)
        src = self.dep[node.input[0]]
        mode = a.get("mode", "nearest")
        coordinate_mode = a.get("coordinate_transformation_mode", "half_pixel")
        nearest_mode = a.get("nearest_mode", "round_prefer_floor")
        antialias = bool(a.get("antialias", 0))
        if coordinate_mode == "tf_crop_and_resize":
            raise UnsupportedOperation("Resize", where, "tf_crop_and_resize (a crop with extrapolated constants)")
        if mode not in MODES or coordinate_mode not in COORDINATE_MODES or nearest_mode not in NEAREST_MODES:
            raise InvalidInput(f"Resize at {where}: unknown mode {mode!r}, coordinate_transformation_mode "
                               f"{coordinate_mode!r} or nearest_mode {nearest_mode!r}")
        if antialias and mode == "nearest":
            raise InvalidInput(f"Resize at {where}: antialias applies to the linear and cubic modes only")
        factor, out = self._resize_axes(node, src.onnx_shape)
        resized = [i for i, (f, o, n) in enumerate(zip(factor, out, src.onnx_shape))
                   if not (math.isclose(f, 1.0) and o == n)]  # onnx.reference leaves the others alone
        if not resized:
            self._alias(node.output[0], src)
            return
        if src.batched:
            if resized[0] == 0:
                raise UnsupportedOperation("Resize", where, "it resizes the batch axis")
            factor, out, resized = factor[1:], out[1:], [i - 1 for i in resized]
        self._bounded(node, out, "output")
        if coordinate_mode in ("align_corners", "pytorch_half_pixel") and any(
                not math.isclose(factor[i] * src.shape[i], out[i], rel_tol=1e-9) for i in resized):
            raise UnsupportedOperation("Resize", where, f"{coordinate_mode} with scales that give a fractional output "
                                       "length is ambiguous (the ONNX spec divides by the output length, "
                                       "onnx.reference by scale x input length); give sizes")
        if min(out) < 1:
            raise InvalidInput(f"Resize at {where}: the output shape {out} has an empty axis")
        factors = [torch.as_tensor(resize_matrix(n, o, f, mode, coordinate_mode, nearest_mode,
                                                 float(a.get("cubic_coeff_a", -0.75)),
                                                 bool(a.get("exclude_outside", 0)), antialias))
                   if i in resized else torch.eye(n, dtype=torch.float64)
                   for i, (f, o, n) in enumerate(zip(factor, out, src.shape)) if i >= resized[0]]
        self._affine(node, src, Kronecker(factors, src.shape, f"Resize({mode})", self.dtype))
