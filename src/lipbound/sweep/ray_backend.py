"""The Ray backend: :func:`run_ray` (the optional ``[ray]`` extra: ``pip install lipbound[ray]``).

Connects to an existing cluster with ``ray.init(address=...)`` when an address is given, else
starts a local Ray with ``num_cpus=workers``. The job (with its model) is put in the object store
once; ``workers`` actors (one CPU each) fetch it, call ``job.setup()`` once and then run tasks,
at most one in flight per actor, with the same :func:`~lipbound.sweep.tasks.run_task` and the
same per-task seed as the process pool: the records are the same. An actor that dies marks its
task ``error`` and is replaced.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generator, Iterable

from ..errors import InvalidInput
from .tasks import Job, Task, error_record, run_task, single_threaded

__all__ = ["run_ray"]


def _ray():
    try:
        import ray
    except ImportError:
        raise InvalidInput("backend='ray' needs Ray: pip install 'lipbound[ray]'") from None
    return ray


class _Worker:
    """A Ray actor: the job set up once, then one task per call."""

    def __init__(self, job: Job) -> None:
        single_threaded()
        job.setup()
        self.job = job

    def run(self, task: Task) -> dict[str, Any]:
        return run_task(self.job, task)


def run_ray(job: Job, tasks: Iterable[Task], workers: int,
            address: str | None = None) -> Generator[dict[str, Any], None, None]:
    """Yield one record per task, in the order they finish, computed by ``workers`` Ray actors."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    actor_class = ray.remote(num_cpus=1)(_Worker)
    job_ref = ray.put(job)
    queue = deque(tasks)
    idle = [actor_class.remote(job_ref) for _ in range(min(workers, len(queue)))]
    running: dict[Any, tuple[Task, Any]] = {}
    try:
        while queue or running:
            while queue and idle:
                actor = idle.pop()
                task = queue.popleft()
                running[actor.run.remote(task)] = (task, actor)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                task, actor = running.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died (a crash, out of memory)
                    record = error_record(task, f"the Ray worker died: {exc}")
                    ray.kill(actor)
                    actor = actor_class.remote(job_ref)
                idle.append(actor)
                yield record
    finally:
        for _, actor in running.values():
            ray.kill(actor)
        for actor in idle:
            ray.kill(actor)
        if started:
            ray.shutdown()
