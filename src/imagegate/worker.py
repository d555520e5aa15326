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
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import procrastinate
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegate.builtins import builtin_registry
from imagegate.config import Config, WorkerSettings
from imagegate.metrics import Metrics, WorkerMetrics
from imagegate.net.hosts import url_host
from imagegate.registry import Registry
from imagegate.runtime import Runtime, open_runtime
from imagegate.server import listening_socket
from imagegate.service import queued_channels, readiness
from imagegate.service.queued_channels import RUN_CHANNEL_JOB
from imagegate.service.runner import TaskBusy
from imagegate.stores.db import Task
from imagegate.stores.faults import redacted
from imagegate.stores.queue import RUN_TASK, procrastinate_app

log = logging.getLogger("imagegate.worker")
CLEANUP_EVERY_S = 3600
JOB_POLL_S = 1.0
"""How often a worker looks for jobs whose time has come without a notification (a retry of a task
another process held): at most this is added to a dead worker's task's wait."""
QUEUE_BY_STATE = "SELECT queue_name, status::text AS state, count(*) AS jobs FROM procrastinate_jobs GROUP BY 1, 2"


class HandlerTimedOut(Exception):
    """A task's handler ran past `[worker] handler_timeout_s`; the task was handed back to be retried."""


@asynccontextmanager
async def counted(metrics: WorkerMetrics, task: str) -> AsyncIterator[None]:
    """Count one job of procrastinate task `task`: running meanwhile, then its outcome (`succeeded`,
    `retried` for a task held elsewhere or cut off, `failed`) and its duration."""
    started, outcome = time.perf_counter(), "failed"
    metrics.running.inc()
    try:
        yield
        outcome = "succeeded"
    except (TaskBusy, HandlerTimedOut):
        outcome = "retried"
        raise
    finally:
        metrics.running.dec()
        metrics.jobs.labels(task, outcome).inc()
        metrics.job_seconds.labels(task).observe(time.perf_counter() - started)


async def log_task(runtime: Runtime, task_id: str, seconds: float) -> None:
    """One INFO line for a task this worker ran: id, model, engine, state, seconds (and attempt, error)."""
    async with runtime.db.session() as session:
        row = (
            await session.execute(
                select(Task.model, Task.engine, Task.state, Task.attempts, Task.error_code).where(Task.id == task_id)
            )
        ).one_or_none()
    if row is None:
        log.warning("task=%s not found (a job for a task that no longer exists)", task_id)
        return
    model, engine, state, attempts, error = row
    log.info(
        "task=%s model=%s engine=%s state=%s seconds=%.2f attempt=%d%s",
        task_id,
        model,
        engine or "-",
        state,
        seconds,
        attempts,
        f" error={error}" if error else "",
    )


def worker_app(runtime: Runtime, metrics: WorkerMetrics | None = None) -> procrastinate.App:
    """The procrastinate App with the RUN_TASK and RUN_CHANNEL_JOB handlers bound to `runtime`."""
    config = runtime.config
    metrics = metrics or WorkerMetrics(runtime.metrics)
    app = procrastinate_app(config.resolved_database_url)
    retry = procrastinate.RetryStrategy(
        max_attempts=config.runner.max_attempts + 2,
        wait=max(1, int(config.runner.lease_s / 4)),
        retry_exceptions={TaskBusy, HandlerTimedOut},
    )

    @app.task(name=RUN_TASK, queue=config.worker.queues[0], retry=retry)
    async def run_task(task_id: str) -> None:
        started = time.perf_counter()
        async with counted(metrics, RUN_TASK):
            try:
                with anyio.move_on_after(config.worker.handler_timeout_s) as scope:
                    await runtime.runner.run_by_id(task_id)
            except TaskBusy:
                log.info("task=%s held by another live process: tried again later", task_id)
                raise
            if scope.cancelled_caught:
                log.warning(
                    "task=%s ran past %g s: handed back to be retried", task_id, config.worker.handler_timeout_s
                )
                raise HandlerTimedOut(f"task {task_id} ran past {config.worker.handler_timeout_s:g} s")
        await log_task(runtime, task_id, time.perf_counter() - started)

    channels = {channel.settings.name: channel.engine for channel in runtime.channels}

    @app.task(name=RUN_CHANNEL_JOB, queue=config.worker.queues[0])
    async def run_channel_job(channel: str, payload: dict[str, Any]) -> None:
        started = time.perf_counter()
        async with counted(metrics, RUN_CHANNEL_JOB):
            await queued_channels.run_channel_job(
                channels, runtime.catalog, config, runtime.fetcher, runtime.blobs, channel, payload
            )
        log.info("channel=%s call handed over by an API node seconds=%.2f", channel, time.perf_counter() - started)

    return app


