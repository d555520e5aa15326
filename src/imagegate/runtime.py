"""The live parts of a running server, built from a Config and closed on shutdown."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial

import anyio
from fastapi import Request

from imagegate.config import Config, ConfigError
from imagegate.core.catalog import Catalog
from imagegate.core.upstream import RelayHosts
from imagegate.engines.base import Engine, EngineContext
from imagegate.errors import PermissionDenied, RateLimited, StorageUnavailable
from imagegate.metrics import Metrics
from imagegate.net import hosts
from imagegate.net.fetch import FetchPolicy, SafeFetcher
from imagegate.owner_only import private_dir
from imagegate.registry import Registry
from imagegate.service.callbacks_in import CallbackInbox
from imagegate.service.channels import Elsewhere, open_channels, relay_hosts, routes
from imagegate.service.freed_memory import keep_returning_freed_memory
from imagegate.service.leases import Leases
from imagegate.service.published import PublishedInputs
from imagegate.service.queued_channels import QueuedEngine
from imagegate.service.records import ResultLinks
from imagegate.service.retention import ResultSweeper
from imagegate.service.router import Channel
from imagegate.service.runner import TaskRunner
from imagegate.service.tasks import TaskService
from imagegate.service.webhooks import WebhookSender
from imagegate.stores import keys, ratelimit, sql
from imagegate.stores.blobs import BlobStore, open_blob_store
from imagegate.stores.db import ApiKey, Database, migrate, now_ms, prepare
from imagegate.stores.queue import ProcrastinateQueue, procrastinate_app

PREFLIGHT_STORAGE_S = 30.0
"""How long `serve` and `worker` wait for the storage to take their probe before refusing to start."""
LAST_USED_RESOLUTION_MS = 60_000
"""A key's `last_used_at` is rewritten at most this often, so authenticating stays a read."""


