"""Seed 003's service on its own prefixes (SPEC §2.1a), in-process: its success and error bodies, its
default delivery, its `n`, and nano-banana's answers — while `/v1/images/...` stays OpenAI's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pybase64
import pytest

from imagegate.core.job import Job, Made
from imagegate.engines.mock import MockEngine
from tests.conftest import Api, create_key, decode, make_image, open_api
from tests.shapes import assert_like
from tests.test_accounts import DATA_URL, balance, settings

PNG = make_image(640, 480)
PREFIXES = ("/v1/openai", "/v1/v1")
RESPONSES = Path(__file__).with_name("seeds") / "responses"


def seed_example(name: str) -> Any:
    return json.loads((RESPONSES / name).read_text(encoding="utf-8"))


async def json_edit(api: Api, prefix: str, key: str | None = None, **fields: Any) -> httpx.Response:
    body = {"model": "gpt-image-2", "image": DATA_URL, "prompt": "dark mode", **fields}
    headers = {"Authorization": f"Bearer {key or api.key}"}
    return await api.client.post(f"{prefix}/images/edits", headers=headers, json=body)


async def form_edit(api: Api, prefix: str, **fields: str) -> httpx.Response:
    files = [("image[]", ("test.png", PNG, "image/png"))]
    return await api.client.post(f"{prefix}/images/edits", headers=api.auth, data=fields, files=files)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_a_json_request_gets_seed003s_success_body_with_a_url(api: Api, prefix: str) -> None:
    r = await json_edit(api, prefix, size="1024x1536")
    assert r.status_code == 200, r.text
    body = r.json()
    assert_like(body, seed_example("seed003_edit_url_success.json"))
    assert list(body)[:6] == ["success", "task_id", "trace_id", "created", "data", "elapsed"]
    assert body["success"] is True and isinstance(body["elapsed"], float) and body["elapsed"] >= 0
    assert body["trace_id"] == r.headers["x-request-id"] and body["task_id"] == r.headers["x-imagegate-task"]
    assert "b64_json" not in body["data"][0]
    assert (body["size"], body["output_format"]) == ("1024x1536", "png") and body["usage"]["total_tokens"] > 0
    image = await api.client.get(body["data"][0]["url"])
    assert image.status_code == 200 and decode(image.content).size == (1024, 1536)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_a_multipart_request_gets_b64_json_and_an_explicit_response_format_wins(api: Api, prefix: str) -> None:
    default = await form_edit(api, prefix, model="gpt-image-1", prompt="sepia")
    assert default.status_code == 200, default.text
    assert default.json()["success"] is True and "url" not in default.json()["data"][0]
    assert decode(pybase64.b64decode(default.json()["data"][0]["b64_json"])).format == "PNG"
    as_url = await form_edit(api, prefix, model="gpt-image-1", prompt="sepia", response_format="url")
    assert "url" in as_url.json()["data"][0] and "b64_json" not in as_url.json()["data"][0]
    as_b64 = await json_edit(api, prefix, response_format="b64_json")
    assert "b64_json" in as_b64.json()["data"][0] and "url" not in as_b64.json()["data"][0]


async def test_v1_images_stays_openais(api: Api) -> None:
    r = await json_edit(api, "/v1", n=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "success" not in body and "elapsed" not in body and "trace_id" not in body
    assert len(body["data"]) == 2 and all("b64_json" in item for item in body["data"])
    refused = await api.client.post("/v1/images/edits", headers={"Authorization": "Bearer ig-nope"}, json={})
    assert refused.json() == {"error": refused.json()["error"]} and refused.json()["error"]["code"] == "invalid_api_key"


async def broken(job: Job) -> Made:
    """An engine that fails with an unexpected exception (a bug, as far as the client can tell)."""
    raise RuntimeError("boom: a secret detail")


def assert_seed003_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert_like(body, seed_example("seed003_error.json"))
    assert body["success"] is False and body["trace_id"] == r.headers["x-request-id"]
    assert set(body["error"]) == {"code", "message", "type", "param"} and body["error"]["code"] == code
    return body


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_errors_are_seed003s_with_its_codes(tmp_path: Path, prefix: str) -> None:
    config = settings(tmp_path)
    async with open_api(config) as api:
        bad_key = await api.client.post(
            f"{prefix}/images/edits", headers={"Authorization": "Bearer ig-nope"}, json={"prompt": "x"}
        )
        assert_seed003_error(bad_key, 401, "invalid_token")
        bad_size = await json_edit(api, prefix, size="1000x1000")
        assert assert_seed003_error(bad_size, 400, "invalid_value")["error"]["param"] == "size"
        unknown = await json_edit(api, prefix, model="no-such-model")
        assert_seed003_error(unknown, 404, "model_not_found")
        slow = await create_key(config, rpm=1)
        assert (await json_edit(api, prefix, key=slow)).status_code == 200
        limited = await json_edit(api, prefix, key=slow)
        assert_seed003_error(limited, 429, "too_many_requests")
        assert int(limited.headers["retry-after"]) <= 60
        missing = await api.client.get(f"{prefix}/images/tasks/task_nope", headers=api.auth)
        assert_seed003_error(missing, 404, "not_found")
    async with open_api(
        settings(tmp_path / "broken"), {"broken": MockEngine(broken, name="broken", images_per_call=1)}
    ) as api:
        app = api.client._transport.app  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            crashed = await client.post(
                f"{prefix}/images/edits", headers=api.auth, json={"image": DATA_URL, "prompt": "x"}
            )
        body = assert_seed003_error(crashed, 500, "api_error")
        assert "secret" not in crashed.text and "boom" not in crashed.text and body["error"]["message"]


async def test_the_official_sdk_reads_seed003s_bodies(api: Api) -> None:
    # The SDK brings its own HTTP client library (httpx2), which runs the app in-process the same way.
    transport = httpx2.ASGITransport(app=api.client._transport.app)  # type: ignore[attr-defined]
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
        client = openai.AsyncOpenAI(
            base_url="http://testserver/v1/openai", api_key=api.key, http_client=http, max_retries=0
        )
        result = await client.images.edit(model="gpt-image-2", image=("a.png", PNG, "image/png"), prompt="sepia")
        assert result.data and result.data[0].b64_json and result.usage and result.usage.total_tokens > 0
        with pytest.raises(openai.BadRequestError) as bad:
            await client.images.edit(model="gpt-image-2", image=("a.png", PNG, "image/png"), prompt="x", size="7x7")
        assert (
            bad.value.code == "invalid_value" and isinstance(bad.value.body, dict) and bad.value.body["param"] == "size"
        )
        nobody = openai.AsyncOpenAI(
            base_url="http://testserver/v1/v1", api_key="ig-no", http_client=http, max_retries=0
        )
        with pytest.raises(openai.AuthenticationError) as refused:
            await nobody.images.edit(model="gpt-image-2", image=("a.png", PNG, "image/png"), prompt="x")
        assert refused.value.code == "invalid_token"


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_n_above_one_is_one_image_billed_as_one_except_for_dall_e_2(tmp_path: Path, prefix: str) -> None:
    config = settings(tmp_path)
    async with open_api(config) as api:
        for model in ("gpt-image-2", "gpt-image-1", "nano-banana"):
            quote = await api.client.post(
                f"{prefix}/images/edits?dry_run=true",
                headers=api.auth,
                json={"model": model, "image": DATA_URL, "prompt": "x", "n": 3},
            )
            assert quote.json()["n"] == 1, (model, quote.json())
        three = await json_edit(api, prefix, n=3)
        assert three.status_code == 200, three.text
        assert len(three.json()["data"]) == 1
        assert balance(config, api.key) == ("994", "0"), "one image, 6 credits, where the seed promises 6"
        dalle = await json_edit(api, prefix, model="dall-e-2", n=2, size="512x512", response_format="url")
        assert dalle.status_code == 200, dalle.text
        urls = [item["url"] for item in dalle.json()["data"]]
        assert len(urls) == 2 and len(set(urls)) == 2, "dall-e-2 honours n, each image its own file"
        assert balance(config, api.key) == ("990", "0")


@pytest.mark.parametrize("prefix", [*PREFIXES, "/v1"])
async def test_nano_banana_answers_like_seed003s_adapter(api: Api, prefix: str) -> None:
    prompt = "add a green leaf on top of the apple"
    r = await api.client.post(
        f"{prefix}/images/edits",
        headers=api.auth,
        files=[("image", ("apple.png", PNG, "image/png"))],
        data={"model": "nano-banana", "prompt": prompt, "response_format": "b64_json", "output_format": "png"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert_like(body, seed_example("seed003_nano_success.json"))
    assert body["created"] == 0
    ((item),) = body["data"]
    assert item["revised_prompt"] == prompt and "b64_json" not in item and item["url"].endswith(".jpeg")
    image = await api.client.get(item["url"])
    assert image.headers["content-type"] == "image/jpeg" and decode(image.content).format == "JPEG"
    applied = r.headers["x-imagegate-applied"]
    assert applied.startswith("classic engine") and "not performed" in applied, applied
