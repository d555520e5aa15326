"""Credits that stay exact under concurrency and faults, and per-key limits in every dialect (SPEC §4, §7)."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegate.config import Config, load_config
from imagegate.core.pricing import credits_text
from imagegate.service.records import TaskRecords
from imagegate.stores.db import now_ms
from imagegate.stores.keys import hash_key
from tests.conftest import LOOPBACK_ALLOW, Api, FileServer, audit_ledgers, create_key, make_image, open_api
from tests.engines import OnePerCall
from tests.loopback import loopback_server
from tests.receivers import webhook_receiver
from tests.test_error_shapes import Shape, envelope_shape, jobs_shape, openai_shape
from tests.waiting import record_info, wait_for_task_async

PNG = make_image(64, 64)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
UNLIMITED = {"requests_per_minute": 0, "max_active_tasks": 0}

DIALECTS: dict[str, tuple[str, dict[str, Any], Shape]] = {
    "openai": (
        "/v1/images/edits",
        {"model": "gpt-image-2", "prompt": "p", "image": DATA_URL, "size": "1024x1024"},
        openai_shape,
    ),
    "envelope": (
        "/v1/images/edit",
        {"model": "gpt-image-2", "prompt": "p", "image": DATA_URL, "size": "1:1"},
        envelope_shape,
    ),
    "jobs": (
        "/api/v1/jobs/createTask",
        {"model": "gpt-image-2-text-to-image", "input": {"prompt": "p", "aspect_ratio": "1:1"}},
        jobs_shape,
    ),
}
"""A valid paid request of each dialect (medium quality at 1K: 6 credits) and its error shape."""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_code(body: Any) -> str | int:
    code: str | int = body["error"]["code"] if "error" in body else body["code"]
    return code


def settings(tmp_path: Path, **accounts: int) -> Config:
    return load_config(data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW, accounts={**UNLIMITED, **accounts})


def db_file(config: Config) -> Path:
    return config.data_dir / "imagegate.db"


def balance(config: Config, key: str) -> tuple[str, str]:
    """(balance, held) of `key` as decimal strings, read straight from the database."""
    with sqlite3.connect(db_file(config)) as db:
        credits, held = db.execute("SELECT credits, held FROM api_keys WHERE key_hash = ?", (hash_key(key),)).fetchone()
    return credits_text(Decimal(credits) / 1_000_000), credits_text(Decimal(held) / 1_000_000)


def task_count(config: Config) -> int:
    with sqlite3.connect(db_file(config)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM tasks").fetchone()
    return int(count)


@contextmanager
def watch_available(config: Config, key: str) -> Iterator[list[int]]:
    """Sample the key's balance and available balance (in millionths) from another thread while the
    block runs; yields the list of every value seen."""
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with sqlite3.connect(db_file(config)) as db:
            while not stop.is_set():
                credits, held = db.execute(
                    "SELECT credits, held FROM api_keys WHERE key_hash = ?", (hash_key(key),)
                ).fetchone()
                seen.extend((credits, credits - held))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


async def test_100_concurrent_requests_on_a_balance_for_50(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with open_api(config) as api:
        key = await create_key(config, credits=100)
        form = {"model": "dall-e-2", "prompt": "invert", "size": "256x256"}

        async def edit() -> httpx.Response:
            files = {"image": ("a.png", PNG, "image/png")}
            return await api.client.post("/v1/images/edits", headers=bearer(key), data=form, files=files)

        with watch_available(config, key) as seen:
            responses = await asyncio.gather(*(edit() for _ in range(100)))
    assert Counter(r.status_code for r in responses) == {200: 50, 402: 50}
    refused = [r.json()["error"] for r in responses if r.status_code == 402]
    assert {e["code"] for e in refused} == {"insufficient_credits"} and "costs 2 credits" in refused[0]["message"]
    assert seen and min(seen) >= 0, "neither the balance nor the available balance ever went negative"
    assert balance(config, key) == ("0", "0")
    audit_ledgers(db_file(config))
    with sqlite3.connect(db_file(config)) as db:
        kinds = Counter(kind for (kind,) in db.execute("SELECT kind FROM ledger"))
    assert kinds["hold"] == 50 and kinds["settle"] == 50 and kinds["release"] == 0


async def test_engine_errors_and_client_errors_release_the_hold(tmp_path: Path) -> None:
    engine = OnePerCall(fail_calls={0})
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": engine}) as api:
        failed = await api.client.post("/v1/images/generations", headers=api.auth, json={"prompt": "x"})
        assert failed.status_code == 502
        unreadable = await api.client.post(
            "/v1/images/edits", headers=api.auth, json={"prompt": "x", "image": "data:image/png;base64,AAAA"}
        )
        assert unreadable.status_code == 400, "a bad input found after the task was recorded"
        assert balance(config, api.key) == ("1000", "0")
        usage = (await api.client.get("/v1/usage", headers=api.auth)).json()
    assert [t["state"] for t in usage["tasks"]] == ["fail", "fail"] and {t["cost"] for t in usage["tasks"]} == {"0"}
    assert usage["holds"] == [] and usage["balance"] == "1000"
    audit_ledgers(db_file(config))


async def test_a_result_ready_after_its_task_was_ended_elsewhere_is_not_delivered_free(tmp_path: Path) -> None:
    """A sync task whose lease ran out while its engine still worked (a stalled process) is failed by
    another process, its hold released. When the result then arrives, the client must not get it for
    nothing: it gets the dialect's error, and the stored file (which no row records) is deleted."""
    gate = asyncio.Event()
    engine = OnePerCall(gate=gate)
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": engine}) as api:
        call = asyncio.create_task(
            api.client.post("/v1/images/generations", headers=api.auth, json={"prompt": "x", "response_format": "url"})
        )
        await engine.started.wait()
        runtime = api.client._transport.app.state.runtime  # type: ignore[attr-defined]
        later = TaskRecords(runtime.db, "proc_elsewhere", lambda: now_ms() + 10**9)
        assert await later.fail_orphans() == 1, "another process finds its lease run out"
        gate.set()
        answer = await call
        stored = list((config.data_dir / "files").rglob("*.png"))
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "interrupted", answer.text
    assert "nothing was charged" in answer.json()["error"]["message"]
    assert balance(config, api.key) == ("1000", "0")
    assert stored == [], "no file is left that no row records"
    audit_ledgers(db_file(config))


