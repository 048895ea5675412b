"""Executors: where the independent runs of a coord check (one per width) are carried out.

An executor is anything with `map(run, tasks)` that yields `run(task)` for each task, in the
tasks' order. `InProcess` (the default) runs them here, one after another; `RayExecutor` sends
each to a Ray cluster (the optional `actstat[ray]` extra: a local instance by default, a
cluster by address) and gathers the results, which are the same numbers: a task carries
everything it needs, seeds included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from actstat.errors import ActstatError

Task = TypeVar("Task")
Result = TypeVar("Result")


class Executor(Protocol):
    def map(self, run: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        """`run(task)` for each task, yielded in the tasks' order."""
        ...


class InProcess:
    """Each task in this process, one after another (their progress shows as they run)."""

    def map(self, run: Callable[[Task], Result], tasks: Sequence[Task]) -> Iterator[Result]:
        for task in tasks:
            yield run(task)


def _apply(run: Callable[[Task], Result], task: Task) -> Result:
    """A task on a Ray worker (ray.remote takes a function, not a partial)."""
    return run(task)


class RayExecutor:
    """Each task as a Ray task (`num_gpus` each where the cluster has GPUs), all submitted at
    once and gathered in order. `address`: a running cluster's ("auto", "ray://host:10001");
    None starts a local instance (`ray.init()`), shut down again when the map is done."""

    def __init__(self, address: str | None = None, *, num_cpus: float = 1,
                 num_gpus: float = 0):
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus

    def map(self, run: Callable[[Task], Result], tasks: Sequence[Task]) -> Iterator[Result]:
        try:
            import ray
        except ImportError:
            raise ActstatError("the Ray executor needs Ray: pip install 'actstat[ray]'") from None
        started = not ray.is_initialized()
        if started:
            import logging

            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        try:
            remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_apply)
            refs = [remote.remote(run, task) for task in tasks]
            for ref in refs:
                yield ray.get(ref)
        finally:
            if started and self.address is None:
                ray.shutdown()