async def maintain(app: procrastinate.App, settings: WorkerSettings, metrics: WorkerMetrics) -> None:
    """Every `stalled_check_s`: retry the jobs of workers with no heartbeat for `stalled_after_s`,
    remove those workers' rows, and read the queue's jobs by state; hourly, delete finished jobs
    older than the kept hours."""
    cleaned = 0.0
    while True:
        try:
            for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_after_s):
                log.warning(
                    "job %s of a dead worker (no heartbeat for %g s): retrying it", job.id, settings.stalled_after_s
                )
                await app.job_manager.retry_job(job)
                metrics.stalled.inc()
            pruned = await app.job_manager.prune_stalled_workers(settings.stalled_after_s)
            if pruned:
                log.warning("removed %d dead worker row(s): %s", len(pruned), ", ".join(map(str, pruned)))
                metrics.pruned.inc(len(pruned))
            metrics.queue.clear()
            for row in await app.connector.execute_query_all_async(QUEUE_BY_STATE):
                metrics.queue.labels(row["queue_name"], row["state"]).set(row["jobs"])
            if time.monotonic() - cleaned > CLEANUP_EVERY_S:
                await app.job_manager.delete_old_jobs(nb_hours=settings.keep_finished_jobs_hours, include_failed=True)
                cleaned = time.monotonic()
        except Exception:  # the next round tries again
            log.exception("queue maintenance failed")
        await anyio.sleep(settings.stalled_check_s)


def endpoints(runtime: Runtime, app: procrastinate.App, metrics: WorkerMetrics) -> Starlette:
    """The worker's HTTP port: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (database,
    storage and queue, each named with its error; 503 when one fails)."""

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse(readiness.alive())

    async def readyz(request: Request) -> JSONResponse:
        checks = await readiness.essentials(runtime.db, runtime.blobs)
        checks.append(await readiness.queue(lambda: app.connector.execute_query_one_async("SELECT 1 AS one")))
        status, body = readiness.answer(checks, runtime.channels)
        return JSONResponse(body, status_code=status)

    routes = [Route("/metrics", metrics_page), Route("/healthz", healthz), Route("/readyz", readyz)]
    return Starlette(routes=routes)


class _EndpointServer(uvicorn.Server):
    """uvicorn serving the worker's port inside the worker's loop, leaving SIGINT and SIGTERM to
    procrastinate (which finishes the jobs in hand before stopping)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_worker(
    config: Config,
    *,
    concurrency: int | None = None,
    queues: list[str] | None = None,
    install_signal_handlers: bool = True,
    registry: Registry | None = None,
    metrics_port: int | None = None,
) -> None:
    """Run until stopped (SIGINT/SIGTERM finish the jobs in hand first) or cancelled. `registry`
    replaces the built-in dialects and engine kinds, as it does for `create_app`. With a
    `metrics_port` (else `[worker] metrics_port`), the port of `endpoints` listens on
    `[worker] metrics_host`."""
    settings = config.worker
    port = metrics_port if metrics_port is not None else settings.metrics_port
    async with AsyncExitStack() as stack:
        sock = listening_socket(settings.metrics_host, port, "the metrics port") if port is not None else None
        if sock is not None:
            stack.callback(sock.close)
        taken = queues or settings.queues
        shared = Metrics()
        runtime = await open_runtime(config, stack, shared, registry or builtin_registry(), takes=taken)
        metrics = WorkerMetrics(shared)
        app = worker_app(runtime, metrics)
        await stack.enter_async_context(app.open_async())
        workers = concurrency or settings.concurrency
        async with anyio.create_task_group() as group:
            group.start_soon(maintain, app, settings, metrics)
            where = "off"
            if sock is not None:
                app_config = uvicorn.Config(
                    endpoints(runtime, app, metrics), log_config=None, access_log=False, lifespan="off"
                )
                group.start_soon(_EndpointServer(app_config).serve, [sock])
                host, bound = sock.getsockname()[:2]
                where = f"http://{url_host(host)}:{bound}/metrics"
            log.info(
                "worker started: queues=%s concurrency=%d database=%s storage=%s metrics=%s",
                ",".join(taken),
                workers,
                redacted(config.resolved_database_url),
                runtime.blobs.describe(),
                where,
            )
            await app.run_worker_async(
                queues=taken,
                concurrency=workers,
                wait=True,
                delete_jobs="successful",
                fetch_job_polling_interval=JOB_POLL_S,
                update_heartbeat_interval=max(0.5, settings.stalled_after_s / 4),
                stalled_worker_timeout=settings.stalled_after_s,
                install_signal_handlers=install_signal_handlers,
            )
            log.info("worker stopped")
            group.cancel_scope.cancel()


def worker_log_config() -> dict[str, Any]:
    """Logging for `imagegate worker`: imagegate's lines at INFO with their time, procrastinate's own
    at WARNING (its per-job lines repeat the worker's)."""
    line = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    handler = {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": line},
        "handlers": {"stderr": handler},
        "loggers": {
            "imagegate": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "procrastinate": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
