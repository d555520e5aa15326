"""Result files expire after `[storage] results_ttl`: bytes deleted, the task's record kept, 410 after."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.types import Message

from imagegate.app import blob_response
from imagegate.config import ConfigError, load_config
from imagegate.errors import StorageUnavailable
from imagegate.service import retention
from imagegate.service.retention import ResultSweeper
from imagegate.stores.db import Task, now_ms
from tests.conftest import Api, open_api
from tests.test_accounts import DATA_URL, settings

URL_EDIT = {"prompt": "invert", "image": DATA_URL, "response_format": "url"}


def runtime_of(api: Api) -> Any:
    return api.client._transport.app.state.runtime  # type: ignore[attr-defined]


async def a_result(api: Api, form: dict[str, str] = URL_EDIT) -> str:
    """The stored file name of one edit's result, delivered as a URL."""
    made = await api.client.post("/v1/images/edits", headers=api.auth, json=form)
    assert made.status_code == 200, made.text
    return str(made.json()["data"][0]["url"].rsplit("/", 1)[1])


def refusing_to_delete(monkeypatch: pytest.MonkeyPatch, runtime: Any, refused: set[str]) -> None:
    """The runtime's store refuses to delete the names in `refused` (as a permission error would)."""
    real_delete = type(runtime.blobs).delete

    async def delete(store: object, name: str) -> None:
        if name in refused:
            raise StorageUnavailable("the store refused")
        await real_delete(store, name)

    monkeypatch.setattr(type(runtime.blobs), "delete", delete)


def test_results_ttl_reads_durations() -> None:
    assert load_config(storage={"results_ttl": "7d"}).storage.results_ttl == 7 * 86400
    assert load_config(storage={"results_ttl": "90m"}).storage.results_ttl == 5400
    assert load_config().storage.results_ttl == 7 * 86400, "a week by default"


async def test_an_expired_result_answers_410_and_its_task_keeps_its_record(tmp_path: Path) -> None:
    config = settings(tmp_path)
    form = {"prompt": "invert", "image": DATA_URL, "size": "1024x1024", "response_format": "url", "n": 2}
    async with open_api(config) as api:
        made = await api.client.post("/v1/images/edits", headers=api.auth, json=form)
        assert made.status_code == 200, made.text
        urls = [item["url"].removeprefix("http://testserver") for item in made.json()["data"]]
        assert [(await api.client.get(url)).status_code for url in urls] == [200, 200]
        runtime = runtime_of(api)
        now = [now_ms()]
        sweeper = ResultSweeper(runtime.db, runtime.blobs, 3600, 60, clock=lambda: now[0])
        assert await sweeper.sweep() == 0, "younger than an hour: kept"
        now[0] += 3600 * 1000 + 1
        assert await sweeper.sweep() == 2
        assert await sweeper.sweep() == 0, "swept once"
        gone = await api.client.get(urls[0])
        unknown = await api.client.get("/files/" + "A" * 32 + ".png")
        task = await api.client.get(f"/v1/images/tasks/{made.headers['x-imagegate-task']}", headers=api.auth)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "expired"
    assert "expired" in gone.json()["error"]["message"] and "Make the request again" in gone.json()["error"]["message"]
    assert unknown.status_code == 404, "a file that never was is still not found"
    assert task.status_code == 200 and task.json()["status"] == "success", "the task keeps its record"
    assert not any(runtime.blobs.local_path(url.rsplit("/", 1)[1]) for url in urls), "the bytes are gone"