async def test_a_sync_task_whose_input_is_slow_to_fetch_keeps_its_lease_meanwhile(tmp_path: Path) -> None:
    """The lease of a sync task is renewed while its inputs are fetched, not only while its engine
    runs: a fetch longer than the lease must not let another process fail the task as orphaned (the
    engine's work, perhaps a paid provider call, would then be thrown away)."""
    asked, release = threading.Event(), threading.Event()

    class SlowImage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.set()
            release.wait(10)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, format: str, *args: object) -> None:
            return None

    config = load_config(
        data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW, accounts=UNLIMITED, runner={"lease_s": 1.2}
    )
    with loopback_server(SlowImage) as base:
        async with open_api(config) as api:
            form = {"prompt": "invert", "image": f"{base}/a.png", "response_format": "url"}
            call = asyncio.create_task(api.client.post("/v1/images/edits", headers=api.auth, json=form))
            assert await asyncio.to_thread(asked.wait, 10)
            await asyncio.sleep(2.6)  # the fetch outlasts the lease more than twice
            runtime = api.client._transport.app.state.runtime  # type: ignore[attr-defined]
            orphaned = await TaskRecords(runtime.db, "proc_elsewhere").fail_orphans()
            release.set()
            answer = await call
    assert answer.status_code == 200, answer.text
    assert orphaned == 0, "another process found the lease of a task still being worked on run out"
    audit_ledgers(db_file(config))


@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
async def test_an_async_task_taken_over_keeps_its_inputs_for_the_process_that_has_it(
    tmp_path: Path, fails: bool
) -> None:
    """An async task whose lease ran out mid-run is claimed again by another runner. Whether this
    run then succeeds or fails, it records nothing, charges nothing, deletes its result file and
    leaves the inputs to the new run."""
    gate = asyncio.Event()
    engine = OnePerCall(gate=gate, fail_calls={0} if fails else None)
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": engine}) as api:
        submitted = await api.client.post(
            "/v1/images/edits",
            headers=api.auth,
            json={
                "prompt": "x",
                "image": DATA_URL,
                "callback_url": "http://127.0.0.1:9/hook",
                "response_format": "url",
            },
        )
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        await engine.started.wait()
        with sqlite3.connect(db_file(config)) as db:  # another runner claimed it once its lease ran out
            db.execute("UPDATE tasks SET lease_owner = 'proc_elsewhere' WHERE id = ?", (task_id,))
        gate.set()
        for _ in range(200):
            if engine.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        inputs = [p.name for p in (config.data_dir / "files").rglob(f"in_{task_id}_*")]
        results = [p.name for p in (config.data_dir / "files").rglob("*.png") if not p.name.startswith("in_")]
        with sqlite3.connect(db_file(config)) as db:
            state, owner = db.execute("SELECT state, lease_owner FROM tasks WHERE id = ?", (task_id,)).fetchone()
    assert (state, owner) == ("running", "proc_elsewhere"), "the task is the other runner's"
    assert inputs, "its inputs are kept for the run that has it"
    assert results == [], "this run's result file is deleted"
    assert balance(config, api.key) == ("1000", "6"), "still held for the other run; nothing charged"


