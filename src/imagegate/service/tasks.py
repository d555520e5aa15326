"""The image use case: record the task, open inputs, run the engine (fanned out), store, report.

Every request is a task row before any work (SPEC §1). `prepare` does everything that can fail
because of the client (validation, inputs, size), so a dialect can answer those as plain 4xx
before it commits to a streamed response; `execute` then makes and stores the images.
"""

from __future__ import annotations

import math
import secrets
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from typing import Any

import anyio

from imagegate.config import Limits
from imagegate.core.catalog import Catalog, ModelSpec
from imagegate.core.pricing import price
from imagegate.core.request import Background, Delivery, EditRequest, OutputFormat, Quality, Size
from imagegate.core.validation import resolve_size, resolved_quality, validate
from imagegate.engines.base import Engine, ImageOut, Job, PartialSink
from imagegate.errors import ImagegateError, ModelNotSupported
from imagegate.imaging import SourceImage
from imagegate.metrics import Metrics
from imagegate.net.fetch import SafeFetcher
from imagegate.service.concurrently import run_all
from imagegate.service.inputs import open_inputs
from imagegate.service.usage import usage
from imagegate.stores.blobs import BlobStore
from imagegate.stores.db import Database, StoredFile, Task, now_ms


@dataclass
class Delivered:
    """One image as delivered: its stored file and bytes."""

    file_id: str
    data: bytes
    revised_prompt: str


@dataclass
class Outcome:
    """A finished request, in canonical terms; dialects render it."""

    task_id: str
    engine: str
    created: int
    images: list[Delivered]
    size: Size
    quality: Quality
    output_format: OutputFormat
    background: Background
    delivery: Delivery
    usage: dict[str, Any]
    price: Decimal


@dataclass
class Prepared:
    """A recorded task with validated request, opened inputs and resolved size."""

    task_id: str
    key_id: str
    request: EditRequest
    spec: ModelSpec
    size: Size
    engine: Engine
    sources: list[SourceImage]
    mask: SourceImage | None
    started: float
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)


def new_task_id() -> str:
    return "task_" + secrets.token_hex(12)