async def test_a_zero_ttl_keeps_results_forever(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with open_api(config) as api:
        name = await a_result(api)
        runtime = runtime_of(api)
        sweeper = ResultSweeper(runtime.db, runtime.blobs, 0, 60, clock=lambda: now_ms() + 10**12)
        assert await sweeper.sweep() == 0
        assert (await api.client.get(f"/files/{name}")).status_code == 200


def test_results_ttl_refuses_what_no_clock_can_reach() -> None:
    for value in ("inf", 1e17, -1):
        with pytest.raises(ConfigError):
            load_config(storage={"results_ttl": value})


async def test_a_file_the_store_refuses_to_delete_holds_up_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One undeletable file (a permission error, a refusing bucket) must not stop the sweep: the rest
    expire and answer 410, and the refused one is tried again at the next sweep. More refusals than
    a batch holds do not make the sweep take the same ones over and over."""
    monkeypatch.setattr(retention, "BATCH", 2)
    config = settings(tmp_path)
    form = {"prompt": "invert", "image": DATA_URL, "size": "1024x1024", "response_format": "url"}
    async with open_api(config) as api:
        names = [await a_result(api, form) for _ in range(6)]
        urls = [f"/files/{name}" for name in names]
        runtime = runtime_of(api)
        refused = {names[0], names[1], names[3]}
        refusing_to_delete(monkeypatch, runtime, refused)
        sweeper = ResultSweeper(runtime.db, runtime.blobs, 3600, 60, clock=lambda: now_ms() + 3600 * 1000 + 10)
        assert await sweeper.sweep() == 3
        statuses = [(await api.client.get(url)).status_code for url in urls]
        refused.clear()
        assert await sweeper.sweep() == 3, "the refused ones are tried again"
        after = [(await api.client.get(url)).status_code for url in urls]
    assert statuses == [200, 200, 410, 200, 410, 410], "the refused ones are still there; the rest expired"
    assert after == [410] * 6


async def test_a_result_past_its_time_answers_410_before_a_sweep_marks_it(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with open_api(config) as api:
        name = await a_result(api)
        url = f"/files/{name}"
        runtime = runtime_of(api)
        later = ResultSweeper(runtime.db, runtime.blobs, 3600, 60, clock=lambda: now_ms() + 3600 * 1000 + 10)
        await runtime.blobs.delete(name)  # its bytes gone (another node's sweep), not yet marked
        runtime.sweeper = later
        gone = await api.client.get(url)
        runtime.sweeper = ResultSweeper(runtime.db, runtime.blobs, 0, 60, clock=later.clock)  # now kept forever
        await later.sweep()
        still_gone = await api.client.get(url)
    assert gone.status_code == 410 and "results are kept 1 hour." in gone.json()["error"]["message"]
    assert still_gone.status_code == 410
    assert "kept" not in still_gone.json()["error"]["message"], "no word of a retention that no longer applies"


async def test_a_task_whose_inline_result_expired_answers_410_not_an_empty_image(tmp_path: Path) -> None:
    config = settings(tmp_path)
    form = {"prompt": "invert", "image": DATA_URL, "size": "1024x1024", "response_format": "b64_json"}
    async with open_api(config) as api:
        made = await api.client.post("/v1/images/edits", headers=api.auth, json=form)
        assert made.status_code == 200, made.text
        poll = f"/v1/images/tasks/{made.headers['x-imagegate-task']}"
        before = await api.client.get(poll, headers=api.auth)
        runtime = runtime_of(api)
        runtime.sweeper.clock = lambda: now_ms() + 8 * 86400 * 1000
        assert await runtime.sweeper.sweep() == 1
        after = await api.client.get(poll, headers=api.auth)
    assert before.status_code == 200 and before.json()["data"]["data"][0]["b64_json"]
    assert after.status_code == 410, after.text
    assert after.json()["error"]["code"] == "expired"
    assert "results are kept 7 days" in after.json()["error"]["message"]


@pytest.mark.parametrize("extensions", [{}, {"http.response.pathsend": {}}])
async def test_a_result_expired_as_its_download_starts_is_still_sent_whole(
    tmp_path: Path, extensions: dict[str, object]
) -> None:
    """The sweep may delete a file between the route finding it and the response being sent: the
    file opened by the route is sent whole, not a 500 after the headers."""
    config = settings(tmp_path)
    async with open_api(config) as api:
        name = await a_result(api)
        runtime = runtime_of(api)
        original = runtime.blobs.local_path(name).read_bytes()
        response = await blob_response(runtime, name, {}, "No such file.")
        await runtime.blobs.delete(name)
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "headers": [],
            "asgi": {"spec_version": "2.4"},
            "extensions": extensions,
        }
        await response(scope, receive, send)
    assert sent[0]["status"] == 200
    assert b"".join(message.get("body", b"") for message in sent[1:]) == original


async def test_files_nothing_will_read_are_deleted_once_old_enough(tmp_path: Path) -> None:
    """A result file without a row (its run was taken over, or its final write failed), an input
    published for a provider, a queued channel's handover files and the kept inputs of a task that is
    over or was never recorded (all left by a crash) are deleted once old enough; a recorded result, an
    active task's kept inputs and anything else are left alone."""
    config = settings(tmp_path)
    async with open_api(config) as api:
        recorded = await a_result(api)
        await a_result(api)
        runtime = runtime_of(api)
        await a_result(api)
        async with runtime.db.session() as session, session.begin():
            over, waiting, running = (await session.scalars(select(Task.id).order_by(Task.created_at))).all()
            await session.execute(update(Task).where(Task.id == waiting).values(state="waiting"))
            await session.execute(update(Task).where(Task.id == running).values(state="running"))
        unrecorded = "Z" * 32 + ".png"
        scratch = {
            "relay.leftoverofacrash.png",
            "rj_" + "a" * 24 + "_in_0",
            "rj_" + "a" * 24 + ".json",
            "rj_" + "a" * 24 + "_out_0",
            f"in_{over}_0",
            f"in_task_{'0' * 24}_mask",
        }
        kept = {f"in_{waiting}_0", f"in_{waiting}_mask", f"in_{running}_1", "in_task_abc_0", "notes.txt"}
        for name in (unrecorded, *scratch, *kept):
            await runtime.blobs.put(name, b"x")

        def sweeper(ttl_s: float, hours_later: float) -> ResultSweeper:
            return ResultSweeper(
                runtime.db, runtime.blobs, ttl_s, 60, clock=lambda: now_ms() + int(hours_later * 3.6e6)
            )

        assert await sweeper(3600, 2).sweep_leftovers() == 0, "past an hour's retention, but leftovers are kept a day"
        with pytest.MonkeyPatch.context() as patch:
            refusing_to_delete(patch, runtime, {unrecorded})
            assert await sweeper(3600, 25).sweep_leftovers() == len(scratch), "a refused one holds up no other"
        assert await sweeper(0, 25).sweep_leftovers() == 0, "results kept for ever: unrecorded ones too"
        assert await sweeper(3600, 25).sweep_leftovers() == 1, "and a refused one is tried again"
        names = {recorded, unrecorded, *scratch, *kept}
        left = {name for name in names if runtime.blobs.local_path(name)}
    assert left == {recorded, *kept}


async def test_scratch_files_go_after_a_day_even_when_results_are_kept_for_ever(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with open_api(config) as api:
        runtime = runtime_of(api)
        await runtime.blobs.put("relay.leftoverofacrash.png", b"x")
        await runtime.blobs.put("Z" * 32 + ".png", b"x")
        forever = ResultSweeper(runtime.db, runtime.blobs, 0, 60, clock=lambda: now_ms() + 25 * 3600 * 1000)
        assert await forever.sweep_leftovers() == 1
        assert runtime.blobs.local_path("Z" * 32 + ".png")


async def test_a_result_whose_id_looks_like_scratch_is_kept(tmp_path: Path) -> None:
    """Result ids are random URL-safe text: one may begin like a handover file (`rj_`). It is still
    a result, kept as results are."""
    config = settings(tmp_path)
    async with open_api(config) as api:
        runtime = runtime_of(api)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(secrets, "token_urlsafe", lambda size: "rj_" + "b" * 29)
            name = await a_result(api)
        assert name.startswith("rj_")
        for ttl_s in (0, 7 * 86_400):
            later = ResultSweeper(runtime.db, runtime.blobs, ttl_s, 60, clock=lambda: now_ms() + 2 * 86_400_000)
            assert await later.sweep_leftovers() == 0
        assert (await api.client.get(f"/files/{name}")).status_code == 200


async def test_scratch_is_kept_while_a_call_may_still_read_it(tmp_path: Path) -> None:
    """A handover file is read by a worker while its call runs, which may be longer than a day when
    the operator allows it (`[worker] handler_timeout_s`)."""
    config = settings(tmp_path)
    async with open_api(config) as api:
        runtime = runtime_of(api)
        await runtime.blobs.put("rj_" + "c" * 24 + "_in_0", b"x")
        three_days = 3 * 86_400

        def sweeper(days_later: float) -> ResultSweeper:
            clock = lambda: now_ms() + int(days_later * 86_400_000)  # noqa: E731
            return ResultSweeper(runtime.db, runtime.blobs, 0, 60, clock=clock, longest_call_s=three_days)

        assert await sweeper(2).sweep_leftovers() == 0
        assert await sweeper(4.5).sweep_leftovers() == 1
