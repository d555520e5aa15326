"""The image use case: record the task, open inputs, run the engine (fanned out), store, report.

Every request is a task row before any work (SPEC §1).

- Sync: `prepare` does everything that can fail because of the client (validation, inputs, size),
  so a dialect can answer those as plain 4xx before it commits to a streamed response; `execute`
  then makes and stores the images while the client waits.
- Async: `submit` validates, keeps a durable copy of uploaded/inline inputs, and records a
  `waiting` task; the runner later calls `run_task` on it (again after a crash), and the result
  reaches the client by callback or polling.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial

import anyio

from imagegate.config import AccountDefaults, Limits
from imagegate.core.catalog import Catalog, ModelSpec
from imagegate.core.job import ImageOut, Job, PartialSink
from imagegate.core.pricing import credits_text, price, price_before_inputs
from imagegate.core.request import Background, Delivery, EditRequest, ImageRef, Size
from imagegate.core.sizing import tier_of
from imagegate.core.validation import resolve_size, resolved_quality, validate
from imagegate.engines.base import Engine, refusal
from imagegate.errors import (
    BadRequest,
    Gone,
    ImagegateError,
    ImageTooLarge,
    InvalidCallbackUrl,
    ModelNotSupported,
    NotFound,
    PermissionDenied,
    TakenOver,
)
from imagegate.imaging import SourceImage, open_image
from imagegate.metrics import Metrics
from imagegate.net.fetch import SafeFetcher, decode_inline
from imagegate.service.budget import DecodeBudget, decode_cost, default_budget
from imagegate.service.execution import Execution
from imagegate.service.fanout import FannedOut, fan_out
from imagegate.service.inputs import check_size, open_inputs
from imagegate.service.leases import Leases
from imagegate.service.records import (
    Delivered,
    Outcome,
    TaskRecords,
    TaskView,
    file_name,
    outcome_of,
)
from imagegate.service.usage import provider_usage, usage
from imagegate.stores import ledger, sql
from imagegate.stores.blobs import BlobStore, deleted
from imagegate.stores.db import ApiKey, Database, StoredFile, Task, now_ms
from imagegate.stores.keys import KeyLimits, limits_of
from imagegate.stores.queue import RowQueue, TaskQueue

log = logging.getLogger("imagegate.tasks")


@dataclass(frozen=True)
class Origin:
    """Where a task came from: the dialect and kind, and what its later reports need."""

    dialect: str
    kind: str
    trace_id: str | None = None
    base_url: str | None = None
    wire: dict[str, object] | None = None


@dataclass
class Prepared:
    """A recorded task with validated request, opened inputs and resolved size."""

    key_id: str
    request: EditRequest
    spec: ModelSpec
    size: Size
    engine: Engine
    sources: list[SourceImage]
    mask: SourceImage | None
    decode_cost: int
    """Bytes of decoded images the request may hold (service/budget.py)."""
    execution: Execution
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    """Closes the opened inputs (when the execution's work is done)."""

    @property
    def task_id(self) -> str:
        return self.execution.task_id

    def job(self, on_partial: PartialSink | None = None) -> Job:
        """What the engine gets: the request, its model and size, the opened inputs."""
        return Job(self.request, self.spec, self.size, self.sources, self.mask, on_partial)


def new_task_id() -> str:
    return "task_" + secrets.token_hex(12)


async def _nothing_known(file_id: str) -> Gone | None:
    return None


class TaskService:
    """Runs image requests for authenticated keys."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        fetcher: SafeFetcher,
        catalog: Catalog,
        engines: dict[str, Engine],
        limits: Limits,
        accounts: AccountDefaults,
        metrics: Metrics,
        leases: Leases,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.fetcher = fetcher
        self.catalog = catalog
        self.engines = engines
        self.limits = limits
        self.budget = DecodeBudget(limits.decode_budget_bytes or default_budget())
        self.accounts = accounts
        self.metrics = metrics
        self.leases = leases
        self.records = TaskRecords(db, leases.owner, leases.clock)
        self.queue: TaskQueue = RowQueue()
        self.model_queues: dict[str, str] = {}
        """Models whose async tasks go to a queue of their own (a local model's channel `queue`)."""
        self.on_submitted: Callable[[], None] = lambda: None
        self.why_missing: Callable[[str], Awaitable[Gone | None]] = _nothing_known
        """Why a result file `file_id` is gone (the result sweeper's 410), or None when nobody knows."""

    def engine_for(self, spec: ModelSpec) -> Engine:
        """The engine that serves `spec` (its channels' router, or the default engine); ModelNotSupported
        when channels are configured and none serves it."""
        engine = self.engines.get(spec.id)
        if engine is None:
            raise ModelNotSupported(f"No channel of this server serves model '{spec.id}'.", param="model")
        return engine

    async def get_task(self, key_id: str, task_id: str) -> TaskView:
        """The task `task_id` if it belongs to `key_id`; NotFound otherwise (another key's task included)."""
        async with self.db.session() as session:
            task = await session.get(Task, task_id)
        if task is None or task.key_id != key_id:
            raise NotFound(f"No task with id '{task_id}'.", param="task_id")
        return TaskView.of(task)

    async def outcome(self, task: TaskView) -> Outcome | None:
        """The Outcome of a successful task (image bytes read back where delivered inline), else None.
        Raises Gone when an image delivered inline is no longer stored (its retention ran out)."""
        if task.state != "success":
            return None
        outcome = await outcome_of(task, self.blobs)
        if outcome.delivery is not Delivery.URL:
            for image in outcome.images:
                if image.data is None:
                    raise (await self.why_missing(image.file_id)) or Gone(
                        "This task's result is no longer stored. Make the request again for a new one."
                    )
        return outcome

    def key_limits(self, key: ApiKey) -> KeyLimits:
        """The limits that apply to `key` (its own, else the configured defaults)."""
        return limits_of(key, self.accounts)

    def _checked(self, key: ApiKey, req: EditRequest) -> tuple[ModelSpec, Engine]:
        """`_validated`, and the key's own rules: allowed models, images per request."""
        if key.models is not None and req.model not in key.models:
            raise PermissionDenied(f"This key may not use model '{req.model}'.", param="model")
        spec, engine = self._validated(req)
        most = self.key_limits(key).max_output_images
        if most and req.n > most:
            raise BadRequest(
                f"Invalid 'n': {req.n}; this key may ask for at most {most} images per request.", param="n"
            )
        return spec, engine

    def _validated(self, req: EditRequest) -> tuple[ModelSpec, Engine]:
        spec = self.catalog.get(req.model)
        validate(req, spec, max_input_images=self.limits.max_input_images)
        engine = self.engine_for(spec)
        refused = refusal(engine, req)
        if refused is not None:
            raise ModelNotSupported(refused.message, param=refused.param, code=refused.code)
        return spec, engine

    def _row(
        self, task_id: str, key_id: str, req: EditRequest, spec: ModelSpec, engine: Engine, origin: Origin
    ) -> Task:
        return Task(
            id=task_id,
            key_id=key_id,
            model=spec.id,
            kind=origin.kind,
            dialect=origin.dialect,
            request=req.to_record(),
            engine=engine.name,
            trace_id=origin.trace_id,
            base_url=origin.base_url,
            wire=origin.wire,
            callback_url=req.callback_url,
            attempts=0,
        )

    async def _record(self, key: ApiKey, row: Task, req: EditRequest, spec: ModelSpec) -> None:
        """Add the task row, hold its price and (async tasks) queue it, in one transaction: 402/409 or a
        failure to queue leave nothing behind."""
        async with sql.transaction(self.db) as statements:
            await ledger.open_task(statements, row, price_before_inputs(req, spec), self.key_limits(key).max_active)
            if row.mode == "async":
                await self.queue.enqueue(statements, row.id, self.model_queues.get(row.model))

    async def prepare(self, key: ApiKey, req: EditRequest, origin: Origin) -> Prepared:
        """Validate, record a running sync task holding its price, open inputs and resolve the size.

        Raises the client's error (after marking the task failed and releasing its hold, when one
        was recorded).
        """
        spec, engine = self._checked(key, req)
        execution = self._execution(new_task_id(), spec.id, engine.name)
        row = self._row(execution.task_id, key.id, req, spec, engine, origin)
        row.state, row.mode, row.started_at, row.attempts = "running", "sync", now_ms(), 1
        row.lease_owner, row.lease_until = self.leases.owner, self.leases.expiry()
        await self._record(key, row, req, spec)
        async with self.leases.hold(execution.task_id):  # fetching inputs may outlast a lease
            return await execution.step(partial(self._open, execution, key.id, req, spec, engine))

    def _execution(self, task_id: str, model: str, engine: str) -> Execution:
        """The execution of a task this process has just claimed."""
        return Execution(self.records, self.metrics, task_id, model, engine)

    async def _open(
        self, execution: Execution, key_id: str, req: EditRequest, spec: ModelSpec, engine: Engine
    ) -> Prepared:
        async with AsyncExitStack() as resources:
            sources, mask, size, cost = await self._inputs(req, spec, resources)
            kept = resources.pop_all()
        return Prepared(key_id, req, spec, size, engine, sources, mask, cost, execution, kept)

    async def _inputs(
        self, req: EditRequest, spec: ModelSpec, resources: AsyncExitStack
    ) -> tuple[list[SourceImage], SourceImage | None, Size, int]:
        """The opened inputs and mask (their files closed with `resources`), the resolved size and the
        decode cost (ImageTooLarge when it is more than the whole budget)."""
        sources = await open_inputs(req.images, self.fetcher, self.limits, resources, self.blobs)
        masks = await open_inputs([req.mask] if req.mask else [], self.fetcher, self.limits, resources, self.blobs)
        size = resolve_size(req, spec, (sources[0].width, sources[0].height) if sources else None)
        mask = masks[0] if masks else None
        return sources, mask, size, self._decode_cost(sources, mask, size)

    def _decode_cost(self, sources: list[SourceImage], mask: SourceImage | None, size: Size) -> int:
        """The request's decode cost (from the inputs' headers); ImageTooLarge when it alone would need
        more than the server's whole decoded-pixel budget."""
        inputs = [(s.width, s.height) for s in [*sources, *([mask] if mask else [])]]
        cost = decode_cost(inputs, size)
        if not self.budget.fits(cost):
            mib = 1024 * 1024
            raise ImageTooLarge(
                f"Decoding these inputs at {size} would take about {cost // mib:,} MiB, more than the "
                f"{self.budget.total // mib:,} MiB this server decodes for one request; send smaller "
                "images or ask for a smaller size.",
                param="image" if sources else "size",
            )
        return cost

    async def execute(self, prepared: Prepared, on_partial: PartialSink | None = None) -> Outcome:
        """Run the engine (fanning out beyond its per-call limit), store the files, finish the task.

        Raises the error the task failed with.
        """
        execution = prepared.execution
        async with self.leases.hold(prepared.task_id):
            outcome, files = await execution.step(partial(self._make, prepared, on_partial))
            try:
                await execution.succeed(outcome, files)
            except TakenOver:  # not settled by this run: its files have no rows and are nobody's
                with anyio.CancelScope(shield=True):
                    await self._discard(files)
                raise
        return outcome

    async def _discard(self, files: list[StoredFile]) -> None:
        for file in files:  # one the store refuses is left to the sweep of unrecorded files
            await deleted(self.blobs, f"{file.id}.{file.ext}")

    async def _make(self, prepared: Prepared, on_partial: PartialSink | None) -> tuple[Outcome, list[StoredFile]]:
        """The images of `prepared` (fanned out within the decode budget), stored as files."""
        async with prepared.resources, self.budget.hold(prepared.decode_cost):
            with self.metrics.engine_runs.labels(prepared.engine.name).track_inprogress():
                made = await fan_out(prepared.engine, prepared.job(on_partial), prepared.task_id)
        delivered, files = await self._store(prepared, made.images)
        return self._outcome(prepared, made, delivered), files

    @staticmethod
    def _outcome(prepared: Prepared, made: FannedOut, delivered: list[Delivered]) -> Outcome:
        req, spec = prepared.request, prepared.spec
        quality = resolved_quality(req, spec)
        inputs = [(s.width, s.height) for s in prepared.sources]
        return Outcome(
            task_id=prepared.task_id,
            engine=prepared.engine.name,
            created=int(time.time()),
            images=delivered,
            size=prepared.size,
            quality=quality,
            output_format=req.output_format,
            background=Background.TRANSPARENT if made.images[0].transparent else Background.OPAQUE,
            delivery=req.delivery or spec.default_delivery,
            usage=provider_usage(made.reports) or usage(req.prompt, inputs, prepared.size, quality, len(made.images)),
            price=price(spec, quality, prepared.size, len(made.images)),
            failures=made.failures,
            upstream=made.reports or None,
            resampled_from=next((out.resampled_from for out in made.images if out.resampled_from), None),
        )

    async def run(self, key: ApiKey, req: EditRequest, origin: Origin) -> Outcome:
        """`prepare` then `execute`: the synchronous path."""
        return await self.execute(await self.prepare(key, req, origin))

    async def quote(self, key: ApiKey, req: EditRequest) -> dict[str, object]:
        """What `req` would cost and resolve to, without recording, running or charging anything.

        Validates like a real request (inputs are opened, URLs fetched) and raises the same errors.
        """
        spec, engine = self._checked(key, req)
        async with AsyncExitStack() as resources:
            sources, mask, size, _ = await self._inputs(req, spec, resources)
        quality = resolved_quality(req, spec)
        total = price(spec, quality, size, req.n)
        async with self.db.session() as session:
            row = await session.get(ApiKey, key.id)
        available = (row.credits - row.held) if row is not None else Decimal(0)
        return {
            "object": "image.quote",
            "price": credits_text(total),
            "unit_price": credits_text(price(spec, quality, size, 1)),
            "currency": "credits",
            "available": credits_text(available),
            "sufficient": available >= price_before_inputs(req, spec),
            "model": spec.id,
            "engine": engine.name,
            "kind": "edit" if req.is_edit else "generate",
            "size": str(size),
            "tier": tier_of(size),
            "quality": quality.value,
            "n": req.n,
            "images": len(sources),
            "mask": mask is not None,
            "output_format": req.output_format.value,
            "background": req.background.value,
            "delivery": (req.delivery or spec.default_delivery).value,
        }

    async def submit(self, key: ApiKey, req: EditRequest, origin: Origin) -> str:
        """Validate and record an async task (state `waiting`, its price held) with durable copies of
        its inputs.

        Client errors (bad fields, unreadable uploads, refused URLs or callback URL, 402, 409) raise
        with nothing recorded. Returns the task id; the runner picks the task up.
        """
        spec, engine = self._checked(key, req)
        if req.callback_url:
            await self._check_callback(req.callback_url)
        task_id = new_task_id()
        async with AsyncExitStack() as undo:  # stored inputs are deleted unless the task is recorded
            req.images = [await self._keep(ref, f"in_{task_id}_{i}", undo) for i, ref in enumerate(req.images)]
            if req.mask is not None:
                req.mask = await self._keep(req.mask, f"in_{task_id}_mask", undo)
            row = self._row(task_id, key.id, req, spec, engine, origin)
            row.state, row.mode = "waiting", "async"
            await self._record(key, row, req, spec)
            undo.pop_all()
        self.on_submitted()
        return task_id

    async def _check_callback(self, url: str) -> None:
        try:
            await self.fetcher.check_url(url, "callback_url")
        except ImagegateError as exc:
            raise InvalidCallbackUrl(exc.message, param="callback_url") from exc

    async def _keep(self, ref: ImageRef, name: str, undo: AsyncExitStack) -> ImageRef:
        """A reference the runner can open later: URLs are checked now and fetched then; bytes are stored
        (and deleted by `undo`)."""
        if ref.url is not None:
            await self.fetcher.check_url(ref.url, ref.param)
            return ref
        fp = (
            ref.upload
            if ref.upload is not None
            else decode_inline(ref.inline or "", param=ref.param, max_bytes=self.limits.max_image_bytes)
        )
        try:
            check_size(fp, ref.param, self.limits)
            open_image(fp, max_pixels=self.limits.max_image_pixels, param=ref.param)
            fp.seek(0)
            await self.blobs.put_file(name, fp)
            undo.push_async_callback(self.blobs.delete, name)
        finally:
            if fp is not ref.upload:
                fp.close()
        return ImageRef(param=ref.param, blob=name)

    async def run_task(self, task: Task) -> None:
        """Run a claimed async task to its final state; failures are recorded on the task, not raised.

        If the runner is cancelled (shutdown), the task is handed back as `waiting` for the next start,
        its stored inputs kept for it.
        """
        execution = self._execution(task.id, task.model, task.engine or "")
        try:
            prepared = await execution.step(partial(self._reopen, execution, task))
            await self.execute(prepared)
        except Exception:
            if execution.taken_over:  # another runner has it now, and needs its inputs
                log.warning("task %s was taken over while this process ran it; its run is dropped", task.id)
                return
            if not execution.ended:  # its end could not be written: keep the inputs for its next run
                log.exception("task %s: its final state could not be recorded", task.id)
                return
            log.debug("task %s failed (recorded on the task)", task.id, exc_info=True)
        await self._drop_inputs(task)

    async def _reopen(self, execution: Execution, task: Task) -> Prepared:
        """A recorded async task's request, validated again and its inputs opened."""
        req = EditRequest.from_record(task.request)
        spec, engine = self._validated(req)
        return await self._open(execution, task.key_id, req, spec, engine)

    async def abandon(self, task: Task, error: ImagegateError) -> None:
        """Fail a claimed async task without running it (its callback is still sent)."""
        await self._execution(task.id, task.model, task.engine or "").fail(error)
        await self._drop_inputs(task)

    async def _drop_inputs(self, task: Task) -> None:
        """Delete the inputs an async task kept for its run."""
        try:
            req = EditRequest.from_record(task.request)
        except (KeyError, ValueError):
            log.warning("task %s: its stored inputs could not be listed for removal", task.id)
            return
        for ref in [*req.images, *([req.mask] if req.mask else [])]:
            if ref.blob is not None:
                await self.blobs.delete(ref.blob)

    async def _store(self, prepared: Prepared, outs: list[ImageOut]) -> tuple[list[Delivered], list[StoredFile]]:
        """Write each image as its own file (identical images too: each has its own URL); returns what
        was delivered and the file rows to record."""
        delivered = []
        rows = []
        req = prepared.request
        embeds = req.stream or (req.delivery or prepared.spec.default_delivery) is not Delivery.URL
        for out in outs:
            file_id = secrets.token_urlsafe(24)
            await self.blobs.put(file_name(file_id, out.format), out.data)
            rows.append(
                StoredFile(
                    id=file_id,
                    task_id=prepared.task_id,
                    key_id=prepared.key_id,
                    ext=out.format.value,
                    content_type=out.format.content_type,
                    bytes=len(out.data),
                    width=out.size.width,
                    height=out.size.height,
                )
            )
            # the bytes only where the answer embeds them and has no base64 of them already: an answer
            # waiting to be sent holds no more than it will send
            data = out.data if embeds and out.b64 is None else None
            delivered.append(Delivered(file_id, data, out.revised_prompt, out.b64))
        return delivered, rows