async def test_partial_success_charges_only_the_images_delivered(tmp_path: Path) -> None:
    engine = OnePerCall(fail_calls={1})
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": engine}) as api:
        r = await api.client.post(
            "/v1/images/generations", headers=api.auth, json={"prompt": "x", "n": 3, "size": "1024x1024"}
        )
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        usage = (await api.client.get("/v1/usage", headers=api.auth)).json()
    assert usage["tasks"][0]["cost"] == "12" and usage["tasks"][0]["images"] == 2
    assert usage["balance"] == "988"
    with sqlite3.connect(db_file(config)) as db:
        rows = list(db.execute("SELECT kind, amount, held FROM ledger WHERE task_id IS NOT NULL ORDER BY id"))
    assert rows == [("hold", 0, 18_000_000), ("settle", -12_000_000, -12_000_000), ("release", 0, -6_000_000)]
    audit_ledgers(db_file(config))


async def test_a_failing_async_task_releases_its_hold(tmp_path: Path) -> None:
    engine = OnePerCall(fail_calls={0})
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": engine}) as api:
        path, body, _ = DIALECTS["jobs"]
        created = await api.client.post(path, headers=api.auth, json=body)
        task_id = created.json()["data"]["taskId"]
        assert balance(config, api.key) == ("1000", "6"), "the price is held while the task waits"
        info = await wait_for_task_async(api.client, record_info(task_id), headers=api.auth)
        assert info.json()["data"]["state"] == "fail"
    assert balance(config, api.key) == ("1000", "0")
    audit_ledgers(db_file(config))


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_402_in_each_dialect_records_nothing(tmp_path: Path, dialect: str) -> None:
    path, body, shape = DIALECTS[dialect]
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": OnePerCall()}) as api:
        poor = await create_key(config, credits="5.999999")
        r = await api.client.post(path, headers=bearer(poor), json=body)
    assert r.status_code == 402, r.text
    shape(r.json(), 402)
    assert error_code(r.json()) in ("insufficient_credits", 402)
    assert task_count(config) == 0 and balance(config, poor) == ("5.999999", "0")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_429_at_the_key_rpm_in_each_dialect(tmp_path: Path, dialect: str) -> None:
    path, body, shape = DIALECTS[dialect]
    config = settings(tmp_path, requests_per_minute=100)
    async with open_api(config, {"one-per-call": OnePerCall()}) as api:
        key = await create_key(config, rpm=2)
        first = await api.client.post(path, headers=bearer(key), json=body)
        second = await api.client.post(path, headers=bearer(key), json=body)
        third = await api.client.post(path, headers=bearer(key), json=body)
        default = await api.client.post(path, headers=api.auth, json=body)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429), third.text
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    shape(third.json(), 429)
    assert error_code(third.json()) in ("rate_limit_exceeded", 429)
    assert int(third.headers["retry-after"]) >= 1 and third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-reset-requests"].endswith("s")
    assert default.headers["x-ratelimit-limit-requests"] == "100", "keys without their own limit take the default"
    assert task_count(config) == 3, "the refused request recorded nothing"


async def test_409_at_the_key_active_task_limit_in_each_dialect(tmp_path: Path) -> None:
    gate = asyncio.Event()
    engine = OnePerCall(gate=gate)
    config = settings(tmp_path, max_active_tasks=5)
    async with open_api(config, {"one-per-call": engine}) as api:
        key = await create_key(config, max_active=1)
        path, body, _ = DIALECTS["openai"]
        running = asyncio.create_task(api.client.post(path, headers=bearer(key), json=body))
        await engine.started.wait()
        for dialect, (path, body, shape) in DIALECTS.items():
            r = await api.client.post(path, headers=bearer(key), json=body)
            assert r.status_code == 409, (dialect, r.text)
            shape(r.json(), 409)
            assert error_code(r.json()) in ("too_many_active_tasks", 409)
        gate.set()
        assert (await running).status_code == 200
        path, body, _ = DIALECTS["jobs"]
        assert (await api.client.post(path, headers=bearer(key), json=body)).status_code == 200
    audit_ledgers(db_file(config))


