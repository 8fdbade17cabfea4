"""Run a sweep: skip what the results file already holds, dispatch the rest to a backend, append
each record as it finishes, show one progress bar, stop cleanly on Ctrl-C.

Backends: ``"process"`` (:mod:`~lipbound.sweep.pool`, the default), ``"ray"``
(:mod:`~lipbound.sweep.ray_backend`) and ``"serial"`` (this process, one thread: the reference
the others must match).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Generator, Sequence

import torch

from ..errors import InvalidInput
from .results import ResultsFile
from .tasks import Job, Task, run_task

__all__ = ["BACKENDS", "SweepRun", "check_execution", "execute"]

BACKENDS = ("process", "ray", "serial")


@dataclass
class SweepRun:
    """The records of every instance of the sweep that is done (``records``, in instance order:
    those computed now and those read back from the results file), how many were read back
    (``resumed``), whether Ctrl-C stopped the run (``interrupted``) and the note on a partial
    last line of the results file (``partial``)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    resumed: int = 0
    interrupted: bool = False
    partial: str | None = None

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") != "ok"]


def check_execution(workers: int | None, backend: str) -> int:
    """The number of workers (default: the CPU count); raise on a bad backend or count."""
    if backend not in BACKENDS:
        raise InvalidInput(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInput(f"workers must be a positive integer, got {workers!r}")
    return workers


def execute(job: Job, tasks: Sequence[Task], out: str | os.PathLike | None = None, workers: int | None = None,
            backend: str = "process", progress: bool = False, address: str | None = None) -> SweepRun:
    """Run every task of ``tasks`` whose key is not yet in the results file ``out`` (module doc)."""
    workers = check_execution(workers, backend)
    with ResultsFile(out) as results:
        run = SweepRun(total=len(tasks), partial=results.partial)
        if results.partial is not None:
            print(f"lipbound: {results.partial}", file=sys.stderr)
        todo = [t for t in tasks if t.key not in results.done]
        run.resumed = len(tasks) - len(todo)
        bar = _bar(len(tasks), run.resumed, progress)
        records = _records(job, todo, workers, backend, address)
        try:
            for record in records:
                results.append(record)
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            run.interrupted = True
        finally:
            records.close()  # stops the workers still running
            if bar is not None:
                bar.close()
        keys = {t.key: t.index for t in tasks}
        run.records = sorted((r for k, r in results.done.items() if k in keys), key=lambda r: keys[r["key"]])
    return run


def _records(job: Job, tasks: list[Task], workers: int, backend: str,
             address: str | None) -> Generator[dict[str, Any], None, None]:
    if not tasks:
        return _serial(job, [])
    if backend == "ray":
        from .ray_backend import run_ray

        return run_ray(job, tasks, workers, address)
    if backend == "process":
        from .pool import run_pool

        return run_pool(job, tasks, min(workers, len(tasks)))
    return _serial(job, tasks)


def _serial(job: Job, tasks: list[Task]) -> Generator[dict[str, Any], None, None]:
    """The tasks one after the other in this process, on one thread (restored afterwards)."""
    if not tasks:
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job.setup()
        for task in tasks:
            yield run_task(job, task)
    finally:
        torch.set_num_threads(threads)


def _bar(total: int, initial: int, progress: bool):
    """One bar for the whole sweep (done/total, rate, ETA) on stderr; None without progress."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="instance", desc="lipbound sweep", dynamic_ncols=True)
