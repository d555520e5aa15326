"""Requests an attack with hostile clients sent: each gets a clear 4xx in its dialect's shape and
charges nothing, where it got a 500, ran with a field silently dropped, or was held whole in memory."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from imagegate.config import FORM_OVERHEAD, base64_size, load_config
from imagegate.wire.fields import MAX_JSON_DEPTH
from tests.conftest import Api, audit_ledgers, make_image, open_api

PNG = make_image(64, 64)
BOUNDARY = "b0undary"


def multipart(*parts: tuple[str, str | bytes], closed: bool = True) -> bytes:
    """A multipart body of (name, value) parts; a bytes value is sent as a PNG file part."""
    out = b""
    for name, value in parts:
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="a.png"\r\nContent-Type: image/png'
            out += f"--{BOUNDARY}\r\n{head}\r\n\r\n".encode() + value + b"\r\n"
        else:
            out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return out + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


async def post_form(api: Api, body: bytes, path: str = "/v1/images/edits") -> httpx.Response:
    headers = {**api.auth, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return await api.client.post(path, headers=headers, content=body)


def refused(r: httpx.Response, status: int = 400) -> None:
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    "fields",
    [[("svg", "x"), ("svg[model]", "y")], [("svg[model]", "y"), ("svg", "x")]],
    ids=["value-then-group", "group-then-value"],
)
async def test_one_field_sent_as_a_value_and_as_a_group_is_a_400(api: Api, fields: list[tuple[str, str]]) -> None:
    body = multipart(("prompt", "x"), ("image", PNG), *fields)
    for path in ("/v1/images/edits", "/v1/images/edits?dry_run=true"):
        r = await post_form(api, body, path)
        refused(r)
        assert "both as one value and as a group" in r.json()["error"]["message"]
    audit_ledgers(api.config.data_dir / "imagegate.db")


async def test_json_nested_deeper_than_it_can_be_stored_is_a_400_in_each_dialect(api: Api) -> None:
    deep: object = 0
    for _ in range(MAX_JSON_DEPTH + 50):
        deep = [deep]
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    edit = await api.client.post("/v1/images/edits", headers=api.auth, json={"prompt": "x", "image": image, "x": deep})
    refused(edit)
    assert "nested more than" in edit.json()["error"]["message"]
    jobs = await api.client.post("/api/v1/jobs/createTask", headers=api.auth, json={"model": "x", "deep": deep})
    malformed = await api.client.post("/api/v1/jobs/createTask", headers=api.auth, content=b"{")
    assert jobs.status_code == malformed.status_code == jobs.json()["code"] == malformed.json()["code"], jobs.text
    assert "nested more than" in jobs.json()["msg"]
    shallow = await api.client.post(
        "/v1/images/edits", headers=api.auth, json={"prompt": "x", "image": image, "x": [[[0]]] * 300}
    )
    assert shallow.status_code == 200, "many brackets, but not deep"


async def test_a_multipart_body_without_its_closing_boundary_is_a_400(api: Api) -> None:
    r = await post_form(api, multipart(("prompt", "x"), ("image", PNG), ("size", "512x512"), closed=False))
    refused(r)
    assert "closing boundary" in r.json()["error"]["message"]
    audit_ledgers(api.config.data_dir / "imagegate.db")


async def test_text_fields_are_held_no_larger_than_a_json_body(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path / "d", limits={"max_image_bytes": 30_000})
    room = base64_size(30_000) + FORM_OVERHEAD
    async with open_api(config) as api:
        many = await post_form(
            api, multipart(("prompt", "x"), ("image", PNG), *[(f"f{i}", "a" * 40_000) for i in range(30)])
        )
        urlencoded = await api.client.post(
            "/v1/images/edits",
            headers={**api.auth, "content-type": "application/x-www-form-urlencoded"},
            content=b"prompt=x&pad=" + b"a" * room,
        )
        one_file = await post_form(api, multipart(("prompt", "x"), ("image", make_image(16, 16)), ("n", "1")))
    refused(many, 413)
    assert "text fields together" in many.json()["error"]["message"]
    refused(urlencoded, 413)
    assert one_file.status_code == 200, one_file.text


async def test_a_data_url_one_byte_over_the_limit_is_refused_like_an_upload(tmp_path: Path) -> None:
    limit = len(PNG) - 1
    config = load_config(data_dir=tmp_path / "d", limits={"max_image_bytes": limit})
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    async with open_api(config) as api:
        r = await api.client.post("/v1/images/edits", headers=api.auth, json={"prompt": "x", "image": image})
    refused(r)
    assert r.json()["error"]["code"] == "image_too_large"


async def test_json_as_deep_as_it_may_be_is_stored_with_its_task(api: Api) -> None:
    """Unknown fields are stored a level deeper than they came (under `extra`)."""
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    for depth, status in ((MAX_JSON_DEPTH, 200), (MAX_JSON_DEPTH + 1, 400), (254, 400)):
        deep: object = 0
        for _ in range(depth - 1):  # the body is one level, each list another
            deep = [deep]
        r = await api.client.post("/v1/images/edits", headers=api.auth, json={"prompt": "x", "image": image, "x": deep})
        assert r.status_code == status, (depth, r.text)
