"""A task's execution ends through one lifecycle, whatever the exit: success, an engine error, the
client's bad input, a crash, or cancellation (a sync task fails; an async one is handed back)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import partial
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from imagegate.builtins import builtin_registry
from imagegate.config import load_config
from imagegate.core.job import Job, Made
from imagegate.core.request import Delivery, EditRequest, ImageRef
from imagegate.engines.mock import MockEngine, plain_image
from imagegate.errors import EngineError, ImagegateError
from imagegate.metrics import Metrics
from imagegate.runtime import Runtime, open_runtime
from imagegate.service.tasks import Origin
from imagegate.stores import keys, sql
from imagegate.stores.db import ApiKey, Database, Task
from tests.conftest import create_key
from tests.test_accounts import DATA_URL
from tests.waiting import wait_for_task_async

Handler = Callable[[Job], Awaitable[Made]]


@dataclass
class Stage:
    runtime: Runtime
    key: ApiKey
    raw: str


@asynccontextmanager
async def stage(tmp_path: Path, handler: Handler, raw: str | None = None) -> AsyncIterator[Stage]:
    """A runtime on `tmp_path` served by MockEngine(handler), and a key (`raw`, or a new one with 100
    credits); its background runner looks for async tasks only when woken."""
    config = load_config(
        data_dir=tmp_path, accounts={"requests_per_minute": 0, "max_active_tasks": 0}, runner={"poll_interval_s": 3600}
    )
    raw = raw or await create_key(config, credits=100)
    async with AsyncExitStack() as stack:
        runtime = await open_runtime(config, stack, Metrics(), builtin_registry(), {"mock": MockEngine(handler)})
        runtime.tasks.on_submitted = lambda: None
        async with sql.read(runtime.db) as statements:
            key = await keys.authenticate(statements, raw)
        yield Stage(runtime, key, raw)


async def row(stage: Stage, task_id: str) -> Task:
    async with stage.runtime.db.session() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    return task


async def held(stage: Stage) -> tuple[Decimal, Decimal]:
    async with stage.runtime.db.session() as session:
        key = await session.get(ApiKey, stage.key.id)
    assert key is not None
    return key.credits, key.held


def request(image: str = DATA_URL) -> EditRequest:
    return EditRequest(prompt="p", size="1024x1024", images=[ImageRef(param="image", inline=image)])


async def makes_one(job: Job) -> Made:
    return Made([plain_image(job)])


async def provider_fails(job: Job) -> Made:
    raise EngineError("the provider is down", retryable=False)


async def crashes(job: Job) -> Made:
    raise RuntimeError("a bug")


async def hangs(job: Job) -> Made:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def latest_task(stage: Stage) -> str:
    async with stage.runtime.db.session() as session:
        task_id = await session.scalar(select(Task.id).order_by(Task.created_at.desc()).limit(1))
    assert task_id is not None
    return task_id


@pytest.mark.parametrize(
    ("handler", "image", "raised", "state", "code", "cost"),
    [
        (makes_one, DATA_URL, None, "success", None, Decimal(6)),
        (provider_fails, DATA_URL, EngineError, "fail", "upstream_error", Decimal(0)),
        (
            makes_one,
            "data:image/png;base64,bm90IGFuIGltYWdl",
            ImagegateError,
            "fail",
            "unsupported_file_mimetype",
            Decimal(0),
        ),
        (crashes, DATA_URL, RuntimeError, "fail", "internal_error", Decimal(0)),
    ],
    ids=["success", "engine error", "bad input", "crash"],
)
async def test_every_sync_exit_settles_the_task_and_its_hold(
    tmp_path: Path,
    handler: Handler,
    image: str,
    raised: type[BaseException] | None,
    state: str,
    code: str | None,
    cost: Decimal,
) -> None:
    async with stage(tmp_path, handler) as s:
        if raised is None:
            await s.runtime.tasks.run(s.key, request(image), Origin("openai", "edit"))
        else:
            with pytest.raises(raised):
                await s.runtime.tasks.run(s.key, request(image), Origin("openai", "edit"))
        task = await row(s, await latest_task(s))
        assert (task.state, task.error_code, task.cost, task.lease_until) == (state, code, cost, None)
        assert await held(s) == (Decimal(100) - cost, Decimal(0))


async def test_a_cancelled_sync_task_fails_and_releases_its_hold(tmp_path: Path) -> None:
    async with stage(tmp_path, hangs) as s:
        with anyio.move_on_after(0.2):  # the client went away
            await s.runtime.tasks.run(s.key, request(), Origin("openai", "edit"))
        task = await row(s, await latest_task(s))
        assert (task.state, task.error_code) == ("fail", "cancelled")
        assert await held(s) == (Decimal(100), Decimal(0))


async def test_an_async_task_cut_off_by_shutdown_is_handed_back_with_its_inputs_and_runs_after(
    tmp_path: Path,
) -> None:
    started, gate = asyncio.Event(), asyncio.Event()

    async def waits(job: Job) -> Made:
        started.set()
        await gate.wait()
        return Made([plain_image(job)])

    async with stage(tmp_path, waits) as first:
        task_id = await first.runtime.tasks.submit(first.key, request(), Origin("openai", "edit"))
        first.runtime.runner.wake()
        await asyncio.wait_for(started.wait(), 10)
    # the server stopped mid-run: its runner was cancelled
    db = Database(first.runtime.config.resolved_database_url)
    try:
        async with db.session() as session:
            task = await session.get(Task, task_id)
            key = await session.get(ApiKey, first.key.id)
    finally:
        await db.aclose()
    assert task is not None and key is not None
    assert (task.state, task.lease_owner, task.error_code, task.attempts) == ("waiting", None, None, 1)
    assert (key.credits, key.held) == (Decimal(100), Decimal(6)), "still held for the next run"
    stored = task.request["images"][0]["blob"]
    assert await first.runtime.blobs.get(stored) is not None, "its inputs are kept for the next run"
    async with stage(tmp_path, makes_one, raw=first.raw) as second:
        second.runtime.runner.wake()
        task = await wait_for_task_async(
            partial(row, second, task_id), done=lambda task: task.state == "success", what=f"{task_id} to succeed"
        )
        assert task.attempts == 2
        assert await held(second) == (Decimal(94), Decimal(0))
        assert await second.runtime.blobs.get(stored) is None, "a finished task's inputs are dropped"


async def test_an_async_task_whose_end_cannot_be_written_keeps_its_inputs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with stage(tmp_path, makes_one) as s:

        async def database_down(*args: object, **kwargs: object) -> bool:
            raise RuntimeError("database is down")

        s.runtime.tasks.records.finish = database_down  # type: ignore[method-assign]
        task_id = await s.runtime.tasks.submit(s.key, request(), Origin("openai", "edit"))
        s.runtime.runner.wake()

        async def logged() -> bool:
            return any("could not be recorded" in record.getMessage() for record in caplog.records)

        await wait_for_task_async(logged, what="the failure to record the task's end to be logged")
        task = await row(s, task_id)
        assert task.state == "running", "left for its lease to run out and another run"
        assert await s.runtime.blobs.get(task.request["images"][0]["blob"]) is not None


@pytest.mark.parametrize(
    ("delivery", "stream", "provider_b64", "holds_bytes"),
    [
        (Delivery.B64_JSON, False, False, True),
        (Delivery.URL, False, False, False),
        (Delivery.B64_JSON, False, True, False),
        (Delivery.URL, True, False, True),
    ],
    ids=["b64", "url", "provider-base64", "stream"],
)
async def test_an_outcome_holds_an_images_bytes_only_where_its_answer_embeds_them(
    tmp_path: Path, delivery: Delivery, stream: bool, provider_b64: bool, holds_bytes: bool
) -> None:
    """A sync answer waits for its client holding only what it will send: no bytes for a URL, none
    beside a provider's own base64, which is sent as it came."""

    async def makes(job: Job) -> Made:
        image = plain_image(job)
        if provider_b64:
            image = replace(image, b64=memoryview(base64.b64encode(image.data)))
        return Made([image])

    async with stage(tmp_path, makes) as s:
        req = request()
        req.delivery, req.stream = delivery, stream
        outcome = await s.runtime.tasks.run(s.key, req, Origin("openai", "edit"))
        stored = [path.read_bytes()[:8] for path in (tmp_path / "files").rglob("*.png")]
    [image] = outcome.images
    assert (image.data is not None) == holds_bytes
    assert (image.b64 is not None) == provider_b64
    assert stored == [b"\x89PNG\r\n\x1a\n"], "the file is stored whatever the answer holds"
