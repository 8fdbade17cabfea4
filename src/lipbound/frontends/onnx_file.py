"""Reading an ONNX file safely: parse, refuse hostile external data, check, upgrade old opsets.

This module only turns bytes into a checked ``onnx.ModelProto``; :mod:`lipbound.frontends.from_onnx`
translates it. Every failure is an :class:`~lipbound.errors.InvalidInput` with one readable line:

* a missing file, a file that is not a protobuf ONNX model (truncated, corrupt, another format);
* an external-data reference (weights stored beside the model) whose location is absolute, leaves
  the model's folder (``..``, symbolic links) or names a missing file: refused **before** any of it
  is read, so a model cannot make lipbound read arbitrary files;
* a model the ONNX checker rejects (dangling inputs, bad attributes, unsorted nodes);
* opsets older than :data:`TARGET_OPSET` are upgraded with ``onnx.version_converter`` so that the
  frontend sees one form of each operator (``Pad``'s pads as an input, ``Squeeze`` axes as an
  input, ...); when the converter cannot upgrade a model, the original is kept and a note says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ..errors import InvalidInput

TARGET_OPSET = 13  # the frontend's canonical operator forms

__all__ = ["read_onnx", "TARGET_OPSET"]


def _import_onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the [onnx] extra is part of the test setup
        raise InvalidInput("reading ONNX files needs the 'onnx' package: pip install 'lipbound[onnx]'") from None
    return onnx


def read_onnx(path: str | os.PathLike, notes: list[str] | None = None):
    """Parse, check and (when old) upgrade the ONNX model at ``path``; returns the pair
    ``(original, upgraded)`` of ``onnx.ModelProto`` (the same object when no upgrade was needed).

    ``notes`` (a list) receives one line per transformation worth telling the user (opset upgrade).
    """
    onnx = _import_onnx()
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"ONNX file not found: {path}")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path} is empty, not an ONNX model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InvalidInput(f"{path} is not a readable ONNX model (truncated or corrupt?): "
                           f"{type(exc).__name__}: {_first_line(exc)}") from None
    if not model.HasField("graph") or not (model.graph.node or model.graph.output):
        raise InvalidInput(f"{path} holds no ONNX graph (truncated, corrupt or not an ONNX file)")
    _load_external_data(onnx, model, path.resolve().parent)
    return check_and_upgrade(model, str(path), notes)


def check_and_upgrade(model, label: str, notes: list[str] | None = None):
    """Run the ONNX checker on ``model`` and upgrade its default-domain opset to
    :data:`TARGET_OPSET` when older; returns ``(model, upgraded)``."""
    onnx = _import_onnx()
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidInput(f"{label} is not a valid ONNX model: {_first_line(exc)}") from None
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise InvalidInput(f"{label} imports no version of the standard ONNX operator set")
    if version >= TARGET_OPSET:
        return model, model
    from onnx import version_converter
    try:
        upgraded = version_converter.convert_version(model, TARGET_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        if notes is not None:
            notes.append(f"ONNX opset {version} kept: the version converter failed ({_first_line(exc)})")
        return model, model
    if notes is not None:
        notes.append(f"ONNX opset {version} upgraded to {TARGET_OPSET} with onnx.version_converter")
    return model, upgraded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _tensors(graph) -> Iterator:
    """Every TensorProto of ``graph`` and its subgraphs (initializers and attribute tensors)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _load_external_data(onnx, model, folder: Path) -> None:
    """Check every external-data location, then read them. A location must be a relative path
    that stays inside ``folder`` once symbolic links are resolved, and name an existing file."""
    from onnx import TensorProto

    external = [t for t in _tensors(model.graph) if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"tensor '{t.name}' stores its data in external file {loc!r}"
        if not loc:
            raise InvalidInput(f"tensor '{t.name}' claims external data but names no file")
        if os.path.isabs(loc) or Path(loc).drive or ".." in Path(loc).parts:
            raise InvalidInput(f"{where}, outside the model's folder: refused")
        target = (folder / loc).resolve()
        if folder != target and folder not in target.parents:
            raise InvalidInput(f"{where}, which resolves outside the model's folder: refused")
        if not target.is_file():
            raise InvalidInput(f"{where}, which does not exist next to the model")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise InvalidInput(f"{where} with a non-integer offset or length") from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length >= 0 and offset + length > size):
            raise InvalidInput(f"{where} at bytes [{offset}, {offset + max(length, 0)}) past its end ({size} bytes)")
    try:
        from onnx.external_data_helper import load_external_data_for_model
        load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise InvalidInput(f"could not read the external data of the model: {_first_line(exc)}") from None
