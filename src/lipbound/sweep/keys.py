"""Keys of a sweep's results file: what makes two instances "the same work".

A finished instance is identified by the digest of its model, its instance id and the digest of
the settings it ran with (:func:`instance_key`). A rerun with the same results file skips every
key already there; changing the model, the instance or any setting changes the key, so nothing
stale is reused. Digests are SHA-256 of stable byte encodings (file bytes, tensor bytes, sorted
JSON), never of ``pickle`` output, which differs between processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
from enum import Enum
from typing import Any

import torch

from ..graph.ir import Graph

__all__ = ["file_digest", "graph_digest", "settings_digest", "instance_key"]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the bytes of ``path`` (hex, first 16 digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def graph_digest(graph: Graph) -> str:
    """SHA-256 of everything a graph computes with: its nodes' kinds, names, shapes and every
    tensor (dtype, shape, bytes) reachable from them (hex, first 16 digits)."""
    h = hashlib.sha256()
    h.update(repr((graph.input, graph.output, graph.input_shape)).encode())
    for name in sorted(graph.nodes):
        _feed(h, graph.nodes[name], set())
    return h.hexdigest()[:16]


def _feed(h: "hashlib._Hash", obj: Any, seen: set[int]) -> None:
    """Feed a stable encoding of ``obj`` to ``h`` (tensors by value, objects by their fields)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, Enum, torch.dtype, torch.device)):
        h.update(repr(obj).encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"[{len(obj)}".encode())
        for item in obj:
            _feed(h, item, seen)
    elif isinstance(obj, dict):
        h.update(f"{{{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k], seen)
    elif id(obj) in seen:
        h.update(b"<seen>")
    else:
        seen.add(id(obj))
        h.update(type(obj).__qualname__.encode())
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            h.update(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}".encode())
        elif dataclasses.is_dataclass(obj):
            _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, seen)
        elif hasattr(obj, "__dict__"):
            _feed(h, {k: v for k, v in vars(obj).items() if not k.startswith("_cache")}, seen)


def settings_digest(settings: dict[str, Any]) -> str:
    """SHA-256 of the settings as sorted JSON (non-JSON values by ``repr``), first 16 hex digits."""
    text = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def instance_key(model: str, instance: str, settings: str) -> str:
    """The results-file key of one instance: ``model digest / instance id / settings digest``."""
    return f"{model}/{instance}/{settings}"
