"""Each seed's literal response examples (tests/seeds/responses, copied verbatim) parse as the
outbound dialect clients read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegate.dialects.envelope.upstream import parse_envelope
from imagegate.dialects.jobs.upstream import parse_record
from imagegate.dialects.openai.upstream import parse_images
from imagegate.errors import BadRequest, EngineError
from imagegate.wire.outbound import error_parts, rejection

RESPONSES = Path(__file__).parent / "seeds" / "responses"


def literal(name: str) -> Any:
    return json.loads((RESPONSES / name).read_text(encoding="utf-8"))


def test_seed000_envelope_success() -> None:
    answer = parse_envelope(literal("seed000_edit_success.json"))
    assert [image.url for image in answer.images] == ["https://cdn.gptimageapi.dev/edits/1234567890.png"]


def test_seed000_envelope_error_is_an_engine_error_with_its_message() -> None:
    with pytest.raises(EngineError, match="insufficient"):
        parse_envelope({"code": 402, "message": "insufficient credits", "data": None})


def test_seed002_create_and_waiting_record() -> None:
    assert literal("seed002_create_success.json")["data"]["taskId"] == "task_xxxxxxxxxxxxx"
    assert parse_record(literal("seed002_record_waiting.json")) == (None, None)


def test_seed002_success_and_failure_records() -> None:
    waiting = literal("seed002_record_waiting.json")
    done = {
        **waiting,
        "data": {**waiting["data"], "state": "success", "resultJson": '{"resultUrls":["https://x/1.png"]}'},
    }
    answer, failure = parse_record(done)
    assert answer is not None and [i.url for i in answer.images] == ["https://x/1.png"] and failure is None
    failed = {**waiting, "data": {**waiting["data"], "state": "fail", "failCode": "422", "failMsg": "bad image"}}
    assert parse_record(failed) == (None, "422: bad image")


@pytest.mark.parametrize(
    ("name", "url"),
    [
        (
            "seed003_edit_url_success.json",
            "https://platform.cdn.xhuoapi.ai/gpt-image/cb104e35-af1f-45be-9fac-b62e2b256753_0.png",
        ),
        (
            "seed003_nano_success.json",
            "https://platform.cdn.xhuoapi.ai/nanobanana/311e95b6-5eb1-4c4a-8ee6-0cb03ee44f61.jpeg",
        ),
        ("seed004_generation_success.json", "https://example.com/generated.png"),
    ],
)
def test_openai_style_successes(name: str, url: str) -> None:
    answer = parse_images(literal(name))
    assert [image.url for image in answer.images] == [url]


def test_seed003_callback_bodies() -> None:
    assert literal("seed003_callback_ack.json") == {"task_id": "6a97bf49-df50-4129-9e46-119aa9fca73c"}
    callback = literal("seed003_callback_success.json")
    assert callback["success"] is True and callback["data"]["data"][0]["b64_json"].startswith("iVBORw0KGgo")
    with pytest.raises(EngineError, match="base64"):  # the seed abbreviates its base64 with "..."
        parse_images(callback["data"])


def test_seed003_error_body_becomes_the_right_error() -> None:
    body = literal("seed003_error.json")
    assert error_parts(body) == ("fetch failed", "api_error", None)
    server_fault = rejection(httpx.Response(500, json=body), "p")
    assert isinstance(server_fault, EngineError) and server_fault.retryable and "fetch failed" in server_fault.message
    refused = rejection(httpx.Response(400, json=body), "p")
    assert isinstance(refused, BadRequest) and (refused.message, refused.code) == ("fetch failed", "api_error")
