"""What every backend runs: a :class:`Job` (set up once per worker, e.g. the model loaded) and
:class:`Task` s (one per instance), and :func:`run_task`, the one function that runs a task in a
worker and turns any failure into an ``error`` record.

Same seed, same numbers: before each task the global torch generator is seeded with the job's
seed, and the methods draw from their own ``seed`` argument, so a task's result does not depend
on which worker ran it, in which order, or on which backend. Workers compute on one thread
(:func:`single_threaded`): that keeps the floating-point reduction order fixed too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = ["Job", "Task", "run_task", "single_threaded", "error_record"]


class Job(Protocol):
    """A sweep's work. ``seed`` seeds every task; ``setup()`` runs once per worker before its first
    task (load the model there); ``run(payload)`` computes one instance and returns its JSON-ready
    fields."""

    seed: int

    def setup(self) -> None: ...

    def run(self, payload: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Task:
    """One instance: its position in the sweep, its results-file ``key``, its readable
    ``instance`` id and the ``payload`` given to :meth:`Job.run`."""

    index: int
    key: str
    instance: str
    payload: Any


def single_threaded() -> None:
    """One thread for BLAS/OpenMP and torch in this process (set in every worker)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def error_record(task: Task, reason: str, seconds: float = 0.0) -> dict[str, Any]:
    """The record of an instance that failed: ``status="error"`` and a one-line ``reason``."""
    return {"key": task.key, "instance": task.instance, "index": task.index, "status": "error",
            "reason": reason.strip().splitlines()[0] if reason.strip() else "error", "seconds": round(seconds, 6)}


def run_task(job: Job, task: Task) -> dict[str, Any]:
    """Run ``task`` with ``job`` (already set up) and return its record: ``status="ok"`` with the
    job's fields, or ``status="error"`` with the reason (a MemoryError included)."""
    torch.manual_seed(job.seed)
    t0 = time.perf_counter()
    try:
        fields = job.run(task.payload)
    except MemoryError:
        return error_record(task, "out of memory (MemoryError)", time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - one instance's failure must not stop the sweep
        return error_record(task, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
    return {"key": task.key, "instance": task.instance, "index": task.index, "status": "ok", **fields,
            "seconds": round(time.perf_counter() - t0, 6)}
