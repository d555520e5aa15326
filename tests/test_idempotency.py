"""Idempotency-Key (SPEC §6): replay without running again, 422 for another request, per API key."""

from __future__ import annotations

import base64
import sqlite3
from contextlib import suppress

import pytest
from fastapi.responses import Response
from sqlalchemy import func, select
from starlette.requests import ClientDisconnect

from imagegate import idempotency
from imagegate.asgi import ASGIApp, Message, Receive, Scope, Send
from imagegate.core.job import PartialSink
from imagegate.errors import EngineError
from imagegate.service.records import Outcome
from imagegate.service.tasks import Prepared, TaskService
from imagegate.stores.db import Database, Task
from tests.conftest import Api, create_key, make_image

PNG = make_image(320, 240)


async def task_count(api: Api) -> int:
    db = Database(api.config.resolved_database_url)
    try:
        async with db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(Task)) or 0)
    finally:
        await db.aclose()


async def test_multipart_repeat_replays_the_first_answer_even_with_a_new_boundary(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "edit-1"}
    files = [("image", ("a.png", PNG, "image/png"))]
    first = await api.client.post("/v1/images/edits", headers=headers, data={"prompt": "sepia"}, files=files)
    again = await api.client.post("/v1/images/edits", headers=headers, data={"prompt": "sepia"}, files=files)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-imagegate-task"] == first.headers["x-imagegate-task"]
    assert await task_count(api) == 1
    usage = (await api.client.get("/v1/usage", headers=api.auth)).json()
    assert usage["balance"] == "994", "charged once: 6 credits for one medium 1K edit"


async def test_same_key_with_another_body_is_422_in_each_dialect(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "k"}
    files = [("image", ("a.png", PNG, "image/png"))]
    assert (
        await api.client.post("/v1/images/edits", headers=headers, data={"prompt": "a"}, files=files)
    ).status_code == 200
    other = await api.client.post("/v1/images/edits", headers=headers, data={"prompt": "b"}, files=files)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    jobs = await api.client.post("/api/v1/jobs/createTask", headers=headers, json={"model": "x"})
    assert jobs.status_code == 422 and jobs.json() == {"code": 422, "msg": jobs.json()["msg"], "data": None}
    assert await task_count(api) == 1


async def test_errors_are_not_stored_so_a_retry_runs(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "retry-me"}
    bad = await api.client.post("/v1/images/edits", headers=headers, json={"prompt": "x", "image": "data:,"})
    assert bad.status_code == 400
    again = await api.client.post("/v1/images/edits", headers=headers, json={"prompt": "x", "image": "data:,"})
    assert again.status_code == 400 and "idempotent-replayed" not in again.headers


async def test_keys_are_scoped_to_the_api_key(api: Api) -> None:
    other = await create_key(api.config)
    body = {"prompt": "x", "image": "data:,"}
    files = [("image", ("a.png", PNG, "image/png"))]
    mine = await api.client.post(
        "/v1/images/edits", headers={**api.auth, "Idempotency-Key": "shared"}, data={"prompt": "a"}, files=files
    )
    theirs = await api.client.post(
        "/v1/images/edits", headers={"Authorization": f"Bearer {other}", "Idempotency-Key": "shared"}, json=body
    )
    assert mine.status_code == 200 and theirs.status_code == 400, "another key's use of the same key is independent"


async def test_without_the_header_nothing_is_replayed(api: Api) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    a = await api.client.post("/v1/images/edits", headers=api.auth, data={"prompt": "a"}, files=files)
    b = await api.client.post("/v1/images/edits", headers=api.auth, data={"prompt": "a"}, files=files)
    assert a.json()["task_id"] != b.json()["task_id"]


async def test_async_submission_is_not_queued_twice(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "job-1"}
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    payload = {"model": "gpt-image-2-image-to-image", "input": {"prompt": "x", "image_urls": [image]}}
    first = await api.client.post("/api/v1/jobs/createTask", headers=headers, json=payload)
    again = await api.client.post("/api/v1/jobs/createTask", headers=headers, json=payload)
    assert first.status_code == again.status_code == 200
    assert first.json()["data"]["taskId"] == again.json()["data"]["taskId"]
    assert await task_count(api) == 1


async def test_a_streamed_edit_streams_and_its_repeat_replays_the_stream(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "stream-1"}
    files = [("image", ("a.png", PNG, "image/png"))]
    form = {"prompt": "sepia", "stream": "true", "partial_images": "2"}
    first = await api.client.post("/v1/images/edits", headers=headers, data=form, files=files)
    again = await api.client.post("/v1/images/edits", headers=headers, data=form, files=files)
    events = [line for line in first.text.splitlines() if line.startswith("event:")]
    assert events == ["event: image_edit.partial_image"] * 2 + ["event: image_edit.completed"], first.text[:300]
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert await task_count(api) == 1


