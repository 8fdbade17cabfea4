"""Shared pieces of the ONNX frontend: the per-sample tensor record, node names in messages,
padding arithmetic, the model's input (dtype, shape, batch axis), dependency and pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import InvalidInput, UnsupportedOperation
from ..graph.ir import Graph
from .from_torch import _check_shape

BATCH = 2  # size of the recording batch
Shape = tuple[int, ...]
MAX_INPUT_NUMEL = 1 << 27  # a larger declared input is refused (hostile shapes would exhaust memory)


@dataclass
class OnnxTensor:
    """An input-dependent ONNX tensor: the IR node holding it, its shape per sample, whether its
    first ONNX axis is the batch axis, and its value on the recording batch."""

    node: str
    shape: Shape
    batched: bool
    value: torch.Tensor

    @property
    def onnx_shape(self) -> Shape:
        return ((1,) if self.batched else ()) + self.shape



def torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX per-axis (begin, end) lists -> ``F.pad``'s order (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(list(begin)), reversed(list(end))):
        out += [int(b), int(e)]
    return out



def where(node) -> str:
    out = node.output[0] if node.output else "?"
    return f"ONNX node '{node.name}' (output '{out}')" if node.name else f"the ONNX node with output '{out}'"


def pads(attrs: dict[str, Any], sizes: Sequence[int], k, stride, dil) -> tuple[list[int], list[int]]:
    """Per-axis (begin, end) padding of a convolution or pooling from ``pads`` or ``auto_pad``
    (SAME_*: output ``ceil(H / s)``, the odd unit at the end for SAME_UPPER, at the start for
    SAME_LOWER)."""
    nd = len(sizes)
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = [int(p) for p in attrs.get("pads", [0] * 2 * nd)]
        return pads[:nd], pads[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise InvalidInput(f"unknown auto_pad {auto!r}")
    begin, end = [], []
    for h, kk, s, d in zip(sizes, k, stride, dil):
        out = -(-h // s)
        total = max(0, (out - 1) * s + (kk - 1) * d + 1 - h)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin, end


def input_dtype(vi) -> torch.dtype:
    from onnx import TensorProto
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedOperation("a non-tensor input", f"input '{vi.name}'", "lipbound needs one float tensor input")
    elem = vi.type.tensor_type.elem_type
    if elem == TensorProto.DOUBLE:
        return torch.float64
    if elem in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
        return torch.float32
    raise InvalidInput(f"the model's input '{vi.name}' is not a float tensor (ONNX type {elem}): "
                       "a network of integers has no Lipschitz constant in lipbound's sense")


def _shape_hint(dims: list[int | None]) -> str:
    """What to give instead: the model's own input shape without its batch axis (empty when it is
    not static)."""
    rest = dims[1:] if len(dims) >= 2 and dims[0] in (None, 1) else dims
    if not rest or any(d is None for d in rest):
        return ""
    return (f": this model's input is {tuple(rest)} without the batch axis: give --input-shape "
            f"{','.join(map(str, rest))} (input_shape={tuple(rest)}) or omit it")


def resolve_input(vi, given: Sequence[int] | None) -> tuple[Shape, bool]:
    """The input shape per sample and whether the model's input has a batch axis."""
    tt = vi.type.tensor_type
    dims = None
    if tt.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    pretty = "unknown" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    if given is not None:
        given = _check_shape(given)
        if dims is None:
            return given, True
        if len(dims) == len(given) + 1:
            if dims[0] not in (None, 1):
                raise InvalidInput(f"the model's input '{vi.name}' {pretty} has a fixed batch of {dims[0]}; "
                                   "lipbound needs a batch axis of size 1 or symbolic")
            batched, rest = True, dims[1:]
        elif len(dims) == len(given):
            batched, rest = False, dims
        else:
            raise InvalidInput(f"input shape {given} does not fit the model's input '{vi.name}' of shape {pretty}"
                               f"{_shape_hint(dims)}")
        if any(r is not None and r != g for r, g in zip(rest, given)):
            raise InvalidInput(f"input shape {given} does not fit the model's input '{vi.name}' of shape {pretty}"
                               f"{_shape_hint(dims)}")
        return given, batched
    if dims is None or not dims:
        raise InvalidInput(f"the model's input '{vi.name}' has no static shape: give it without batch axis "
                           "(input_shape=..., CLI --input-shape)")
    batched = len(dims) >= 2 and dims[0] in (None, 1)
    rest = dims[1:] if batched else dims
    if any(d is None for d in rest):
        raise InvalidInput(f"the model's input '{vi.name}' has a dynamic shape {pretty}: give the input shape "
                           "without batch axis (input_shape=..., CLI --input-shape)")
    if any(d == 0 for d in rest):
        raise InvalidInput(f"the model's input '{vi.name}' has a zero-size shape {pretty}")
    return tuple(rest), batched


def dependent(nodes, input_name: str) -> set[str]:
    """Names of the tensors that depend on the network input (``Shape`` and ``Size`` of such a
    tensor are constants: the shape per sample is fixed)."""
    dep = {input_name}
    for node in nodes:
        if node.op_type not in ("Shape", "Size") and any(i in dep for i in node.input):
            dep.update(o for o in node.output if o)
    return dep


def prune(graph: Graph) -> Graph:
    """Drop nodes the output does not depend on (dead branches of the ONNX graph)."""
    keep = {graph.output}
    for node in reversed(list(graph)):
        if node.name in keep:
            keep.update(node.inputs)
    if len(keep) == len(graph.nodes):
        return graph
    nodes = {k: n for k, n in graph.nodes.items() if k in keep}
    return Graph(nodes, graph.input, graph.output, graph.name, graph.notes)



def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__

