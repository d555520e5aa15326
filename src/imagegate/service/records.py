"""Task rows from creation to a final state, and the Outcome a finished row stands for.

A task moves `waiting → running → success|fail` (sync tasks start as `running`). Only the process
holding a task's lease may finish it: the final write is conditional on `lease_owner`, so a task
reclaimed by another runner is never finished twice. The settlement of its credits (the price of
the images delivered, the rest of the hold released) and its callback delivery are written in the
same transaction as the final state, so a crash can lose neither.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio
import orjson

from imagegate.core.request import Background, Delivery, OutputFormat, Quality, Size
from imagegate.core.sizing import parse_wxh
from imagegate.errors import ImagegateError, Interrupted
from imagegate.stores import ledger
from imagegate.stores.blobs import BlobStore
from imagegate.stores.db import Clock, Database, StoredFile, Task, WebhookDelivery, now_ms, to_micros
from imagegate.stores.sql import Sql, from_row, insert_sql, json_text, returning_sql, row_values, transaction

_RETURNING = returning_sql(Task)
_OWNED = "WHERE id = :id AND lease_owner = :owner AND state = 'running'"
_SUCCEED = (
    "UPDATE tasks SET state = 'success', finished_at = :now, lease_until = NULL, result = :result, "  # noqa: S608
    f"images = :images, cost = {ledger.SETTLED_COST} {_OWNED} {_RETURNING}"
)
_FAIL = (
    "UPDATE tasks SET state = 'fail', finished_at = :now, lease_until = NULL, error_code = :code, "  # noqa: S608
    f"error_message = :message, cost = {ledger.SETTLED_COST} {_OWNED} {_RETURNING}"
)
_ORPHANED = "the server stopped while this request was running"
_ORPHANS = "SELECT id FROM tasks WHERE mode = 'sync' AND state = 'running' AND lease_until < :now LIMIT 500"
_FAIL_ORPHAN = (
    "UPDATE tasks SET state = 'fail', finished_at = :now, lease_until = NULL, cost = 0, error_code = :code, "  # noqa: S608
    "error_message = :message WHERE id = :id AND mode = 'sync' AND state = 'running' AND lease_until < :now "
    + _RETURNING
)
_RELEASE = (
    "UPDATE tasks SET state = 'waiting', lease_owner = NULL, lease_until = NULL "
    "WHERE id = :id AND lease_owner = :owner AND mode = 'async' AND state = 'running' RETURNING id"
)
_INSERT_FILE = insert_sql(StoredFile)
_INSERT_DELIVERY = insert_sql(WebhookDelivery)


@dataclass
class Delivered:
    """One image as delivered: its stored file, and its bytes when the delivery embeds them."""

    file_id: str
    data: bytes | None
    revised_prompt: str
    b64: memoryview | None = None
    """`data` as base64 already (a provider's own, passed through), when there is one to send as it is."""


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
    failures: list[dict[str, str]]
    """Engine calls that failed while others succeeded (SPEC §3 partial success)."""
    upstream: list[dict[str, Any]] | None = None
    """For relayed images: per provider call, the channel, model, usage, latency, attempts, failovers."""
    resampled_from: Size | None = None
    """The size the engine made when the server cropped or resampled it to `size` (SPEC §4)."""


@dataclass(frozen=True)
class TaskView:
    """What a dialect may know of a task: a plain copy of its row (never the row itself)."""

    id: str
    model: str
    kind: str
    state: str
    attempts: int
    engine: str
    request: dict[str, Any]
    created_at: int
    finished_at: int | None
    error_code: str | None
    error_message: str | None
    trace_id: str | None
    base_url: str | None
    wire: dict[str, Any] | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return cls(
            id=task.id,
            model=task.model,
            kind=task.kind,
            state=task.state,
            attempts=task.attempts,
            engine=task.engine or "",
            request=dict(task.request),
            created_at=task.created_at,
            finished_at=task.finished_at,
            error_code=task.error_code,
            error_message=task.error_message,
            trace_id=task.trace_id,
            base_url=task.base_url,
            wire=dict(task.wire) if task.wire is not None else None,
            result=dict(task.result) if task.result is not None else None,
        )


RESULT_FILE = re.compile(r"^([A-Za-z0-9_-]{16,64})\.(png|jpeg|webp)$")
"""A result file's name in the store: its id and its format's extension (`file_name`)."""


def file_name(file_id: str, fmt: OutputFormat) -> str:
    return f"{file_id}.{fmt.value}"


def file_url(base: str, file_id: str, fmt: OutputFormat) -> str:
    """The public URL of a stored result under `base` (no trailing slash)."""
    return f"{base}/files/{file_name(file_id, fmt)}"


UrlFor = Callable[[str, OutputFormat], str]
"""The URL of a stored result, from its file id and format."""


class ResultLinks:
    """Where clients fetch results: the API's `/files/...` under a base URL, or — with `presigned` —
    object-store URLs valid for `ttl_s` (made afresh at every rendering, so a later poll gets a live one)."""

    def __init__(self, blobs: BlobStore, *, presigned: bool = False, ttl_s: int = 3600) -> None:
        self.blobs = blobs
        self.presigned = presigned
        self.ttl_s = ttl_s

    def at(self, base: str) -> UrlFor:
        """The URL maker for results whose API base is `base` (no trailing slash)."""

        def url(file_id: str, fmt: OutputFormat) -> str:
            direct = self.blobs.presigned_url(file_name(file_id, fmt), self.ttl_s) if self.presigned else None
            return direct or file_url(base, file_id, fmt)

        return url


def failure_of(exc: BaseException) -> tuple[str, str]:
    """The error code and message a task records for `exc` (no internals of unexpected errors)."""
    if isinstance(exc, ImagegateError):
        return exc.code, exc.message
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled", "the client went away or the server stopped"
    return "internal_error", type(exc).__name__


def result_record(outcome: Outcome) -> dict[str, Any]:
    """What a task row keeps of its Outcome (everything but image bytes)."""
    return {
        "files": [file_name(d.file_id, outcome.output_format) for d in outcome.images],
        "revised_prompts": [d.revised_prompt for d in outcome.images],
        "created": outcome.created,
        "size": str(outcome.size),
        "quality": outcome.quality.value,
        "output_format": outcome.output_format.value,
        "background": outcome.background.value,
        "delivery": outcome.delivery.value,
        "usage": outcome.usage,
        "price": str(outcome.price),
        "failures": outcome.failures,
        "upstream": outcome.upstream,
        "resampled_from": str(outcome.resampled_from) if outcome.resampled_from else None,
    }


async def outcome_of(task: TaskView, blobs: BlobStore) -> Outcome:
    """The Outcome a successful task records; image bytes are read back unless delivered as URLs."""
    result = task.result or {}
    fmt = OutputFormat(result["output_format"])
    delivery = Delivery(result["delivery"])
    images = []
    prompts = result.get("revised_prompts") or []
    for index, name in enumerate(result.get("files", [])):
        data = None if delivery is Delivery.URL else await blobs.get(name)
        prompt = prompts[index] if index < len(prompts) else ""
        images.append(Delivered(name.rsplit(".", 1)[0], data, prompt))
    native = result.get("resampled_from")
    return Outcome(
        task_id=task.id,
        engine=task.engine,
        created=int(result.get("created", (task.finished_at or 0) // 1000)),
        images=images,
        size=parse_wxh(result["size"]),
        quality=Quality(result["quality"]),
        output_format=fmt,
        background=Background(result["background"]),
        delivery=delivery,
        usage=result.get("usage", {}),
        price=Decimal(result.get("price", "0")),
        failures=list(result.get("failures", [])),
        upstream=result.get("upstream"),
        resampled_from=parse_wxh(native) if native else None,
    )


CallbackRenderer = Callable[[TaskView, Outcome | None], Awaitable[dict[str, Any]]]
"""A dialect's callback body for a finished task (with its Outcome when it succeeded)."""


class TaskRecords:
    """Writes the final state of tasks and queues their callbacks."""

    def __init__(self, db: Database, owner: str, clock: Clock = now_ms) -> None:
        self.db = db
        self.owner = owner
        self.clock = clock
        self.renderers: dict[str, CallbackRenderer] = {}
        self.on_callback_queued: Callable[[], None] = lambda: None

    async def finish(
        self,
        task_id: str,
        *,
        outcome: Outcome | None = None,
        error: BaseException | None = None,
        files: Sequence[StoredFile] = (),
    ) -> bool:
        """Record success (`outcome`, with its `files` rows) or failure (`error`) if this process still
        owns the task, settling its credits and queueing its callback in the same transaction.

        Returns False (and writes nothing) when the task was reclaimed or already final.
        """
        charge = outcome.price if outcome is not None else Decimal(0)
        params: dict[str, Any] = {"id": task_id, "owner": self.owner, "now": self.clock(), "charge": to_micros(charge)}
        if outcome is not None:
            statement = _SUCCEED
            params.update(result=json_text(result_record(outcome)), images=len(outcome.images))
        else:
            statement = _FAIL
            params["code"], params["message"] = failure_of(error or RuntimeError("unknown"))
        with anyio.CancelScope(shield=True):
            async with transaction(self.db) as sql:
                found = await sql.row(statement, params)
                if found is None:
                    return False
                task = from_row(Task, found)
                for file in files:
                    await sql.run(_INSERT_FILE, row_values(file))
                await ledger.close_task(sql, task)
                queued = await self._queue_callback(sql, task, outcome)
            if queued:
                self.on_callback_queued()
        return True

    async def fail_orphans(self) -> int:
        """Fail sync tasks whose process died (their lease ran out), releasing their holds; returns how many.

        Their clients' connections are gone with the process, so nobody is waiting for a result.
        """
        params = {"now": self.clock(), "code": Interrupted.code, "message": _ORPHANED}
        failed = 0
        async with transaction(self.db) as sql:
            for (task_id,) in await sql.rows(_ORPHANS, params):
                found = await sql.row(_FAIL_ORPHAN, {**params, "id": task_id})
                if found is not None:
                    await ledger.close_task(sql, from_row(Task, found))
                    failed += 1
        return failed

    async def release_if_async(self, task_id: str) -> bool:
        """Hand an interrupted async task back as `waiting` (a shutdown, not a failure); False for sync tasks."""
        with anyio.CancelScope(shield=True):
            async with transaction(self.db) as sql:
                released = await sql.rows(_RELEASE, {"id": task_id, "owner": self.owner})
        return bool(released)

    async def _queue_callback(self, sql: Sql, task: Task, outcome: Outcome | None) -> bool:
        renderer = self.renderers.get(task.dialect)
        if task.mode != "async" or not task.callback_url or renderer is None:
            return False
        body = await renderer(TaskView.of(task), outcome)
        delivery = WebhookDelivery(
            id="msg_" + secrets.token_hex(12),
            task_id=task.id,
            key_id=task.key_id,
            url=task.callback_url,
            body=orjson.dumps(body),
            state="pending",
            attempts=0,
            next_at=self.clock(),
        )
        await sql.run(_INSERT_DELIVERY, row_values(delivery))
        return True
