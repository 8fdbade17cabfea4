"""ONNX affine layers: Gemm, MatMul, Conv, ConvTranspose, BatchNormalization, arithmetic with
constants and sums of branches (a mixin of the ONNX builder, :mod:`lipbound.frontends.onnx_builder`)."""

from __future__ import annotations


import numpy as np

from ..errors import InvalidInput, UnsupportedOperation
from ..linalg.operators import Conv, Dense, Diagonal, LinearOperator, Permute, compose
from ..graph.ir import Add
from .onnx_common import OnnxTensor as _Tensor, pads as _pads, where as _where


class AffineOps:
    """Affine handlers (``_op_<OpType>``) of the ONNX builder."""

    def _op_Gemm(self, node):
        a = self._attrs(node)
        if node.input[0] not in self.dep:
            raise UnsupportedOperation("Gemm", _where(node), "only Gemm(x, W) with x the input-dependent tensor "
                                       "is supported (W @ x: export as MatMul)")
        src = self.dep[node.input[0]]
        w = self._const(node.input[1], node, "second operand B")
        c = self._const(node.input[2], node, "bias C") if len(node.input) > 2 else None
        if len(src.onnx_shape) != 2 or w.ndim != 2:
            raise InvalidInput(f"Gemm at {_where(node)} needs 2-D operands, got {src.onnx_shape} and {w.shape}")
        w = float(a.get("alpha", 1.0)) * (w.T if a.get("transB", 0) else w)  # (K, N)
        first: LinearOperator | None = None
        shape = src.shape
        if a.get("transA", 0):
            if src.batched:
                raise UnsupportedOperation("Gemm", _where(node), "transA=1 would move the batch axis")
            first = Permute((1, 0), src.shape)
            shape = first.out_shape
        op: LinearOperator = Dense(self._t(w.T), shape)
        if first is not None:
            op = compose(first, op)
        bias = None
        if c is not None:
            out_onnx = ((1,) if src.batched else ()) + op.out_shape
            bias = self._align(float(a.get("beta", 1.0)) * c, out_onnx, src.batched, node)
        self._affine(node, src, op, bias)

    def _op_MatMul(self, node):
        a, b = node.input[0], node.input[1]
        if a in self.dep and b in self.dep:
            raise UnsupportedOperation("MatMul", _where(node), "a product of two input-dependent tensors "
                                       "(attention-like) is not globally Lipschitz")
        if a in self.dep:
            src, w = self.dep[a], self.consts[b]
            if w.ndim != 2:
                raise UnsupportedOperation("MatMul", _where(node), f"only x @ W with a 2-D constant W (got {w.shape})")
            self._affine(node, src, Dense(self._t(w.T), src.shape))
            return
        src, w = self.dep[b], self.consts[a]
        if w.ndim != 2:
            raise UnsupportedOperation("MatMul", _where(node), f"only W @ x with a 2-D constant W (got {w.shape})")
        if len(src.onnx_shape) == 1:  # matrix times vector
            self._affine(node, src, Dense(self._t(w), src.shape))
            return
        if len(src.shape) < 2:
            raise UnsupportedOperation("MatMul", _where(node), "W @ x would contract the batch axis")
        nd = len(src.shape)
        swap = (*range(nd - 2), nd - 1, nd - 2)
        first = Permute(swap, src.shape)
        dense = Dense(self._t(w), first.out_shape)
        self._affine(node, src, compose(compose(first, dense), Permute(swap, dense.out_shape)))

    def _spatial(self, node, nd: int) -> _Tensor:
        src = self.dep[node.input[0]]
        if not src.batched or len(src.shape) != nd + 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)} expects an input (N, C, {nd} spatial axes), "
                               f"got shape {src.onnx_shape}")
        return src

    def _conv_parts(self, node):
        """Attributes, weight, bias (or None), number of spatial axes, input, strides, dilations
        and groups of a Conv or ConvTranspose node, checked."""
        a = self._attrs(node)
        w = self._t(self._const(node.input[1], node, "weight"))
        b = self._const(node.input[2], node, "bias") if len(node.input) > 2 else None
        nd = w.dim() - 2
        src = self._spatial(node, nd)
        stride, dil = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
        groups = int(a.get("group", 1))
        if not len(stride) == len(dil) == nd or min(stride + dil + [groups]) < 1:
            raise InvalidInput(f"{node.op_type} at {_where(node)}: strides {stride}, dilations {dil} and group "
                               f"{groups} must be positive, with {nd} strides and dilations")
        return a, w, b, nd, src, stride, dil, groups

    def _op_Conv(self, node):
        a, w, b, nd, src, stride, dil, groups = self._conv_parts(node)
        k = tuple(w.shape[2:])
        begin, end = _pads(a, src.shape[1:], k, stride, dil)
        self._bounded(node, [src.shape[0], *(h + p + q for h, p, q in zip(src.shape[1:], begin, end))], "padded input")
        if begin == end:
            op: LinearOperator = Conv(w, src.shape, stride, begin, dil, groups)
        else:
            pad = self._pad_op(node, src.shape, begin, end, "constant")
            op = compose(pad, Conv(w, pad.out_shape, stride, [0] * nd, dil, groups))
        self._affine(node, src, op, None if b is None else self._t(b).reshape(-1, *[1] * nd))

    def _op_ConvTranspose(self, node):
        a, w, b, nd, src, stride, dil, groups = self._conv_parts(node)
        k = list(w.shape[2:])
        outpad = list(a.get("output_padding", [0] * nd))
        sizes = src.shape[1:]
        full = [(h - 1) * s + (kk - 1) * d + 1 for h, s, kk, d in zip(sizes, stride, k, dil)]
        self._bounded(node, [w.shape[1] * groups, *(f + max(op, 0) for f, op in zip(full, outpad))], "output")
        auto = a.get("auto_pad", "NOTSET")
        if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
            target = list(a["output_shape"])[-nd:] if "output_shape" in a else [h * s for h, s in zip(sizes, stride)]
            total = [f + op - t for f, op, t in zip(full, outpad, target)]
            if auto not in ("SAME_UPPER", "SAME_LOWER") and any(t % 2 for t in total):
                raise UnsupportedOperation("ConvTranspose", _where(node), "output_shape with an odd total padding "
                                           "is ambiguous (the ONNX spec and onnxruntime split it differently); "
                                           "give explicit pads")
            upper = auto != "SAME_LOWER"
            begin = [t // 2 if upper else t - t // 2 for t in total]
            end = [t - t // 2 if upper else t // 2 for t in total]
        elif auto == "VALID":
            begin, end = [0] * nd, [0] * nd
        else:
            pads = list(a.get("pads", [0] * 2 * nd))
            begin, end = pads[:nd], pads[nd:]
        if begin == end and all(op < max(s, d) for op, s, d in zip(outpad, stride, dil)):
            op_: LinearOperator = Conv(w, src.shape, stride, begin, dil, groups, transposed=True, output_padding=outpad)
        else:
            conv = Conv(w, src.shape, stride, [0] * nd, dil, groups, transposed=True)
            crop = self._pad_op(node, conv.out_shape, [-x for x in begin], [op - e for op, e in zip(outpad, end)],
                                "constant")
            op_ = compose(conv, crop)
        self._affine(node, src, op_, None if b is None else self._t(b).reshape(-1, *[1] * nd))

    def _op_BatchNormalization(self, node):
        a = self._attrs(node)
        if a.get("training_mode", 0) or any(o for o in node.output[1:]):
            raise UnsupportedOperation("BatchNormalization", _where(node), "training mode uses batch statistics")
        src = self.dep[node.input[0]]
        if len(src.onnx_shape) < 2:
            raise InvalidInput(f"BatchNormalization at {_where(node)} needs an input (N, C, ...), got {src.onnx_shape}")
        scale, bias, mean, var = (self._const(n, node, what) for n, what in
                                  zip(node.input[1:5], ("scale", "bias", "mean", "variance")))
        s = scale / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        axis = 0 if src.batched else 1  # the channel axis per sample
        shape = (-1,) + (1,) * (len(src.shape) - axis - 1)
        op = Diagonal(self._t(s).reshape(shape), src.shape, "BatchNorm")
        self._affine(node, src, op, self._t(bias - mean * s).reshape(shape))

    # ---- arithmetic with constants, sums of branches ------------------------------------
    def _binary(self, node, kind: str) -> None:
        a, b = node.input[0], node.input[1]
        where = _where(node)
        out = node.output[0]
        if a in self.dep and b in self.dep:
            if kind in ("Mul", "Div"):
                raise UnsupportedOperation(kind, where, "a product or quotient of two input-dependent tensors "
                                           "is not globally Lipschitz")
            ta, tb = self.dep[a], self.dep[b]
            if ta.shape != tb.shape or ta.batched != tb.batched:
                raise UnsupportedOperation(kind, where, f"the two branches must have the same shape "
                                           f"(got {ta.onnx_shape} and {tb.onnx_shape})")
            if kind == "Sub":
                neg = self._fresh(f"{out}/negate")
                self._affine(node, tb, Diagonal(self._t(-1.0), tb.shape, "Negate"), out=neg)
                tb = self.dep[neg]
            origin = f"{node.op_type} '{node.name or out}'"
            self._add(Add(out, [ta.node, tb.node], ta.shape, origin), ta.batched, ta.value + tb.value)
            return
        x_first = a in self.dep
        src = self.dep[a if x_first else b]
        c = self._align(self._const(b if x_first else a, node, "constant operand"), src.onnx_shape, src.batched, node)
        one = self._t(1.0)
        if kind == "Add":
            self._affine(node, src, Diagonal(one, src.shape, "Shift"), c)
        elif kind == "Sub":
            self._affine(node, src, Diagonal(one if x_first else -one, src.shape, "Shift" if x_first else "Negate"),
                         -c if x_first else c)
        elif kind == "Mul":
            self._affine(node, src, Diagonal(c, src.shape, "Multiply"))
        else:
            if not x_first:
                raise UnsupportedOperation("Div", where, "division by an input-dependent tensor is not Lipschitz")
            if not bool((c != 0).all()):
                raise InvalidInput(f"Div at {where} divides by zero")
            self._affine(node, src, Diagonal(1.0 / c, src.shape, "Divide"))

    def _op_Add(self, node):
        self._binary(node, "Add")

    def _op_Sub(self, node):
        self._binary(node, "Sub")

    def _op_Mul(self, node):
        self._binary(node, "Mul")

    def _op_Div(self, node):
        self._binary(node, "Div")

    def _op_Neg(self, node):
        src = self.dep[node.input[0]]
        self._affine(node, src, Diagonal(self._t(-1.0), src.shape, "Negate"))

    def _op_Sum(self, node):
        if len(node.input) == 1:
            self._op_Identity(node)
        elif len(node.input) == 2:
            self._binary(node, "Add")
        else:
            raise UnsupportedOperation("Sum", _where(node), "Sum of more than two tensors; use Add")