async def test_images_per_request_allowed_models_and_expiry_per_key(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": OnePerCall()}) as api:
        few = await create_key(config, max_images=2)
        r = await api.client.post("/v1/images/generations", headers=bearer(few), json={"prompt": "x", "n": 3})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        assert "at most 2 images" in r.json()["error"]["message"]

        narrow = await create_key(config, models=["dall-e-2"])
        r = await api.client.post("/v1/images/generations", headers=bearer(narrow), json={"prompt": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        models = (await api.client.get("/v1/models", headers=bearer(narrow))).json()["data"]
        pricing = (await api.client.get("/v1/pricing", headers=bearer(narrow))).json()["data"]
        assert [m["id"] for m in models] == ["dall-e-2"] == [p["model"] for p in pricing]

        expired = await create_key(config, expires_at=1)
        r = await api.client.get("/v1/usage", headers=bearer(expired))
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


async def test_dry_run_prices_every_dialect_without_running_or_charging(tmp_path: Path) -> None:
    config = settings(tmp_path)
    async with open_api(config, {"one-per-call": OnePerCall()}) as api:
        edit = await api.client.post(
            "/v1/images/edits?dry_run=true",
            headers=api.auth,
            files={"image": ("a.png", PNG, "image/png")},
            data={"prompt": "x", "size": "2048x2048", "quality": "high", "n": "2"},
        )
        generate = await api.client.post(
            "/v1/images/generations?dry_run=1", headers=api.auth, json={"prompt": "x", "quality": "low"}
        )
        envelope = await api.client.post(
            "/v1/images/edit?dry_run=true", headers=api.auth, json={**DIALECTS["envelope"][1], "size": "16:9"}
        )
        jobs = await api.client.post(
            "/api/v1/jobs/createTask?dry_run=true",
            headers=api.auth,
            json={"model": "gpt-image-2-text-to-image", "input": {"prompt": "x", "resolution": "4K", "quality": "low"}},
        )
        bad = await api.client.post("/v1/images/edits?dry_run=true", headers=api.auth, json={"prompt": "x"})
    assert edit.json() | {"available": "1000"} == edit.json()
    assert (edit.json()["price"], edit.json()["unit_price"], edit.json()["tier"]) == ("36", "18", "2K")
    assert edit.json()["size"] == "2048x2048" and edit.json()["n"] == 2 and edit.json()["sufficient"] is True
    assert (generate.json()["price"], generate.json()["kind"]) == ("2", "generate")
    # Each dialect answers in its own envelope (seed 000's `code: 0`, seed 002's `code: 200`).
    assert (envelope.json()["code"], envelope.json()["message"]) == (0, "ok")
    assert (envelope.json()["data"]["price"], envelope.json()["data"]["size"]) == ("6", "1536x864")
    assert (jobs.json()["code"], jobs.json()["msg"]) == (200, "success")
    quote = jobs.json()["data"]
    assert (quote["price"], quote["size"], quote["quality"]) == ("3", "2880x2880", "low")
    assert bad.status_code == 400, "a dry run validates like a real request"
    assert task_count(config) == 0 and balance(config, api.key) == ("1000", "0")


async def test_pricing_lists_the_spec_defaults_and_configured_prices(tmp_path: Path) -> None:
    config = load_config(
        data_dir=tmp_path / "data",
        accounts=UNLIMITED,
        models={"gpt-image-1": {"prices": {"low": "1.25", "medium": "3", "high": "7.5"}}},
    )
    async with open_api(config) as api:
        listed = (await api.client.get("/v1/pricing", headers=api.auth)).json()
        by_model = {entry["model"]: entry for entry in listed["data"]}
        quote = await api.client.post(
            "/v1/images/edits?dry_run=true",
            headers=api.auth,
            json={"model": "gpt-image-1", "prompt": "x", "image": DATA_URL, "quality": "low", "n": 4},
        )
    assert listed["currency"] == "credits"
    assert by_model["gpt-image-2"]["prices"]["low"] == {"1K": "2", "2K": "3", "4K": "3"}
    assert by_model["gpt-image-2"]["prices"]["high"] == {"1K": "12", "2K": "18", "4K": "18"}
    assert by_model["dall-e-2"]["prices"] == {"standard": {"1K": "2"}}
    assert by_model["nano-banana-pro"] | {"per": "call", "price": "0.35"} == by_model["nano-banana-pro"]
    assert by_model["gpt-image-1"]["prices"]["low"] == {"1K": "1.25"}
    assert quote.json()["price"] == "5"


async def test_usage_shows_only_the_callers_tasks(api: Api) -> None:
    other = await create_key(api.config)
    r = await api.client.post("/v1/images/edits", headers=api.auth, json={"prompt": "invert", "image": DATA_URL})
    task_id = r.json()["task_id"]
    mine = (await api.client.get("/v1/usage", headers=api.auth)).json()
    theirs = (await api.client.get("/v1/usage", headers=bearer(other))).json()
    assert [t["id"] for t in mine["tasks"]] == [task_id] and mine["tasks"][0]["cost"] == "6"
    assert mine["balance"] == "994" and mine["available"] == "994" and mine["holds"] == []
    assert theirs["tasks"] == [] and theirs["balance"] == "1000"
    poll = await api.client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=bearer(other))
    assert poll.status_code == 404 and poll.json()["code"] == 404
    bad_limit = await api.client.get("/v1/usage?limit=0", headers=api.auth)
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"


async def test_a_key_reads_its_own_ledger_and_only_its_own(api: Api) -> None:
    other = await create_key(api.config, credits=50)
    r = await api.client.post(
        "/v1/images/edits", headers=api.auth, data={"prompt": "sepia"}, files=[("image", ("a.png", PNG, "image/png"))]
    )
    assert r.status_code == 200, r.text
    mine = (await api.client.get("/v1/ledger", headers=api.auth)).json()["data"]
    theirs = (await api.client.get("/v1/ledger", headers=bearer(other))).json()["data"]
    assert [row["kind"] for row in theirs] == ["grant"] and theirs[0]["amount"] == "50"
    assert {row["task_id"] for row in mine if row["task_id"]} == {r.json()["task_id"]}
    assert not {row["id"] for row in mine} & {row["id"] for row in theirs}
    older = (await api.client.get(f"/v1/ledger?before={mine[0]['id']}", headers=api.auth)).json()["data"]
    assert [row["id"] for row in older] == [row["id"] for row in mine[1:]]
    huge = await api.client.get(f"/v1/ledger?before={10**30}", headers=api.auth)
    assert huge.status_code == 200 and huge.json()["data"] == mine, "past any row id: every row, not a 500"
    assert (await api.client.get(f"/v1/ledger?before=-{10**30}", headers=api.auth)).json()["data"] == []


async def test_a_task_shows_its_request_files_times_and_callback_deliveries_to_its_key_only(
    api: Api, file_server: FileServer
) -> None:
    url = file_server.put("in.png", PNG)
    with webhook_receiver() as hook:
        payload = {"model": "gpt-image-2", "input": {"prompt": "sepia", "image_urls": [url]}, "callBackUrl": hook.url}
        created = await api.client.post("/api/v1/jobs/createTask", headers=api.auth, json=payload)
        task_id = created.json()["data"]["taskId"]
        await wait_for_task_async(api.client, record_info(task_id), headers=api.auth)
        await asyncio.to_thread(hook.wait_for, 1)

        async def delivered() -> dict[str, Any]:
            shown: dict[str, Any] = (await api.client.get(f"/v1/tasks/{task_id}", headers=api.auth)).json()
            return shown

        task = await wait_for_task_async(
            delivered, done=lambda t: t["deliveries"][0]["state"] == "delivered", what="delivery"
        )
    assert task["state"] == "success" and task["request"]["prompt"] == "sepia"
    assert task["files"][0].startswith("/files/") and task["started_at"] and task["finished_at"]
    (delivery,) = task["deliveries"]
    assert delivery["url"] == hook.url and delivery["attempts"] == 1 and delivery["last_status"] == 200
    assert "body" not in delivery
    other = await create_key(api.config)
    hidden = await api.client.get(f"/v1/tasks/{task_id}", headers=bearer(other))
    assert hidden.status_code == 404
    picture = await api.client.get(task["files"][0])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
