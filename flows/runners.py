"""Task runners: where the per-file and per-partition work of a flow runs.

``orchestration.task_runner: dask`` (or ``--task-runner dask``) runs it on prefect-dask's
``DaskTaskRunner``: a local cluster of worker processes on 127.0.0.1, or the scheduler at
``orchestration.dask_address``. The stages take a mapper (``aecore.schema.Mapper``); the
one here submits each call as a Prefect task, so that it runs on the flow's task runner.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import Flow, Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from aecore.config import OrchestrationConfig
from aecore.errors import AepipeError

F = TypeVar("F", bound=Flow)


def retry_unless_user_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry network and storage faults, not a missing file or a wrong column."""
    return not isinstance(state.result(raise_on_failure=False), AepipeError)


@task(
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def part_task(function: Callable[..., Any], item: tuple) -> Any:
    """One file's or partition's share of a stage."""
    return function(*item)


def submit_parts(
    function: Callable[..., Any], items: Sequence[tuple], return_exceptions: bool = False
) -> list[Any]:
    """Run ``function(*item)`` per item as tasks on the flow's task runner; results in order.

    Every task runs to its end before a failure is raised; with ``return_exceptions``, a
    failed item's exception takes its place in the list instead.
    """
    name = function.__name__.replace("_", "-")
    futures = [
        part_task.with_options(name=name, task_run_name=f"{name}-{number}").submit(function, item)
        for number, item in enumerate(items)
    ]
    results = []
    for future in futures:
        future.wait()
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException) and not return_exceptions:
            raise result
        results.append(result)
    return results


def mapper(config: OrchestrationConfig) -> Callable[..., list[Any]] | None:
    """The stages' mapper for ``config``: ``None`` (in this process, in order) unless Dask."""
    return submit_parts if config.task_runner == "dask" else None


def dask_runner(address: str | None = None, workers: int | None = None) -> Any:
    """A ``DaskTaskRunner`` on the scheduler at ``address``, else on a local cluster.

    The local cluster binds 127.0.0.1, has no dashboard, and one thread per worker
    process (torch and NumPy use the cores themselves).
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers or min(os.cpu_count() or 1, 8),
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    )


def with_task_runner(flow: F, config: OrchestrationConfig) -> F:
    """``flow`` on the task runner that ``config`` names."""
    if config.task_runner != "dask":
        return flow
    return flow.with_options(task_runner=dask_runner(config.dask_address))
