"""The results file of a sweep: JSON Lines, one line per finished instance.

Each line is a JSON object with at least ``key`` (:func:`~lipbound.sweep.keys.instance_key`),
``instance`` and ``status`` (``"ok"`` or ``"error"`` with a ``reason``). A line is written whole,
then flushed and fsynced, before the instance counts as done, so a killed run loses at most the
instance it was writing: its partial last line (no final newline, or not valid JSON) is detected
when the file is read back, reported, and cut off before the next line is appended. A rerun
reads the keys already present and skips them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

__all__ = ["ResultsFile", "read_results"]


@dataclass
class ReadBack:
    """What an existing results file holds: the ``records`` of its complete lines, the byte
    length of those lines (``valid_bytes``) and a note on a partial last line (None if none)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    valid_bytes: int = 0
    partial: str | None = None


def read_results(path: str | os.PathLike) -> ReadBack:
    """The complete lines of the JSONL file ``path`` (an absent file reads as empty). Only the
    last line may be partial (a run killed while writing it); a bad line before it means the file
    is not a results file, and raises :class:`~lipbound.errors.InvalidInput`."""
    p = Path(path)
    if not p.exists():
        return ReadBack()
    data = p.read_bytes()
    out = ReadBack()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        if last and raw == b"":
            break
        record = _parse(raw) if not last else None  # a last line without newline is never complete
        if record is None:
            if last or i == len(lines) - 2 and lines[-1] == b"":
                out.partial = f"{p}: ignored a partial last line ({len(raw)} bytes) left by an interrupted run"
                break
            raise InvalidInput(f"{p}, line {i + 1}: not a lipbound results line (JSON with a 'key')")
        out.records.append(record)
        out.valid_bytes += len(raw) + 1
    return out


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "key" in record else None


class ResultsFile:
    """Append-only JSONL results at ``path`` (None: kept in memory only). Opening it reads what is
    there (``done``: key -> record, ``partial``: the note on a cut line) and truncates a partial
    last line so that the next record starts on a line of its own."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        back = ReadBack() if self.path is None else read_results(self.path)
        self.partial = back.partial
        self.done: dict[str, dict[str, Any]] = {r["key"]: r for r in back.records}
        self._fh = None
        if self.path is not None:
            if self.path.parent and not self.path.parent.is_dir():
                raise InvalidInput(f"the folder of the results file does not exist: {self.path.parent}")
            self._fh = open(self.path, "ab")
            if back.partial is not None:
                self._fh.truncate(back.valid_bytes)

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, flush and fsync it; it then counts as done."""
        self.done[record["key"]] = record
        if self._fh is not None:
            self._fh.write(json.dumps(record, allow_nan=False, default=_jsonable).encode() + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    """Tensors and NumPy values as lists/numbers; anything else by ``str``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