def file_name(file_id: str, fmt: OutputFormat) -> str:
    return f"{file_id}.{fmt.value}"


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
        metrics: Metrics,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.fetcher = fetcher
        self.catalog = catalog
        self.engines = engines
        self.limits = limits
        self.metrics = metrics

    def engine_for(self, spec: ModelSpec) -> Engine:
        """The engine that serves `spec` (every model is served by classic until channels exist)."""
        return self.engines["classic"]

    async def prepare(self, key_id: str, req: EditRequest, *, dialect: str, kind: str) -> Prepared:
        """Validate, record the task, open inputs and resolve the size.

        Raises the client's error (after marking the task failed, when one was recorded).
        """
        spec = self.catalog.get(req.model)
        validate(req, spec, max_images=self.limits.max_images)
        engine = self.engine_for(spec)
        if not req.is_edit and not engine.can_generate:
            raise ModelNotSupported(
                f"Model '{spec.id}' is served by the {engine.name} engine, which edits images but cannot "
                "generate them; generations need an upstream (OpenAI-compatible) or local-model channel.",
                param="model",
            )
        task_id = new_task_id()
        started = time.perf_counter()
        async with self.db.session() as session, session.begin():
            session.add(
                Task(
                    id=task_id,
                    key_id=key_id,
                    model=spec.id,
                    kind=kind,
                    dialect=dialect,
                    request=req.to_record(),
                    state="running",
                    engine=engine.name,
                    started_at=now_ms(),
                )
            )
        resources = AsyncExitStack()
        try:
            sources = await open_inputs(req.images, self.fetcher, self.limits, resources)
            masks = await open_inputs([req.mask] if req.mask else [], self.fetcher, self.limits, resources)
            first = (sources[0].width, sources[0].height) if sources else None
            size = resolve_size(req, spec, first)
        except BaseException as exc:
            await resources.aclose()
            await self._fail(task_id, exc)
            self._count(spec.id, engine.name, started, error=exc)
            raise
        mask = masks[0] if masks else None
        return Prepared(task_id, key_id, req, spec, size, engine, sources, mask, started, resources)

    async def execute(self, prepared: Prepared, on_partial: PartialSink | None = None) -> Outcome:
        """Run the engine (fanning out beyond its per-call limit), store the files, finish the task."""
        try:
            async with prepared.resources:
                with self.metrics.engine_runs.labels(prepared.engine.name).track_inprogress():
                    outs = await self._fan_out(prepared, on_partial)
            delivered = await self._store(prepared, outs)
        except BaseException as exc:
            await self._fail(prepared.task_id, exc)
            self._count(prepared.spec.id, prepared.engine.name, prepared.started, error=exc)
            raise
        req, spec = prepared.request, prepared.spec
        quality = resolved_quality(req, spec)
        result = Outcome(
            task_id=prepared.task_id,
            engine=prepared.engine.name,
            created=int(time.time()),
            images=delivered,
            size=prepared.size,
            quality=quality,
            output_format=req.output_format,
            background=Background.TRANSPARENT if outs[0].transparent else Background.OPAQUE,
            delivery=req.delivery or spec.default_delivery,
            usage=usage(req.prompt, [(s.width, s.height) for s in prepared.sources], prepared.size, quality, len(outs)),
            price=price(spec, quality, prepared.size, len(outs)),
        )
        await self._succeed(result)
        self._count(spec.id, prepared.engine.name, prepared.started, images=len(delivered))
        return result

    async def run(self, key_id: str, req: EditRequest, *, dialect: str, kind: str) -> Outcome:
        """`prepare` then `execute`: the synchronous path."""
        return await self.execute(await self.prepare(key_id, req, dialect=dialect, kind=kind))

    async def _fan_out(self, prepared: Prepared, on_partial: PartialSink | None) -> list[ImageOut]:
        req = prepared.request
        per_call = max(1, prepared.engine.images_per_call)
        calls = math.ceil(req.n / per_call)
        results: list[list[ImageOut]] = [[] for _ in range(calls)]

        async def call(index: int) -> None:
            count = min(per_call, req.n - index * per_call)
            job = Job(
                replace(req, n=count),
                prepared.spec,
                prepared.size,
                prepared.sources,
                prepared.mask,
                on_partial if index == 0 else None,
            )
            results[index] = await prepared.engine.run(job)

        await run_all([partial(call, index) for index in range(calls)])
        return [image for batch in results for image in batch]

    async def _store(self, prepared: Prepared, outs: list[ImageOut]) -> list[Delivered]:
        by_content: dict[int, str] = {}
        delivered = []
        rows = []
        for out in outs:
            file_id = by_content.get(id(out.data))
            if file_id is None:
                file_id = secrets.token_urlsafe(24)
                by_content[id(out.data)] = file_id
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
            delivered.append(Delivered(file_id, out.data, out.revised_prompt))
        async with self.db.session() as session, session.begin():
            session.add_all(rows)
        return delivered

    async def _succeed(self, outcome: Outcome) -> None:
        result = {
            "files": [file_name(d.file_id, outcome.output_format) for d in outcome.images],
            "size": str(outcome.size),
            "quality": outcome.quality.value,
            "output_format": outcome.output_format.value,
            "background": outcome.background.value,
            "revised_prompt": outcome.images[0].revised_prompt if outcome.images else "",
            "usage": outcome.usage,
            "price": str(outcome.price),
        }
        async with self.db.session() as session, session.begin():
            task = await session.get(Task, outcome.task_id)
            if task is not None:
                task.state, task.finished_at, task.result = "success", now_ms(), result

    def _count(
        self, model: str, engine: str, started: float, *, images: int = 0, error: BaseException | None = None
    ) -> None:
        code = _failure(error)[0] if error is not None else None
        self.metrics.task_finished(model, engine, time.perf_counter() - started, images=images, error=code)

    async def _fail(self, task_id: str, exc: BaseException) -> None:
        code, message = _failure(exc)
        with anyio.CancelScope(shield=True):
            async with self.db.session() as session, session.begin():
                task = await session.get(Task, task_id)
                if task is not None:
                    task.state, task.finished_at = "fail", now_ms()
                    task.error_code, task.error_message = code, message


def _failure(exc: BaseException) -> tuple[str, str]:
    """The error code and message a task records for `exc` (no internals of unexpected errors)."""
    if isinstance(exc, ImagegateError):
        return exc.code, exc.message
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled", "the client went away or the server stopped"
    return "internal_error", type(exc).__name__
