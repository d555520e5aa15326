"""Every error path of every dialect answers in that dialect's own shape (DESIGN principle 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Api, make_image

PNG = make_image(64, 64)
BAD_KEY = {"Authorization": "Bearer ig-wrong"}


def openai_shape(body: Any, status: int) -> None:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["code"]


SEED003_CODES = {401: "invalid_token", 429: "too_many_requests", 500: "api_error"}


def seed003_shape(body: Any, status: int) -> None:
    assert set(body) == {"success", "error", "trace_id"} and body["success"] is False and body["trace_id"]
    openai_shape(body, status)
    assert body["error"]["code"] == SEED003_CODES.get(status, body["error"]["code"])


def envelope_shape(body: Any, status: int) -> None:
    assert body == {"code": status, "message": body["message"], "data": None} and body["message"]


def jobs_shape(body: Any, status: int) -> None:
    assert body == {"code": status, "msg": body["msg"], "data": None} and body["msg"]


Shape = Callable[[Any, int], None]
ERRORS: list[tuple[str, str, str, dict[str, Any], int, Shape]] = [
    # (name, method, path, request kwargs (auth added unless given), status, shape)
    ("openai bad key", "POST", "/v1/images/edits", {"headers": BAD_KEY, "json": {"prompt": "x"}}, 401, openai_shape),
    (
        "openai bad json",
        "POST",
        "/v1/images/edits",
        {"content": b"{", "headers": {"content-type": "application/json"}},
        400,
        openai_shape,
    ),
    ("openai missing image", "POST", "/v1/images/edits", {"json": {"prompt": "x"}}, 400, openai_shape),
    (
        "openai bad size",
        "POST",
        "/v1/images/edits",
        {"json": {"prompt": "x", "image": "x", "size": "7x7"}},
        400,
        openai_shape,
    ),
    (
        "openai unknown model",
        "POST",
        "/v1/images/edits",
        {"json": {"prompt": "x", "image": "x", "model": "m"}},
        404,
        openai_shape,
    ),
    (
        "openai generation with an image",
        "POST",
        "/v1/images/generations",
        {"json": {"prompt": "x", "image": "x"}},
        400,
        openai_shape,
    ),
    ("openai unknown task", "GET", "/v1/images/tasks/task_nope", {}, 404, openai_shape),
    ("openai wrong method", "GET", "/v1/images/edits", {}, 405, openai_shape),
    ("unknown route", "GET", "/v2/nothing", {}, 404, openai_shape),
    ("missing file", "GET", "/files/AAAAAAAAAAAAAAAAAAAA.png", {}, 404, openai_shape),
    ("seed 003 bad key", "POST", "/v1/openai/images/edits", {"headers": BAD_KEY, "json": {}}, 401, seed003_shape),
    (
        "seed 003 bad json",
        "POST",
        "/v1/v1/images/edits",
        {"content": b"{", "headers": {"content-type": "application/json"}},
        400,
        seed003_shape,
    ),
    ("seed 003 missing image", "POST", "/v1/openai/images/edits", {"json": {"prompt": "x"}}, 400, seed003_shape),
    (
        "seed 003 unknown model",
        "POST",
        "/v1/v1/images/edits",
        {"json": {"prompt": "x", "image": "x", "model": "m"}},
        404,
        seed003_shape,
    ),
    ("seed 003 unknown task", "GET", "/v1/openai/images/tasks/task_nope", {}, 404, seed003_shape),
    ("seed 003 wrong method", "GET", "/v1/v1/images/edits", {}, 405, seed003_shape),
    ("seed 003 unknown route", "GET", "/v1/openai/nothing", {}, 404, seed003_shape),
    ("envelope bad key", "POST", "/v1/images/edit", {"headers": BAD_KEY, "json": {}}, 401, envelope_shape),
    (
        "envelope bad json",
        "POST",
        "/v1/images/edit",
        {"content": b"[", "headers": {"content-type": "application/json"}},
        400,
        envelope_shape,
    ),
    ("envelope missing image", "POST", "/v1/images/edit", {"json": {"prompt": "x"}}, 400, envelope_shape),
    (
        "envelope bad ratio",
        "POST",
        "/v1/images/edit",
        {"json": {"prompt": "x", "image": "x", "size": "9:7"}},
        400,
        envelope_shape,
    ),
    (
        "envelope unknown model",
        "POST",
        "/v1/images/edit",
        {"json": {"prompt": "x", "image": "x", "model": "m"}},
        404,
        envelope_shape,
    ),
    ("envelope wrong method", "GET", "/v1/images/edit", {}, 405, envelope_shape),
    ("jobs bad key", "POST", "/api/v1/jobs/createTask", {"headers": BAD_KEY, "json": {}}, 401, jobs_shape),
    (
        "jobs bad json",
        "POST",
        "/api/v1/jobs/createTask",
        {"content": b"{", "headers": {"content-type": "application/json"}},
        400,
        jobs_shape,
    ),
    (
        "jobs missing input",
        "POST",
        "/api/v1/jobs/createTask",
        {"json": {"model": "gpt-image-2-image-to-image"}},
        400,
        jobs_shape,
    ),
    (
        "jobs invalid value",
        "POST",
        "/api/v1/jobs/createTask",
        {"json": {"model": "gpt-image-2", "input": {"prompt": "x", "resolution": "9K"}}},
        422,
        jobs_shape,
    ),
    (
        "jobs unknown model",
        "POST",
        "/api/v1/jobs/createTask",
        {"json": {"model": "m", "input": {"prompt": "x"}}},
        404,
        jobs_shape,
    ),
    ("jobs unknown task", "GET", "/api/v1/jobs/recordInfo?taskId=task_nope", {}, 404, jobs_shape),
    ("jobs missing task id", "GET", "/api/v1/jobs/recordInfo", {}, 400, jobs_shape),
    ("jobs unknown route", "GET", "/api/v1/jobs/nothing", {}, 404, jobs_shape),
    ("jobs bad key on poll", "GET", "/api/v1/jobs/recordInfo?taskId=x", {"headers": BAD_KEY}, 401, jobs_shape),
]


POSTS = [
    ("/v1/images/edits", openai_shape),
    ("/v1/openai/images/edits", seed003_shape),
    ("/v1/v1/images/generations", seed003_shape),
    ("/v1/images/edit", envelope_shape),
    ("/api/v1/jobs/createTask", jobs_shape),
]
"""One POST route of each dialect, with its error shape."""


@pytest.mark.parametrize(("name", "method", "path", "kwargs", "status", "shape"), ERRORS, ids=[e[0] for e in ERRORS])
async def test_error_shape(
    api: Api, name: str, method: str, path: str, kwargs: dict[str, Any], status: int, shape: Shape
) -> None:
    headers = {**api.auth, **kwargs.pop("headers", {})}
    r = await api.client.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "x-request-id" in r.headers and "Traceback" not in r.text
    shape(r.json(), status)


@pytest.mark.parametrize(("path", "shape"), POSTS)
async def test_oversized_bodies_are_413_in_each_shape(api: Api, path: str, shape: Shape) -> None:
    api.config.limits.max_body_bytes = 1000
    r = await api.client.post(path, headers=api.auth, content=b"x" * 5000)
    assert r.status_code in (413, 400), r.text
    shape(r.json(), r.status_code)


@pytest.mark.parametrize(("path", "shape"), POSTS)
async def test_unexpected_failures_are_500_without_details(
    api: Api, path: str, shape: Shape, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    app = api.client._transport.app  # type: ignore[attr-defined]
    monkeypatch.setattr(app.state.runtime, "authenticate", explode)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.post(path, headers=api.auth, json={})
    assert r.status_code == 500 and "secret internals" not in r.text
    shape(r.json(), 500)
