"""``onnx.reference`` as lipbound's check of an ONNX graph: corrections for the operators it gets
wrong (:func:`_reference_ops`), the evaluator, and the comparison of a finished graph with it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..errors import LipboundError, UnsupportedOperation
from ..graph.ir import Graph
from .onnx_common import first_line as _first_line, where as _where


def _reference_ops() -> list:
    """Corrections to ``onnx.reference`` (1.23), passed to it as ``new_ops``:

    * BatchNormalization in inference mode: the stock evaluator of opsets 9-13 mixes in batch
      statistics whenever ``momentum`` is set (its schema default), although a one-output
      BatchNormalization is in test mode by the spec;
    * MaxPool and AveragePool: the stock evaluator reads 2-D ``pads`` in the wrong order
      (``[top, bottom, left, right]`` instead of ``[top, left, bottom, right]``) on some paths,
      gives SAME_LOWER the output size ``floor(h / s)`` and refuses ``ceil_mode`` with
      ``auto_pad``. :func:`_spec_pool` follows the spec instead, in numpy;
    * ConvTranspose with ``group > 1``: the stock evaluator slices the weight by output channel
      instead of input channel, adds the whole bias to every group and keeps one output channel
      per group. Each group is a ConvTranspose of its own channels (weight ``(C, M/group, k..)``:
      input channels ``C/group`` per group, output channels ``M/group``), evaluated by the stock
      code with ``group=1`` and concatenated.
    """
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_conv_transpose import ConvTranspose as StockConvTranspose

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None):
            if training_mode:
                raise NotImplementedError("BatchNormalization in training mode")
            shape = (-1,) + (1,) * (x.ndim - 2)
            eps = 1e-5 if epsilon is None else epsilon
            y = scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            return ((y + bias.reshape(shape)).astype(x.dtype),)

    class ConvTranspose(StockConvTranspose):
        op_domain = ""

        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,  # noqa: N803
                 output_padding=None, output_shape=None, pads=None, strides=None):
            attrs = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
                         output_padding=output_padding, output_shape=output_shape, pads=pads, strides=strides)
            group = group or 1
            if group == 1:
                return super()._run(X, W, B, group=1, **attrs)
            if X.shape[1] % group or W.shape[0] != X.shape[1] or (B is not None and B.shape[0] != W.shape[1] * group):
                raise ValueError(f"ConvTranspose with group={group}: input {X.shape}, weight {W.shape}")
            parts = zip(np.split(X, group, axis=1), np.split(W, group, axis=0),
                        np.split(B, group) if B is not None else [None] * group)
            return (np.concatenate([super(ConvTranspose, self)._run(x, w, b, group=1, **attrs)[0]
                                    for x, w, b in parts], axis=1),)

    class MaxPool(OpRun):
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
                 storage_order=None, strides=None):
            if len(self.onnx_node.output) > 1:
                raise NotImplementedError("MaxPool with the Indices output")
            return (_spec_pool(x, "max", kernel_shape, strides, dilations, pads, auto_pad, ceil_mode),)

    class AveragePool(OpRun):
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
            kind = "average with pads" if count_include_pad else "average"
            return (_spec_pool(x, kind, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode),)

    return [BatchNormalization, ConvTranspose, MaxPool, AveragePool]


def _spec_pool(x: np.ndarray, kind: str, kernel, strides, dilations, pads, auto_pad, ceil_mode) -> np.ndarray:
    """MaxPool / AveragePool as the ONNX spec (opset 19) states them, in numpy, for the reference
    check: the window starting at ``o s`` in the padded input, taps every ``d``. The output size
    is ``floor((h + pads - e) / s) + 1`` (``e = (k - 1) d + 1``); with ``ceil_mode`` and explicit
    pads the ceiling, less a last window that would start in the end padding; with SAME_* it is
    ``ceil(h / s)``, the odd unit of padding at the end (UPPER) or the start (LOWER). Padding
    counts as ``-inf`` for the maximum; for the average it counts as 0 when ``kind`` is
    ``"average with pads"`` (``count_include_pad=1``) and is left out otherwise. Window parts past
    the padded input (ceil mode) are always left out."""
    nd = x.ndim - 2
    sizes = x.shape[2:]
    strides, dilations = list(strides or [1] * nd), list(dilations or [1] * nd)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    auto_pad = auto_pad or "NOTSET"
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-h // s) for h, s in zip(sizes, strides)]
        total = [max(0, (o - 1) * s + e - h) for o, s, e, h in zip(out, strides, span, sizes)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
    else:
        pads = [0] * 2 * nd if auto_pad == "VALID" or pads is None else list(pads)
        begin, end = pads[:nd], pads[nd:]
        ceil = bool(ceil_mode) and auto_pad == "NOTSET"
        out = []
        for h, s, e, b, f in zip(sizes, strides, span, begin, end):
            n = (-(-(h + b + f - e) // s) if ceil else (h + b + f - e) // s) + 1
            out.append(n - 1 if ceil and (n - 1) * s >= h + b else n)
    pad_value = -np.inf if kind == "max" else 0.0 if kind == "average with pads" else np.nan
    beyond = [max(0, (o - 1) * s + e - (h + b + f)) for o, s, e, h, b, f in zip(out, strides, span, sizes, begin, end)]
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(zip(begin, end)), constant_values=pad_value)
    xp = np.pad(xp, [(0, 0), (0, 0)] + [(0, m) for m in beyond], constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    windows = windows[(slice(None), slice(None), *(slice(0, o * s, s) for o, s in zip(out, strides)),
                       *(slice(None, None, d) for d in dilations))]
    axes = tuple(range(-nd, 0))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: NaN, refused by the frontend anyway
        y = np.nanmax(windows, axis=axes) if kind == "max" else np.nanmean(windows, axis=axes)
    return y.astype(x.dtype)


def reference_evaluator(model, opset: int | None = None):
    """``onnx.reference.ReferenceEvaluator`` for ``model`` (a ModelProto, or a NodeProto with its
    ``opset``), with the corrections of :func:`_reference_ops`."""
    from onnx.reference import ReferenceEvaluator
    opsets = None if opset is None else {"": opset}
    return ReferenceEvaluator(model, opsets=opsets, new_ops=_reference_ops())


def _reference_failure(model, feeds: dict[str, np.ndarray], exc: Exception) -> UnsupportedOperation:
    """The error for a model ``onnx.reference`` cannot run: it names the first node that fails
    when the nodes are evaluated one by one."""
    reason = (f"onnx.reference, which checks lipbound's graph against the model, cannot evaluate it "
              f"({type(exc).__name__}: {_first_line(exc)}); check=False skips the check")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    from onnx import numpy_helper
    results: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    results.update(feeds)
    for node in model.graph.node:
        try:
            values = reference_evaluator(node, opset).run(None, {i: results[i] for i in node.input if i})
        except Exception as node_exc:
            return UnsupportedOperation(node.op_type, _where(node), f"onnx.reference, which checks lipbound's graph "
                                        f"against the model, cannot evaluate it ({type(node_exc).__name__}: "
                                        f"{_first_line(node_exc)}); check=False skips the check")
        results.update(zip(node.output, values))
    return UnsupportedOperation("the ONNX model", "its graph", reason)



def check_against_reference(model, graph: Graph, batched: bool, output: str, samples: int = 2,
                            tol: float = 1e-4) -> float:
    """Largest difference between ``graph`` and ``onnx.reference`` on ``samples`` random inputs in
    [0, 1), relative to the output's size; raises :class:`~lipbound.errors.LipboundError` above
    ``tol``, and :class:`~lipbound.errors.UnsupportedOperation` naming the node when
    ``onnx.reference`` cannot evaluate the model."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((samples, *graph.input_shape), generator=gen, dtype=graph.dtype)
    with torch.no_grad():
        got = graph.forward(x).double().numpy()
    inp = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    np_dtype = np.float64 if graph.dtype == torch.float64 else np.float32
    feeds = [{inp: (x[i:i + 1] if batched else x[i]).numpy().astype(np_dtype)} for i in range(samples)]
    try:
        ev = reference_evaluator(model)
        with np.errstate(all="ignore"):  # onnx.reference's sigmoid overflows harmlessly on large inputs
            refs = [np.asarray(ev.run([output], f)[0], dtype=np.float64) for f in feeds]
    except Exception as exc:  # a model onnx.reference cannot run: name the node
        raise _reference_failure(model, feeds[0], exc) from None
    worst = 0.0
    for ref, out in zip(refs, got):
        if ref.size != out.size:
            raise LipboundError(f"internal check failed: the graph of '{graph.name}' has {out.size} outputs per "
                                f"sample where the ONNX model has {ref.size}; please report this model")
        err = float(np.abs(ref.reshape(-1) - out.reshape(-1)).max()) / max(1.0, float(np.abs(ref).max()))
        worst = max(worst, err)
    if not worst <= tol:
        raise LipboundError(f"internal check failed: the graph of '{graph.name}' differs from the ONNX model by "
                            f"{worst:.3g} (relative); please report this model")
    return worst
