"""The process-pool backend: :func:`run_pool`.

``concurrent.futures.ProcessPoolExecutor`` with the ``forkserver`` start method (``spawn`` where
there is none): no state is forked from the parent, which is safe with torch's threads, and the
fork server imports lipbound once, so that each worker (and each fresh pool) starts in a fraction
of a second. The job is sent to each worker once, through the pool's
initializer, which sets one thread per worker and calls ``job.setup()`` (the model is loaded
once per worker). At most ``workers`` tasks are in flight, so that when a worker dies (a crash,
or the kernel's out-of-memory killer: ``BrokenProcessPool``) the culprit is among them: each of
them is then rerun alone in a fresh one-worker pool, where a second death marks that instance
``error`` with the reason, and the sweep goes on in a fresh pool.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generator, Iterable

from .tasks import Job, Task, error_record, run_task, single_threaded

__all__ = ["run_pool"]

_JOB: Job | None = None  # the job of this worker process, set by _init_worker


def _init_worker(job: Job) -> None:
    global _JOB
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    single_threaded()
    job.setup()
    _JOB = job


def _run_in_worker(task: Task) -> dict[str, Any]:
    assert _JOB is not None, "worker not initialised"
    return run_task(_JOB, task)


def run_pool(job: Job, tasks: Iterable[Task], workers: int) -> Generator[dict[str, Any], None, None]:
    """Yield one record per task, in the order they finish, computed by ``workers`` processes."""
    queue = deque(tasks)
    suspects: deque[Task] = deque()
    while queue or suspects:
        if suspects:  # alone in a fresh pool: a death now is this task's own
            task = suspects.popleft()
            broken = yield from _drain(job, deque([task]), 1)
            for t in broken:
                yield error_record(t, "the worker process died (crashed or killed, e.g. out of memory)")
        else:
            suspects.extend((yield from _drain(job, queue, workers)))


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _drain(job: Job, queue: deque[Task], workers: int):
    """Run tasks from ``queue`` on a fresh pool until it is empty or the pool breaks; yield the
    records; return the tasks that were in flight when it broke."""
    pool = ProcessPoolExecutor(workers, mp_context=_context(),
                               initializer=_init_worker, initargs=(job,))
    running: dict[Future, Task] = {}
    finished = False
    try:
        while queue or running:
            while queue and len(running) < workers:
                task = queue.popleft()
                running[pool.submit(_run_in_worker, task)] = task
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken: list[Task] = []
            for fut in done:
                task = running.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken.append(task)
            if broken:
                return broken + list(running.values())
        finished = True
        return []
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut ``pool`` down without waiting for tasks still running (after Ctrl-C, a break or an
    error): its worker processes are terminated."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle in 3.10-3.13
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
