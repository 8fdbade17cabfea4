"""Linear operators of PyTorch's affine modules (the torch frontend's layer table).

:func:`operator_of_module` gives the linear part of one affine module at a given input size:
``Linear`` a dense matrix, ``ConvNd``/``ConvTransposeNd`` a convolution (circular padding as a
convolution on the input's torus, other padding modes composed with a separable pad), BatchNorm
in eval mode a per-channel diagonal, pooling, upsampling and padding separable maps of the spatial
axes (:func:`~lipbound.linalg.structured.separable`), flatten a reshape.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput, UnsupportedOperation
from ..linalg.operators import Conv, Dense, Diagonal, LinearOperator, Reshape, compose
from ..linalg.structured import separable

BATCH = 2  # batch size of the recording pass; a reshape that changes it mixes the batch axis

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_ATTENTION = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
              nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_PAD = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
        nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
        nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)



def operator_of_module(m: nn.Module, in_shape: Sequence[int], where: str | None = None,
                       dtype: torch.dtype | None = None, device: torch.device | None = None) -> LinearOperator:
    """The linear part of an affine module (Linear, ConvNd, ConvTransposeNd, BatchNorm in eval
    mode, average pooling, padding, flatten, upsampling) acting on inputs of ``in_shape``.
    Pooling, upsampling (every mode) and padding are separable maps of the spatial axes
    (:func:`~lipbound.linalg.structured.separable`)."""
    in_shape = tuple(in_shape)
    where = where or f"module {type(m).__name__}"
    dtype = dtype or _model_dtype(m)
    if isinstance(m, nn.Linear):
        return Dense(m.weight, in_shape)
    if isinstance(m, _CONV + _CONVT):
        return _conv_operator(m, in_shape, where)
    if isinstance(m, _BN):
        if m.training or m.running_var is None:
            raise UnsupportedOperation(type(m).__name__, where, "batch statistics (track_running_stats=False) "
                                       "make the layer depend on the batch")
        # the scale in float64 (the model's buffers exactly), rounded to the model's dtype for evaluation
        scale = torch.rsqrt(m.running_var.double() + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach().double()
        exact = Diagonal(scale.reshape(-1, *([1] * (len(in_shape) - 1))), in_shape, "BatchNorm")
        if m.running_var.dtype == torch.float64:
            return exact
        rounded = exact.to(dtype=m.running_var.dtype)
        rounded.__dict__["_exact64"] = exact
        return rounded
    if isinstance(m, _AVGPOOL) or isinstance(m, nn.Upsample):
        return separable(m, in_shape, type(m).__name__, len(in_shape) - 1, dtype, device, where)
    if isinstance(m, _PAD):
        mode = getattr(m, "mode", None) or ("circular" if "Circular" in type(m).__name__ else
                                             "reflect" if "Reflection" in type(m).__name__ else
                                             "replicate" if "Replication" in type(m).__name__ else "constant")
        fn = lambda z, p=tuple(m.padding), md=mode: F.pad(z, p, mode=md)  # noqa: E731 (value 0: linear part)
        return separable(fn, in_shape, f"Pad({mode})", len(m.padding) // 2, dtype, device, where)
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        out = m(torch.zeros((BATCH, *in_shape), dtype=dtype))
        if out.shape[0] != BATCH:
            raise UnsupportedOperation(type(m).__name__, where, "it mixes the batch axis")
        return Reshape(in_shape, out.shape[1:])
    raise UnsupportedOperation(type(m).__name__, where, refusal_reason(m))


def refusal_reason(m: nn.Module) -> str:
    """Why a module without a handler is refused (attention is named: it has no global constant)."""
    if isinstance(m, _ATTENTION):
        return ("dot-product attention multiplies input-dependent tensors, so it has no Lipschitz constant "
                "on all of R^n (Kim et al., 2021); lipbound has no handler for it")
    return "no lipbound handler for this layer"


def _conv_operator(m: nn.Module, in_shape: tuple[int, ...], where: str) -> LinearOperator:
    nd = m.weight.dim() - 2
    if len(in_shape) != nd + 1:
        raise InvalidInput(f"{type(m).__name__} at {where} expects inputs (C, {'x'.join('.' * nd)}), got {in_shape}")
    transposed = isinstance(m, _CONVT)
    if m.padding_mode == "circular":
        pads = m._reversed_padding_repeated_twice  # (before, after) per axis, the last axis first
        pairs = [(pads[2 * i], pads[2 * i + 1]) for i in reversed(range(nd))]
        return Conv(m.weight, in_shape, m.stride, (0,) * nd, m.dilation, m.groups, circular=pairs)
    if m.padding_mode != "zeros":
        pad = separable(lambda z: F.pad(z, m._reversed_padding_repeated_twice, mode=m.padding_mode), in_shape,
                        f"Pad({m.padding_mode})", nd, m.weight.dtype, m.weight.device, where)
        conv = Conv(m.weight, pad.out_shape, m.stride, (0,) * nd, m.dilation, m.groups)
        return compose(pad, conv)
    return Conv(m.weight, in_shape, m.stride, m.padding, m.dilation, m.groups, transposed,
                m.output_padding if transposed else None)


def _pool_multiplicity(kernel, stride, dilation, nd: int) -> int:
    """Most windows containing one input: ``prod_d min(k_d, ceil(((k_d - 1) dil_d + 1) / s_d))``."""
    k, s, d = _tup(kernel, nd), _tup(stride if stride else kernel, nd), _tup(dilation, nd)
    return math.prod(min(kk, -(-((kk - 1) * dd + 1) // ss)) for kk, ss, dd in zip(k, s, d))


def _adaptive_multiplicity(in_sizes: Sequence[int], out_sizes: Sequence[int]) -> int:
    """Most adaptive-pooling windows (``[floor(i n/m), ceil((i+1) n/m))``) containing one input."""
    total = 1
    for n, m in zip(in_sizes, out_sizes):
        count = [0] * n
        for i in range(m):
            for j in range((i * n) // m, -(-((i + 1) * n) // m)):
                count[j] += 1
        total *= max(count)
    return total


def _tup(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _model_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
