"""The server's Prometheus metrics, served at `GET /metrics` (SPEC §10).

Each application owns its registry, so several apps in one process (tests, embedded use) never share
or collide. Labels are bounded: route templates (not raw paths), model ids from the catalog, engine
names, and error codes from `errors.py`.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imagegate import __version__

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNMATCHED_ROUTE = "unmatched"


class Metrics:
    """Counters and histograms for HTTP traffic, tasks and engines."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        info = Gauge(
            "imagegate_build_info", "The running imagegate version (always 1).", ["version"], registry=registry
        )
        info.labels(__version__).set(1)
        self.http_requests = Counter(
            "imagegate_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "imagegate_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response (streams included), by route template.",
            ["route"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.tasks = Counter(
            "imagegate_tasks",
            "Image tasks finished, by model, engine and final state (success or fail).",
            ["model", "engine", "state"],
            registry=registry,
        )
        self.task_failures = Counter(
            "imagegate_task_failures",
            "Failed image tasks by error code.",
            ["code"],
            registry=registry,
        )
        self.task_seconds = Histogram(
            "imagegate_task_duration_seconds",
            "Time from recording a task to its final state, by engine.",
            ["engine"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.images = Counter(
            "imagegate_images",
            "Images delivered, by model and engine.",
            ["model", "engine"],
            registry=registry,
        )
        self.engine_runs = Gauge(
            "imagegate_engine_runs_in_progress",
            "Engine calls running now, by engine.",
            ["engine"],
            registry=registry,
        )

        self.upstream_attempts = Counter(
            "imagegate_upstream_attempts",
            "Attempts on upstream channels, by channel and result (ok, rejected, retryable, failed).",
            ["channel", "result"],
            registry=registry,
        )
        self.channel_open = Gauge(
            "imagegate_channel_circuit_open",
            "1 while a channel's circuit breaker rests it (open or half-open), else 0.",
            ["channel"],
            registry=registry,
        )

    def task_finished(
        self, model: str, engine: str, seconds: float, *, images: int = 0, error: str | None = None
    ) -> None:
        """Count one task that reached its final state (`error` is its code when it failed)."""
        self.tasks.labels(model, engine, "fail" if error else "success").inc()
        self.task_seconds.labels(engine).observe(seconds)
        if error:
            self.task_failures.labels(error).inc()
        if images:
            self.images.labels(model, engine).inc(images)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class WorkerMetrics:
    """A worker's own series, on the registry of its runtime's Metrics (served on `--metrics-port`
    beside the task and engine series): its jobs by outcome and duration, stalls, dead workers, and
    the queue's jobs by state."""

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.exposition = metrics.exposition
        self.content_type = metrics.content_type
        self.jobs = Counter(
            "imagegate_worker_jobs",
            "Jobs this worker ran, by procrastinate task and outcome (succeeded, failed, retried).",
            ["task", "outcome"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "imagegate_worker_job_duration_seconds",
            "Time this worker spent on each job, by procrastinate task.",
            ["task"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.running = Gauge("imagegate_worker_jobs_running", "Jobs this worker runs now.", registry=registry)
        self.stalled = Counter(
            "imagegate_worker_stalled_jobs",
            "Jobs of dead workers (no heartbeat) this worker handed back to the queue.",
            registry=registry,
        )
        self.pruned = Counter(
            "imagegate_worker_dead_workers_removed",
            "Rows of dead workers this worker removed from the queue's table.",
            registry=registry,
        )
        self.queue = Gauge(
            "imagegate_queue_jobs",
            "Jobs in the queue by queue and state (todo, doing, failed...), read at each maintenance round.",
            ["queue", "state"],
            registry=registry,
        )