async def test_an_answer_too_large_to_keep_is_not_run_or_charged_twice(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "MAX_STORED_BYTES", 1000)
    headers = {**api.auth, "Idempotency-Key": "big-1"}
    files = [("image", ("a.png", PNG, "image/png"))]
    first = await api.client.post("/v1/images/edits", headers=headers, data={"prompt": "sepia"}, files=files)
    again = await api.client.post("/v1/images/edits", headers=headers, data={"prompt": "sepia"}, files=files)
    assert first.status_code == 200 and len(first.content) > 1000
    assert again.status_code == 409 and again.json()["error"]["code"] == "idempotency_answer_not_kept", again.text
    assert "larger than" in again.json()["error"]["message"]
    assert await task_count(api) == 1
    assert (await api.client.get("/v1/usage", headers=api.auth)).json()["balance"] == "994", "charged once"


async def test_a_new_keys_secret_is_never_kept_for_a_replay(api: Api) -> None:
    admin = {"Authorization": f"Bearer {await create_key(api.config, admin=True)}", "Idempotency-Key": "new-key"}
    made = await api.client.post("/admin/keys", headers=admin, json={"name": "x", "credits": 5})
    again = await api.client.post("/admin/keys", headers=admin, json={"name": "x", "credits": 5})
    assert made.status_code == 201 and made.json()["key"].startswith("ig-")
    assert again.status_code == 409 and again.json()["error"]["code"] == "idempotency_answer_not_kept"
    assert "shown only once" in again.json()["error"]["message"]
    with sqlite3.connect(api.config.data_dir / "imagegate.db") as db:
        stored = db.execute("SELECT body, headers FROM idempotency").fetchall()
    assert stored and all(made.json()["key"].encode() not in (body or b"") for body, _ in stored)
    assert all(made.json()["webhook_secret"] not in (headers or "") for _, headers in stored)


async def through_middleware(api: Api, app: ASGIApp, key: bytes, send: Send) -> None:
    """One POST with Idempotency-Key `key` and a `{}` body, through the middleware in front of `app`,
    on the runtime of `api`, its answer to `send`."""
    middleware = idempotency.IdempotencyMiddleware(app, lambda exc, scope: Response(status_code=exc.status))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/images/edits",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {api.key}".encode()), (b"idempotency-key", key)],
        "app": api.client._transport.app,  # type: ignore[attr-defined]
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    await middleware(scope, receive, send)


@pytest.mark.parametrize(
    ("settled", "disconnect"),
    [(False, False), (True, False), (True, True)],
    ids=["before-settling", "after-settling", "after-settling-raised"],
)
async def test_a_stream_cut_off_before_its_end_is_not_replayed(api: Api, settled: bool, disconnect: bool) -> None:
    """A client that leaves a stream before its end gets nothing to replay: its retry runs, unless
    the task was already settled (charged), when the repeat gets a 409 instead of a second charge."""
    runs: list[int] = []

    async def cut_off(scope: Scope, receive: Receive, send: Send) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if settled:
            idempotency.settled_before_sent(scope)
        await send({"type": "http.response.body", "body": b"event: partial\n\n", "more_body": True})
        if disconnect:  # how Starlette reports the client gone under ASGI 2.4
            raise ClientDisconnect()

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    for _ in range(2):
        with suppress(ClientDisconnect):
            await through_middleware(api, cut_off, b"cut", send)
    assert len(runs) == (1 if settled else 2)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 409 if settled else 200]
    assert not any((b"idempotent-replayed", b"true") in m.get("headers", []) for m in sent)


async def test_a_stream_that_ends_in_an_error_is_not_kept(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    run = TaskService.execute

    async def fails_first(self: TaskService, prepared: Prepared, on_partial: PartialSink | None = None) -> Outcome:
        calls.append(1)
        if len(calls) == 1:
            raise EngineError("The engine failed once.")
        return await run(self, prepared, on_partial)

    monkeypatch.setattr(TaskService, "execute", fails_first)
    headers = {**api.auth, "Idempotency-Key": "stream-fails"}
    files = [("image", ("a.png", PNG, "image/png"))]
    form = {"prompt": "sepia", "stream": "true"}
    failed = await api.client.post("/v1/images/edits", headers=headers, data=form, files=files)
    retried = await api.client.post("/v1/images/edits", headers=headers, data=form, files=files)
    assert "event: error" in failed.text
    assert "idempotent-replayed" not in retried.headers and "event: image_edit.completed" in retried.text
    assert len(calls) == 2


async def test_an_answer_handed_over_whole_is_kept_though_its_sending_failed(api: Api) -> None:
    """Under ASGI 2.4 a server raises from `send` once its client has gone (the client timed out
    and will retry): the answer, all of it captured, is still the one to replay."""
    runs: list[int] = []

    async def answers(scope: Scope, receive: Receive, send: Send) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}', "more_body": False})

    replayed: list[Message] = []

    async def gone(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("the client went away")

    async def send(message: Message) -> None:
        replayed.append(message)

    with pytest.raises(OSError):
        await through_middleware(api, answers, b"gone", gone)
    await through_middleware(api, answers, b"gone", send)
    assert len(runs) == 1 and (b"idempotent-replayed", b"true") in replayed[0]["headers"]
    assert replayed[1]["body"] == b'{"ok": true}'
