"""VNN-COMP benchmarks: :func:`run_instances` on an ``instances.csv``.

Each row is ``onnx,vnnlib,timeout`` with paths relative to the CSV (gzipped ``.onnx.gz`` /
``.vnnlib.gz`` files are read too). Per row: the local Lipschitz bracket (L2 -> L2) of the
network on the property's input set, ``lipbound.estimate(graph, domain=property,
time_budget=timeout * timeout_scale)`` (certified upper, witnessed lower, both valid for every
pair of points in the input set), and for a robustness property the verdict of
:func:`~lipbound.sweep.verdict.robustness_verdict`. A problem with the CSV itself (absent, a
malformed row, a bad timeout) raises before any work; a row whose files are missing or
unreadable becomes an ``error`` record and the others run.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..api import estimate
from ..errors import InvalidInput
from ..frontends.loading import load
from ..frontends.vnnlib import load_vnnlib
from ..graph.ir import Graph
from ..methods import get_method
from ..report_format import stopped_by_time
from .keys import file_digest, instance_key, settings_digest
from .runner import SweepRun, check_execution, execute
from .tasks import Task
from .verdict import robustness_verdict

__all__ = ["Instance", "read_instances", "run_instances", "InstancesJob", "instances_table"]


@dataclass(frozen=True)
class Instance:
    """One row of ``instances.csv``: absolute paths and the timeout in seconds; ``row`` counts
    from 1 and ``id`` is ``row:onnx:vnnlib`` as written in the CSV."""

    row: int
    onnx: str
    vnnlib: str
    timeout: float
    id: str


def read_instances(csv_path: str | os.PathLike) -> list[Instance]:
    """The rows of a VNN-COMP ``instances.csv`` (module doc); raises
    :class:`~lipbound.errors.InvalidInput` for an absent or empty file, a row without three
    fields or a timeout that is not a positive number (the line is named). Missing network or
    property files are not checked here: they become ``error`` records."""
    path = Path(csv_path)
    if not path.is_file():
        raise InvalidInput(f"instances file not found: {path}")
    rows = []
    with open(path, newline="") as fh:
        for line, fields in enumerate(csv.reader(fh), start=1):
            fields = [f.strip() for f in fields]
            if not fields or all(not f for f in fields) or fields[0].startswith("#"):
                continue
            if len(fields) != 3 or not fields[0] or not fields[1]:
                raise InvalidInput(f"{path}, line {line}: expected onnx,vnnlib,timeout; got {','.join(fields)!r}")
            try:
                timeout = float(fields[2])
            except ValueError:
                raise InvalidInput(f"{path}, line {line}: the timeout must be a number of seconds, "
                                   f"got {fields[2]!r}") from None
            if not (timeout > 0 and math.isfinite(timeout)):
                raise InvalidInput(f"{path}, line {line}: the timeout must be positive, got {fields[2]!r}")
            rows.append(Instance(line, str(path.parent / fields[0]), str(path.parent / fields[1]), timeout,
                                 f"{line}:{fields[0]}:{fields[1]}"))
    if not rows:
        raise InvalidInput(f"{path} lists no instance (rows: onnx,vnnlib,timeout)")
    return rows


@dataclass
class InstancesJob:
    """Bracket and verdict of one instance per task (module doc). Networks are loaded once per
    worker and kept (a benchmark reuses a few networks across many rows)."""

    methods: Sequence[str] | None = None
    seed: int = 0
    method_options: dict[str, dict[str, Any]] | None = None
    _graphs: dict[str, Graph] = field(default_factory=dict, repr=False)

    def setup(self) -> None:
        self._graphs = {}

    def run(self, payload: tuple[str, str, float]) -> dict[str, Any]:
        onnx, vnnlib, budget = payload
        if onnx not in self._graphs:
            self._graphs[onnx] = _read(onnx, load)
        graph = self._graphs[onnx]
        prop = _read(vnnlib, lambda p: load_vnnlib(p, graph.input_shape))
        report = estimate(graph, domain=prop, methods=self.methods, seed=self.seed, progress=False,
                          time_budget=budget, method_options=self.method_options)
        out = {"lower": report.lower, "upper": report.upper, "ratio": report.ratio,
               "lower_method": report.lower_method, "upper_method": report.upper_method,
               "label": prop.label, "time_budget": budget,
               "methods": [{"method": r.method, "kind": r.kind.value, "value": r.value, "seconds": round(r.seconds, 6),
                            "stopped_by": "time" if stopped_by_time(r) else r.details.get("stopped_by")}
                           for r in report.results]}
        if prop.label is not None:
            out.update(robustness_verdict(graph, prop, report, self.seed))
        return _finite(out)


def _read(path: str, reader):
    """``reader(path)``, through a temporary decompressed copy for a ``.gz`` file."""
    if not Path(path).is_file():
        raise InvalidInput(f"file not found: {path}")
    if not path.endswith(".gz"):
        return reader(path)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / Path(path[:-3]).name
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return reader(str(plain))


def _finite(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run_instances(csv_path: str | os.PathLike, methods: Sequence[str] | None = None, *, workers: int | None = None,
                  backend: str = "process", out: str | os.PathLike | None = None, timeout_scale: float = 1.0,
                  seed: int = 0, progress: bool = False, address: str | None = None,
                  method_options: dict[str, dict[str, Any]] | None = None) -> SweepRun:
    """Bracket (and verdict) of every row of the VNN-COMP ``csv_path`` (module doc), in parallel.

    Args:
        csv_path: ``instances.csv`` (rows ``onnx,vnnlib,timeout``, paths relative to it).
        methods: as for :func:`lipbound.estimate` (None: its default set).
        workers: processes or Ray actors (default: the CPU count); ``backend``: ``"process"``,
            ``"ray"`` (``address``: an existing cluster; default a local one) or ``"serial"``.
        out: JSONL results file, appended one line per finished row; a rerun skips the rows done
            (:mod:`~lipbound.sweep.results`).
        timeout_scale: each row's time budget is its timeout times this.
        seed, progress, method_options: as for :func:`lipbound.estimate` (progress: one bar).

    Returns:
        A :class:`~lipbound.sweep.runner.SweepRun`; :func:`instances_table` prints it.
    """
    if not (timeout_scale > 0 and math.isfinite(timeout_scale)):
        raise InvalidInput(f"timeout_scale must be a positive number, got {timeout_scale!r}")
    check_execution(workers, backend)
    if methods is not None:
        methods = [methods] if isinstance(methods, str) else list(methods)
        for m in methods:
            if m != "all":
                get_method(m)
    rows = read_instances(csv_path)
    settings = {"methods": methods, "seed": seed, "method_options": method_options}
    tasks = []
    for i, inst in enumerate(rows):
        budget = inst.timeout * timeout_scale
        digests = [file_digest(p) if Path(p).is_file() else "missing" for p in (inst.onnx, inst.vnnlib)]
        key = instance_key(digests[0], inst.id, settings_digest({**settings, "budget": budget, "vnnlib": digests[1]}))
        tasks.append(Task(i, key, inst.id, (inst.onnx, inst.vnnlib, budget)))
    job = InstancesJob(methods, seed, method_options)
    return execute(job, tasks, out, workers, backend, progress, address)


def instances_table(run: SweepRun) -> str:
    """One line per instance (bracket, verdict, seconds) and a count of verdicts and errors."""
    lines = [f"{'instance':<44} {'lower':>10} {'upper':>10} {'ratio':>8} {'verdict':>10} {'seconds':>8}"]
    for r in run.records:
        if r["status"] != "ok":
            lines.append(f"{r['instance']:<44} error: {r['reason']}")
            continue
        cells = [_fmt(r.get("lower")), _fmt(r.get("upper")), _fmt(r.get("ratio"), 4), r.get("verdict") or "-"]
        lines.append(f"{r['instance']:<44} {cells[0]:>10} {cells[1]:>10} {cells[2]:>8} {cells[3]:>10} "
                     f"{r['seconds']:>8.2f}")
    counts: dict[str, int] = {}
    for r in run.records:
        v = r.get("verdict") or "no verdict" if r["status"] == "ok" else "error"
        counts[v] = counts.get(v, 0) + 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    state = " (interrupted)" if run.interrupted else ""
    lines.append(f"{len(run.records)}/{run.total} instances done{state}: {summary or 'none'}"
                 + (f"; {run.resumed} read back from the results file" if run.resumed else ""))
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}g}"
