"""The envelope and task-jobs dialects, OpenAI callbacks and polling, signed webhooks, n fan-out.

In-process app; callbacks go to a real HTTP receiver on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image
from sqlalchemy import select

from imagegate.config import load_config
from imagegate.stores.db import ApiKey, Database, Task, WebhookDelivery
from imagegate.stores.keys import hash_key
from imagegate.webhooks import WebhookVerificationError, verify
from tests.conftest import LOOPBACK_ALLOW, Api, FileServer, create_key, decode, make_image, open_api
from tests.engines import OnePerCall
from tests.receivers import webhook_receiver
from tests.waiting import record_info, wait_for_task_async

PNG = make_image(800, 600)
FAST: dict[str, Any] = {
    "runner": {"poll_interval_s": 0.05},
    "webhooks": {"poll_interval_s": 0.05, "timeout_s": 5, "retry_delays": "0.1,0.1,0.1"},
}


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[Api]:
    config = load_config(data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW, **FAST)
    async with open_api(config) as api:
        yield api


async def secret_of(api: Api) -> str:
    db = Database(api.config.resolved_database_url)
    try:
        async with db.session() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(api.key)))
            assert row is not None and row.webhook_secret
            return row.webhook_secret
    finally:
        await db.aclose()


async def final_deliveries(api: Api, count: int) -> list[tuple[str, int]]:
    """(state, attempts) of each webhook delivery, sorted, once `count` of them are final: a sender
    only claims pending rows (each claim counts an attempt), so a final row is never sent again."""
    db = Database(api.config.resolved_database_url)

    async def rows() -> list[tuple[str, int]]:
        async with db.session() as session:
            return sorted((d.state, d.attempts) for d in await session.scalars(select(WebhookDelivery)))

    try:
        return await wait_for_task_async(
            rows, done=lambda seen: sum(state != "pending" for state, _ in seen) >= count, what="final deliveries"
        )
    finally:
        await db.aclose()


async def edit_with_callback(api: Api, url: str) -> None:
    """An `invert` edit delivered by URL, reported to `url`."""
    r = await api.client.post(
        "/v1/images/edits",
        headers=api.auth,
        data={"prompt": "invert", "callback_url": url, "response_format": "url"},
        files=[("image", ("a.png", PNG, "image/png"))],
    )
    assert r.status_code == 200 and set(r.json()) == {"task_id"}


# --- seed 000: envelope ---------------------------------------------------------------------------


async def test_envelope_edit_with_a_ratio_size(api: Api, file_server: FileServer) -> None:
    url = file_server.put("in.png", PNG)
    payload = {
        "prompt": "把这张图改成黑白",
        "image": url,
        "model": "gpt-image-2",
        "size": "4:3",
        "quality": "high",
        "n": 1,
    }
    r = await api.client.post("/v1/images/edit", headers=api.auth, json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 0 and body["message"] == "ok"
    got = await api.client.get(body["data"]["images"][0]["url"])
    assert decode(got.content).size == (1024, 768)
    assert r.headers["x-imagegate-engine"] == "classic"


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"prompt": "x", "image": "data:image/png;base64,AAAA", "size": "5:7"}, 400),
        ({"prompt": "x", "size": "1:1"}, 400),
        ({"prompt": "x", "image": "http://10.1.2.3/a.png"}, 400),
        ({"prompt": "x", "image": "x", "model": "nope"}, 404),
    ],
)
async def test_envelope_failures_carry_the_status_in_code(api: Api, payload: dict[str, Any], status: int) -> None:
    r = await api.client.post("/v1/images/edit", headers=api.auth, json=payload)
    assert r.status_code == status
    body = r.json()
    assert body["code"] == status and body["data"] is None and body["message"]


# --- seed 002: task jobs --------------------------------------------------------------------------


async def test_jobs_flow_to_success_with_aliases_ratio_and_resolution(api: Api, file_server: FileServer) -> None:
    a, b = file_server.put("a.png", PNG), file_server.put("b.png", make_image(400, 400))
    payload = {
        "model": "gpt-image-2-image-to-image",
        "input": {
            "prompt": "grayscale",
            "image_urls": [a],
            "input_urls": [b, a],
            "image_input": [b],
            "aspect_ratio": "16:9",
            "resolution": "2K",
            "output_format": "jpeg",
        },
    }
    r = await api.client.post("/api/v1/jobs/createTask", headers=api.auth, json=payload)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["code"] == 200 and created["msg"] == "success"
    task_id = created["data"]["taskId"]
    assert task_id.startswith("task_")
    info = (await wait_for_task_async(api.client, record_info(task_id), headers=api.auth)).json()
    data = info["data"]
    assert data["state"] == "success", data
    assert orjson.loads(data["param"]) == payload
    urls = orjson.loads(data["resultJson"])["resultUrls"]
    image = decode((await api.client.get(urls[0])).content)
    assert image.size == (2048, 1152) and image.format == "JPEG"
    assert data["createTime"] <= data["completeTime"] and data["costTime"] == data["completeTime"] - data["createTime"]
    assert data["failCode"] is None and data["model"] == "gpt-image-2-image-to-image"
    db = Database(api.config.resolved_database_url)
    try:
        async with db.session() as session:
            task = await session.get(Task, task_id)
    finally:
        await db.aclose()
    assert task is not None and len(task.request["images"]) == 2, "aliases are appended without duplicates"


async def test_jobs_auto_ratio_keeps_the_first_images_shape_at_the_tier(api: Api, file_server: FileServer) -> None:
    url = file_server.put("tall.png", make_image(600, 900))
    payload = {
        "model": "gpt-image-2-image-to-image",
        "input": {"prompt": "sepia", "image_urls": [url], "resolution": "2K"},
    }
    task_id = (await api.client.post("/api/v1/jobs/createTask", headers=api.auth, json=payload)).json()["data"][
        "taskId"
    ]
    info = (await wait_for_task_async(api.client, record_info(task_id), headers=api.auth)).json()
    url_out = orjson.loads(info["data"]["resultJson"])["resultUrls"][0]
    w, h = decode((await api.client.get(url_out)).content).size
    assert 3_000_000 < w * h <= 4_194_304 and abs(w / h - 2 / 3) < 0.02


async def test_jobs_failure_is_reported_with_fail_code(api: Api, file_server: FileServer) -> None:
    url = file_server.put("not-an-image.png", b"hello, not a picture")
    payload = {"model": "gpt-image-2-image-to-image", "input": {"prompt": "sepia", "image_urls": [url]}}
    task_id = (await api.client.post("/api/v1/jobs/createTask", headers=api.auth, json=payload)).json()["data"][
        "taskId"
    ]
    info = (await wait_for_task_async(api.client, record_info(task_id), headers=api.auth)).json()
    data = info["data"]
    assert data["state"] == "fail" and data["failCode"] == "unsupported_file_mimetype" and data["failMsg"]
    assert data["resultJson"] is None


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"model": "gpt-image-2-image-to-image"}, 400),
        ({"model": "gpt-image-2-image-to-image", "input": {"image_urls": ["http://x/a.png"]}}, 400),
        ({"model": "gpt-image-2-image-to-image", "input": {"prompt": "x"}}, 400),
        ({"model": "gpt-image-2-image-to-image", "input": {"prompt": "x" * 20_001, "image_urls": ["http://x/a"]}}, 422),
        (
            {
                "model": "gpt-image-2-image-to-image",
                "input": {"prompt": "x", "image_urls": ["http://x/a"], "aspect_ratio": "7:5"},
            },
            422,
        ),
        (
            {
                "model": "gpt-image-2-image-to-image",
                "input": {"prompt": "x", "image_urls": ["http://x/a"], "resolution": "8K"},
            },
            422,
        ),
        (
            {"model": "gpt-image-2-image-to-image", "input": {"prompt": "x", "image_urls": ["http://10.0.0.8/a.png"]}},
            422,
        ),
        ({"model": "no-such-model", "input": {"prompt": "x"}}, 404),
    ],
)
async def test_jobs_errors_use_the_status_as_code(api: Api, payload: dict[str, Any], status: int) -> None:
    r = await api.client.post("/api/v1/jobs/createTask", headers=api.auth, json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status and body["data"] is None and body["msg"]


async def test_record_info_of_unknown_or_foreign_tasks_is_404(api: Api, file_server: FileServer) -> None:
    other = await create_key(api.config)
    url = file_server.put("a.png", PNG)
    payload = {"model": "gpt-image-2-image-to-image", "input": {"prompt": "x", "image_urls": [url]}}
    task_id = (await api.client.post("/api/v1/jobs/createTask", headers=api.auth, json=payload)).json()["data"][
        "taskId"
    ]
    foreign = await api.client.get(
        f"/api/v1/jobs/recordInfo?taskId={task_id}", headers={"Authorization": f"Bearer {other}"}
    )
    assert foreign.status_code == 404 and foreign.json()["code"] == 404
    missing = await api.client.get("/api/v1/jobs/recordInfo", headers=api.auth)
    assert missing.status_code == 400 and missing.json()["code"] == 400


# --- seed 003: callbacks on the OpenAI dialect ----------------------------------------------------


async def test_callback_url_answers_task_id_then_posts_a_signed_result(fast: Api) -> None:
    secret = await secret_of(fast)
    with webhook_receiver() as receiver:
        r = await fast.client.post(
            "/v1/images/edits",
            headers=fast.auth,
            data={"model": "gpt-image-1", "prompt": "Create a lovely gift basket", "callback_url": receiver.url},
            files=[("image[]", ("test.png", PNG, "image/png"))],
        )
        assert r.status_code == 200 and set(r.json()) == {"task_id"}
        task_id = r.json()["task_id"]
        (delivery,) = await asyncio.to_thread(receiver.wait_for, 1)
    body = verify(secret, delivery.headers, delivery.body)
    assert body["success"] is True and body["task_id"] == task_id and body["trace_id"].startswith("req_")
    image = Image.open(io.BytesIO(base64.b64decode(body["data"]["data"][0]["b64_json"])))
    assert image.size == (1536, 1024)
    polled = (await fast.client.get(f"/v1/images/tasks/{task_id}", headers=fast.auth)).json()
    assert polled["status"] == "success" and polled["data"]["data"] == body["data"]["data"]
    with pytest.raises(WebhookVerificationError):
        verify(secret, delivery.headers, delivery.body + b" ")
    with pytest.raises(WebhookVerificationError):
        verify("whsec_" + "A" * 44, delivery.headers, delivery.body)


async def test_failed_async_task_posts_success_false(fast: Api, file_server: FileServer) -> None:
    url = file_server.put("bad.png", b"not an image")
    with webhook_receiver() as receiver:
        r = await fast.client.post(
            "/v1/images/edits", headers=fast.auth, json={"prompt": "x", "image": url, "callback_url": receiver.url}
        )
        (delivery,) = await asyncio.to_thread(receiver.wait_for, 1)
    body = delivery.json
    assert body == {
        "success": False,
        "task_id": r.json()["task_id"],
        "trace_id": body["trace_id"],
        "error": {"code": "unsupported_file_mimetype", "message": body["error"]["message"]},
    }


async def test_webhook_retries_keep_one_id_and_410_stops(fast: Api) -> None:
    secret = await secret_of(fast)
    with webhook_receiver(statuses=[500, 503]) as receiver:
        await edit_with_callback(fast, receiver.url)
        deliveries = await asyncio.to_thread(receiver.wait_for, 3)
        assert await final_deliveries(fast, 1) == [("delivered", 3)], "no attempt after the success"
        assert len(receiver.deliveries) == 3
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert len({d.body for d in deliveries}) == 1
    assert all(verify(secret, d.headers, d.body)["success"] is True for d in deliveries)
    with webhook_receiver(statuses=[410]) as gone:
        await edit_with_callback(fast, gone.url)
        await asyncio.to_thread(gone.wait_for, 1)
        assert await final_deliveries(fast, 2) == [("delivered", 3), ("stopped", 1)], "no attempt after the 410"
        assert len(gone.deliveries) == 1
    db = Database(fast.config.resolved_database_url)
    try:
        async with db.session() as session:
            states = sorted(d.state for d in await session.scalars(select(WebhookDelivery)))
    finally:
        await db.aclose()
    assert states == ["delivered", "stopped"]


async def test_refused_callback_url_is_a_400_and_records_nothing(api: Api) -> None:
    r = await api.client.post(
        "/v1/images/edits",
        headers=api.auth,
        data={"prompt": "x", "callback_url": "http://169.254.169.254/latest"},
        files=[("image", ("a.png", PNG, "image/png"))],
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "callback_url"


async def test_tasks_of_other_keys_are_404(api: Api) -> None:
    other = await create_key(api.config)
    r = await api.client.post(
        "/v1/images/edits", headers=api.auth, data={"prompt": "x"}, files=[("image", ("a.png", PNG, "image/png"))]
    )
    task_id = r.json()["task_id"]
    mine = await api.client.get(f"/v1/images/tasks/{task_id}", headers=api.auth)
    assert mine.status_code == 200 and mine.json()["status"] == "success"
    theirs = await api.client.get(f"/v1/images/tasks/{task_id}", headers={"Authorization": f"Bearer {other}"})
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    info = await api.client.get(f"/api/v1/jobs/recordInfo?taskId={task_id}", headers=api.auth)
    assert info.json()["data"]["state"] == "success", "every dialect sees the same task"


# --- SPEC §3: n fan-out ---------------------------------------------------------------------------


async def test_n_fans_out_concurrently_and_delivers_a_partial_success(tmp_path: Path) -> None:
    engine = OnePerCall(fail_calls={1})
    config = load_config(data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW)
    async with open_api(config, {"one-per-call": engine}) as api:
        r = await api.client.post(
            "/v1/images/generations", headers=api.auth, json={"prompt": "four", "n": 4, "size": "1024x1024"}
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 3 and engine.calls == 4 and engine.most_in_flight == 4
        assert r.headers["x-imagegate-engine"] == "one-per-call"
        db = Database(config.resolved_database_url)
        try:
            async with db.session() as session:
                task = await session.get(Task, r.json()["task_id"])
        finally:
            await db.aclose()
        assert task is not None and task.state == "success" and task.result is not None
        assert task.result["failures"] == [{"code": "upstream_error", "message": "the upstream refused this one"}]
        assert len(task.result["files"]) == 3


async def test_n_fan_out_failing_everywhere_fails_the_task(tmp_path: Path) -> None:
    engine = OnePerCall(fail_calls={0, 1})
    config = load_config(data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW)
    async with open_api(config, {"one-per-call": engine}) as api:
        r = await api.client.post("/v1/images/generations", headers=api.auth, json={"prompt": "two", "n": 2})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


async def test_a_pending_retry_survives_a_restart(tmp_path: Path) -> None:
    config = load_config(
        data_dir=tmp_path / "data",
        fetch_allow=LOOPBACK_ALLOW,
        **{**FAST, "webhooks": {**FAST["webhooks"], "retry_delays": "1"}},
    )
    with webhook_receiver(statuses=[500]) as receiver:
        async with open_api(config) as api:
            await edit_with_callback(api, receiver.url)
            await asyncio.to_thread(receiver.wait_for, 1)
        assert len(receiver.deliveries) == 1, "the retry is not due before the restart"
        async with open_api(config):
            first, second = await asyncio.to_thread(receiver.wait_for, 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] and first.body == second.body