@dataclass
class Runtime:
    """Everything request handlers use; one per application."""

    config: Config
    db: Database
    blobs: BlobStore
    fetcher: SafeFetcher
    catalog: Catalog
    engines: dict[str, Engine]
    """The engine serving each model id."""
    tasks: TaskService
    metrics: Metrics
    runner: TaskRunner
    limiter: ratelimit.RateLimiter
    inputs: PublishedInputs
    inbox: CallbackInbox
    links: ResultLinks
    sweeper: ResultSweeper
    channels: list[Channel] = field(default_factory=list)

    def public_base(self, request: Request) -> str:
        """Base of result URLs: IMAGEGATE_PUBLIC_URL, else the request's Host if it is one of
        `trusted_hosts`, else the address the request came in on (never an untrusted Host header)."""
        return hosts.public_base(request.scope, self.config.public_url, self.config.trusted_hosts)

    async def authenticate(self, request: Request) -> ApiKey:
        """The key named by `Authorization: Bearer ...`; raises AuthenticationFailed."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        raw = token.strip() if scheme.lower() == "bearer" else ""
        async with sql.read(self.db) as statements:
            row = await keys.authenticate(statements, raw)
        if row.last_used_at is None or row.last_used_at < now_ms() - LAST_USED_RESOLUTION_MS:
            async with sql.transaction(self.db) as statements:
                await keys.touch(statements, row.id)
        request.state.key_id = row.id
        return row

    async def admit(self, request: Request) -> ApiKey:
        """`authenticate`, then count the request against the key's requests-per-minute limit.

        The `x-ratelimit-*` headers go on whatever response follows (via `request.state`);
        raises RateLimited (429, with `retry-after`) when the key is over its limit.
        """
        key = await self.authenticate(request)
        limit = self.tasks.key_limits(key).rpm
        state = await self.limiter.hit(key.id, limit, now_ms()) if limit else None
        if state is not None:
            request.state.response_headers = state.headers()
            if not state.allowed:
                error = RateLimited(
                    f"Rate limit reached for requests: this key may make {limit} per minute. "
                    f"Please try again in {ratelimit.duration(state.reset_s)}."
                )
                error.headers = state.headers()
                raise error
        return key

    async def is_admin(self, request: Request) -> ApiKey:
        """`authenticate`, and PermissionDenied (403) unless the key is an admin key."""
        key = await self.authenticate(request)
        if not key.is_admin:
            raise PermissionDenied("This operation needs an admin key.")
        return key


def fetch_policy(config: Config) -> FetchPolicy:
    limits = config.limits
    return FetchPolicy(
        allow=tuple(config.fetch_allow),
        max_bytes=limits.max_image_bytes,
        timeout_s=limits.fetch_timeout_s,
        connect_timeout_s=limits.fetch_connect_timeout_s,
        max_redirects=limits.fetch_max_redirects,
    )


def preflight(config: Config) -> None:
    """What `serve` and `worker` check before they start, raising what the operator must fix (the CLI
    prints it as one line): the database reachable and migrated — SQLite, one process's own, is
    migrated here; PostgreSQL, shared by every node, only by `imagegate migrate` — and the file
    storage writable (an S3 bucket that exists and takes the credentials' writes)."""
    private_dir(config.data_dir)
    prepare(config.resolved_database_url)
    anyio.run(_probe_within, open_blob_store(config.storage.url, config.files_dir), PREFLIGHT_STORAGE_S)


async def _probe_within(blobs: BlobStore, seconds: float) -> None:
    try:
        with anyio.fail_after(seconds):
            await blobs.probe()
    except TimeoutError:
        raise StorageUnavailable(f"the file storage ({blobs.describe()}) did not answer within {seconds:g} s") from None


async def open_runtime(
    config: Config,
    stack: AsyncExitStack,
    metrics: Metrics,
    registry: Registry,
    engines: dict[str, Engine] | None = None,
    takes: Collection[str] = (),
) -> Runtime:
    """Migrate the database, open every store and engine, and start the task runner and webhook
    sender in the background; `stack` stops and closes them all.

    Models are served by the configured channels, opened by the engine kinds of `registry`; with
    none, by `engines` (embedding and tests: its first engine serves every model) or else the
    `classic` engine. The task records learn every dialect's callback body.
    """
    private_dir(config.data_dir)
    url = config.resolved_database_url
    await anyio.to_thread.run_sync(migrate, url)
    db = Database(url)
    stack.push_async_callback(db.aclose)
    fetcher = SafeFetcher(fetch_policy(config))
    stack.push_async_callback(fetcher.aclose)
    catalog = Catalog.from_config(config.models)
    blobs = open_blob_store(config.storage.url, config.files_dir)
    inputs, inbox = relay_hosts(config, blobs, db)
    hosts = RelayHosts(inputs, inbox)
    elsewhere: Elsewhere | None = None
    if config.uses_procrastinate and any(channel.queue for channel in config.channels):
        queue_app = await stack.enter_async_context(procrastinate_app(url).open_async())
        deadline = config.worker.handler_timeout_s
        elsewhere = partial(QueuedEngine, queue_app=queue_app, blobs=blobs, deadline_s=deadline)
    channels = open_channels(config, catalog, registry.engines, fetcher, hosts, elsewhere=elsewhere, takes=takes)
    if engines is None and not channels:
        kind = registry.engines.get(registry.default_engine)
        if kind is None:
            raise ConfigError(
                f"no channel is configured and the default engine '{registry.default_engine}' is not registered"
            )
        engines = {kind.name: kind.open(EngineContext(config, fetcher, hosts))}
    for engine in [*(engines or {}).values(), *(channel.engine for channel in channels)]:
        stack.push_async_callback(engine.aclose)
    default = next(iter(engines.values())) if engines else None
    served = routes(catalog, channels, default, metrics)
    leases = Leases(db, config.runner.lease_s)
    tasks = TaskService(db, blobs, fetcher, catalog, served, config.limits, config.accounts, metrics, leases)
    if config.uses_procrastinate:
        tasks.queue = ProcrastinateQueue(procrastinate_app(url), config.worker.queues[0])
        tasks.model_queues = model_queues(config, served)
    runner = TaskRunner(db, tasks, leases, config.runner, claims=not config.uses_procrastinate)
    sender = WebhookSender(db, fetcher, config.webhooks, config.webhooks.retry_delays)
    tasks.on_submitted = runner.wake
    tasks.records.on_callback_queued = sender.wake
    background = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(background.cancel_scope.cancel)
    background.start_soon(runner.run)
    background.start_soon(sender.run)
    storage = config.storage
    longest_call_s = max([config.worker.handler_timeout_s, *(channel.timeout_s for channel in config.channels)])
    sweeper = ResultSweeper(db, blobs, storage.results_ttl, storage.sweep_interval_s, longest_call_s=longest_call_s)
    tasks.why_missing = sweeper.why_missing
    background.start_soon(sweeper.run)
    background.start_soon(keep_returning_freed_memory, config.limits.release_memory_every_s)
    for channel in channels:
        start = getattr(channel.engine, "start", None)
        if start is not None:
            background.start_soon(start)
    limiter = ratelimit.limiter_for(db)
    links = ResultLinks(
        blobs, presigned=config.storage.result_urls == "presigned", ttl_s=config.storage.presigned_url_ttl_s
    )
    for dialect in registry.dialects.values():
        if dialect.callbacks is not None:
            tasks.records.renderers[dialect.name] = dialect.callbacks(catalog, links)
    return Runtime(
        config,
        db,
        blobs,
        fetcher,
        catalog,
        served,
        tasks,
        metrics,
        runner,
        limiter,
        inputs,
        inbox,
        links,
        sweeper,
        channels,
    )


def model_queues(config: Config, served: dict[str, Engine]) -> dict[str, str]:
    """The queue of each model served only by channels that name one (its async tasks go there)."""
    queues = {}
    for model, engine in served.items():
        channels = getattr(engine, "channels", [])
        named = {channel.settings.queue for channel in channels}
        if len(named) == 1 and None not in named:
            queues[model] = str(named.pop())
    return queues


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime
