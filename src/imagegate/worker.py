"""`imagegate worker`: runs async tasks from procrastinate's queue on PostgreSQL (distributed mode).

A worker opens the same runtime as an API node (stores, engines and channels, the webhook sender,
lease renewal and the sweep of orphaned sync tasks) but serves no HTTP. It also runs the channels
that name a queue it takes: RUN_CHANNEL_JOB is one engine call handed over by a node that does not
(service/queued_channels.py). Each RUN_TASK job claims its
task by a conditional update, so a job run twice (a retry, a stalled job taken over) never runs a
task twice: a finished task is left alone and a task another live worker holds is retried later.
Stalled jobs (their worker stopped sending heartbeats) are retried on a short schedule, each handler
runs under a timeout, and finished jobs are deleted.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import procrastinate

from imagegate.builtins import builtin_registry
from imagegate.config import Config, WorkerSettings
from imagegate.metrics import Metrics
from imagegate.registry import Registry
from imagegate.runtime import Runtime, open_runtime
from imagegate.service import queued_channels
from imagegate.service.queued_channels import RUN_CHANNEL_JOB
from imagegate.service.runner import TaskBusy
from imagegate.stores.queue import RUN_TASK, procrastinate_app

log = logging.getLogger("imagegate.worker")
CLEANUP_EVERY_S = 3600


class HandlerTimedOut(Exception):
    """A task's handler ran past `[worker] handler_timeout_s`; the task was handed back to be retried."""


def worker_app(runtime: Runtime) -> procrastinate.App:
    """The procrastinate App with the RUN_TASK handler bound to `runtime`."""
    config = runtime.config
    app = procrastinate_app(config.resolved_database_url)
    retry = procrastinate.RetryStrategy(
        max_attempts=config.runner.max_attempts + 2,
        wait=max(1, int(config.runner.lease_s / 4)),
        retry_exceptions={TaskBusy, HandlerTimedOut},
    )

    @app.task(name=RUN_TASK, queue=config.worker.queues[0], retry=retry)
    async def run_task(task_id: str) -> None:
        with anyio.move_on_after(config.worker.handler_timeout_s) as scope:
            await runtime.runner.run_by_id(task_id)
        if scope.cancelled_caught:
            raise HandlerTimedOut(f"task {task_id} ran past {config.worker.handler_timeout_s:g} s")

    channels = {channel.settings.name: channel.engine for channel in runtime.channels}

    @app.task(name=RUN_CHANNEL_JOB, queue=config.worker.queues[0])
    async def run_channel_job(channel: str, payload: dict[str, Any]) -> None:
        await queued_channels.run_channel_job(
            channels, runtime.catalog, config, runtime.fetcher, runtime.blobs, channel, payload
        )

    return app


async def maintain(app: procrastinate.App, settings: WorkerSettings) -> None:
    """Retry stalled jobs every `stalled_check_s`; delete finished jobs older than the kept hours hourly."""
    cleaned = 0.0
    while True:
        try:
            for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_after_s):
                log.warning("retrying stalled job %s", job.id)
                await app.job_manager.retry_job(job)
            if time.monotonic() - cleaned > CLEANUP_EVERY_S:
                await app.job_manager.delete_old_jobs(nb_hours=settings.keep_finished_jobs_hours, include_failed=True)
                cleaned = time.monotonic()
        except Exception:  # the next round tries again
            log.exception("queue maintenance failed")
        await anyio.sleep(settings.stalled_check_s)


async def run_worker(
    config: Config,
    *,
    concurrency: int | None = None,
    queues: list[str] | None = None,
    install_signal_handlers: bool = True,
    registry: Registry | None = None,
) -> None:
    """Run until stopped (SIGINT/SIGTERM finish the jobs in hand first) or cancelled. `registry`
    replaces the built-in dialects and engine kinds, as it does for `create_app`."""
    settings = config.worker
    async with AsyncExitStack() as stack:
        taken = queues or settings.queues
        runtime = await open_runtime(config, stack, Metrics(), registry or builtin_registry(), takes=taken)
        app = worker_app(runtime)
        await stack.enter_async_context(app.open_async())
        async with anyio.create_task_group() as group:
            group.start_soon(maintain, app, settings)
            await app.run_worker_async(
                queues=taken,
                concurrency=concurrency or settings.concurrency,
                wait=True,
                delete_jobs="successful",
                update_heartbeat_interval=max(0.5, settings.stalled_after_s / 4),
                stalled_worker_timeout=settings.stalled_after_s,
                install_signal_handlers=install_signal_handlers,
            )
            group.cancel_scope.cancel()
