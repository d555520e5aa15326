"""The outbound dialect clients on `httpx.MockTransport` (no sockets): what each one sends a provider
(method, path, key, fields) and how it reads the answers (images, usage, errors); and the upstream
engine that maps httpx's own failures and scrubs the channel's key from whatever a provider said."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import os
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegate.config import ChannelSettings, ImagingSettings
from imagegate.core.catalog import Catalog
from imagegate.core.job import Job
from imagegate.core.request import Background, EditRequest, OutputFormat, Quality, Size
from imagegate.core.upstream import CallbackSlot, UpstreamClient
from imagegate.dialects.envelope.upstream import EnvelopeUpstream
from imagegate.dialects.jobs.upstream import JobsUpstream
from imagegate.dialects.openai.upstream import OpenAIUpstream
from imagegate.engines.upstream import UpstreamEngine
from imagegate.errors import BadRequest, EngineError, EngineTimeout
from imagegate.imaging import SourceImage, open_image
from imagegate.net.fetch import FetchPolicy, SafeFetcher
from imagegate.wire.outbound import PIECE, Endpoint

CATALOG = Catalog.from_config({})
KEY = "sk-upstream-0123456789abcdef"
OPENAI_BASE = "https://provider.test/v1"
JOBS_BASE = "https://jobs.test/api/v1"
ENVELOPE_BASE = "https://envelope.test/v1"


def png(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


RED = png()
BLUE = png(color=(20, 40, 220))
MASK = png(color=(0, 0, 0))
B64_RED = base64.b64encode(RED).decode()
B64_BLUE = base64.b64encode(BLUE).decode()
SQUARE = Size(1024, 1024)


def opened(data: bytes, param: str = "image") -> SourceImage:
    return open_image(io.BytesIO(data), max_pixels=10**8, param=param)


def make_job(
    *inputs: bytes,
    model: str = "gpt-image-2",
    size: Size = SQUARE,
    mask: bytes | None = None,
    on_partial: Callable[[int, bytes], Awaitable[None]] | None = None,
    **request: Any,
) -> Job:
    """A job editing `inputs` (a generation without them), its request built from `request`."""
    return Job(
        request=EditRequest(prompt=request.pop("prompt", "make it blue"), model=model, **request),
        spec=CATALOG.get(model),
        size=size,
        images=[opened(data) for data in inputs],
        mask=opened(mask, "mask") if mask is not None else None,
        on_partial=on_partial,
    )


Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


class Wire:
    """A scripted provider: answers each request with the next of `answers` (a response, or a function
    of the request that may raise), and keeps every request it was sent."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.answers, f"unexpected request {request.method} {request.url}"
        answer = self.answers.pop(0)
        return answer(request) if callable(answer) else answer

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def only(self) -> httpx.Request:
        (request,) = self.requests
        return request


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def images_body(*items: Any, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"created": 1, "data": list(items)}
    if usage is not None:
        body["usage"] = usage
    return body


def body_of(request: httpx.Request) -> Any:
    assert request.headers["content-type"] == "application/json"
    return json.loads(request.content)


@dataclass
class Part:
    filename: str | None
    content_type: str
    data: bytes


def multipart(request: httpx.Request) -> tuple[dict[str, str], list[tuple[str, Part]]]:
    """A multipart body's text fields and (name, file) parts, in order."""
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    head = f"content-type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    fields: dict[str, str] = {}
    files: list[tuple[str, Part]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        filename = part.get_filename()
        if filename is None:
            fields[name] = payload.decode()
        else:
            files.append((name, Part(filename, part.get_content_type(), payload)))
    return fields, files


def sse(*events: dict[str, Any]) -> httpx.Response:
    text = "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def openai(wire: Wire, **options: Any) -> OpenAIUpstream:
    return OpenAIUpstream(Endpoint("prov", OPENAI_BASE, KEY, 5, 4, wire.transport), **options)


@dataclass
class FakeInputs:
    """An InputHost that publishes at https://inputs.test/<n> and remembers what it withdrew."""

    published: list[tuple[bytes, OutputFormat]] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)

    async def publish(self, data: bytes, fmt: OutputFormat) -> tuple[str, str]:
        self.published.append((data, fmt))
        n = len(self.published)
        return f"https://inputs.test/{n}.{fmt.value}?sig=x", f"handle-{n}"

    async def withdraw(self, handle: str) -> None:
        self.withdrawn.append(handle)


@dataclass
class FakeSlot:
    url: str
    body: Any
    waited: bool = False

    async def wait(self) -> Any:
        self.waited = True
        return self.body


@dataclass
class FakeInbox:
    """A CallbackInbox whose one slot 'receives' `body` as soon as it is waited on."""

    body: Any = None
    slots: list[FakeSlot] = field(default_factory=list)
    discarded: list[FakeSlot] = field(default_factory=list)

    def expect(self) -> FakeSlot:
        slot = FakeSlot(f"https://gate.test/relay/callbacks/{len(self.slots)}", self.body)
        self.slots.append(slot)
        return slot

    def discard(self, slot: CallbackSlot) -> None:
        assert isinstance(slot, FakeSlot)
        self.discarded.append(slot)


def assert_sent(request: httpx.Request, method: str, url: str) -> None:
    assert (request.method, str(request.url)) == (method, url)
    assert request.headers["authorization"] == f"Bearer {KEY}"


# --- OpenAI: what it sends ---------------------------------------------------------------------


async def test_openai_multipart_edit_sends_the_inputs_original_bytes_and_the_fields() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    job = make_job(
        RED,
        mask=MASK,
        size=Size(1536, 1024),
        quality=Quality.HIGH,
        output_format=OutputFormat.WEBP,
        output_compression=80,
        background=Background.OPAQUE,
        user="u-1",
        n=2,
        extra={"moderation": "low", "flag": True, "nested": {"a": 1}},
    )
    async with aclosing(openai(wire)) as client:
        await client.run(job, "gpt-image-2-provider")
    assert_sent(wire.only, "POST", f"{OPENAI_BASE}/images/edits")
    fields, files = multipart(wire.only)
    assert fields == {
        "model": "gpt-image-2-provider",
        "prompt": "make it blue",
        "n": "2",
        "size": "1536x1024",
        "quality": "high",
        "output_format": "webp",
        "output_compression": "80",
        "background": "opaque",
        "user": "u-1",
        "moderation": "low",
    }, "scalars in `extra` pass through; booleans and objects do not; no response_format for gpt-image-2"
    assert [name for name, _ in files] == ["image", "mask"]
    image, mask = files[0][1], files[1][1]
    assert (image.filename, image.content_type, image.data) == ("image0.png", "image/png", RED)
    assert (mask.filename, mask.content_type, mask.data) == ("mask.png", "image/png", MASK)


async def test_openai_multipart_edit_of_several_inputs_uses_image_brackets_and_leaves_defaults_out() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    async with aclosing(openai(wire)) as client:
        await client.run(make_job(RED, BLUE), "gpt-image-2")
    fields, files = multipart(wire.only)
    assert fields == {"model": "gpt-image-2", "prompt": "make it blue", "n": "1", "size": "1024x1024"}
    assert [(name, part.filename, part.data) for name, part in files] == [
        ("image[]", "image0.png", RED),
        ("image[]", "image1.png", BLUE),
    ]


async def test_openai_multipart_edit_streams_large_inputs_with_their_exact_length_and_escaped_names() -> None:
    noisy = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    buf = io.BytesIO()
    noisy.save(buf, "PNG", compress_level=0)
    large = buf.getvalue()
    assert len(large) > 2 * PIECE, "read in several pieces"
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    job = make_job(large, RED, extra={'we"ird\nname': "two\r\nlines"})
    async with aclosing(openai(wire)) as client:
        await client.run(job, "gpt-image-2")
    request = wire.only
    assert "transfer-encoding" not in request.headers
    assert int(request.headers["content-length"]) == len(request.content)
    fields, files = multipart(request)
    assert fields["we%22ird%0Aname"] == "two\r\nlines", "named as httpx and browsers escape a form name"
    assert [(name, part.data) for name, part in files] == [("image[]", large), ("image[]", RED)]


async def test_openai_asks_dalle2_for_b64_json() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    job = make_job(RED, model="dall-e-2", size=Size(512, 512), n=3)
    async with aclosing(openai(wire)) as client:
        await client.run(job, "dall-e-2")
    fields, _ = multipart(wire.only)
    assert fields == {
        "model": "dall-e-2",
        "prompt": "make it blue",
        "n": "3",
        "size": "512x512",
        "response_format": "b64_json",
    }


async def test_openai_asks_b64_json_of_whatever_dalle_model_a_channel_maps_to() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})), reply(body=images_body({"b64_json": B64_BLUE})))
    async with aclosing(openai(wire)) as client:
        await client.run(make_job(RED, size=Size(1024, 1024)), "dall-e-3")
        await client.run(make_job(RED, model="dall-e-2", size=Size(512, 512)), "my-gpt-image")
    mapped, unmapped = (multipart(request)[0] for request in wire.requests)
    assert mapped.get("response_format") == "b64_json", "the provider's model decides"
    assert "response_format" not in unmapped


async def test_openai_sends_only_model_and_prompt_for_a_basic_fields_model() -> None:
    wire = Wire(reply(body=images_body({"url": "https://cdn.test/a.jpeg"})))
    job = make_job(RED, model="nano-banana", quality=Quality.HIGH, n=1, user="u")
    async with aclosing(openai(wire)) as client:
        await client.run(job, "nano-banana")
    fields, files = multipart(wire.only)
    assert fields == {"model": "nano-banana", "prompt": "make it blue"}
    assert [name for name, _ in files] == ["image"]


async def test_openai_asks_a_listed_size_that_breaks_the_16_rule_as_the_covering_size() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    async with aclosing(openai(wire)) as client:
        await client.run(make_job(size=Size(1920, 1080)), "gpt-image-2")
    assert body_of(wire.only)["size"] == "1920x1088"


async def test_openai_generation_is_json_to_images_generations() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    job = make_job(prompt="a red circle", n=4, output_compression=50, output_format=OutputFormat.JPEG)
    async with aclosing(openai(wire)) as client:
        await client.run(job, "gpt-image-2")
    assert_sent(wire.only, "POST", f"{OPENAI_BASE}/images/generations")
    assert body_of(wire.only) == {
        "model": "gpt-image-2",
        "prompt": "a red circle",
        "n": 4,
        "size": "1024x1024",
        "output_format": "jpeg",
        "output_compression": 50,
    }, "numbers go as JSON numbers"


async def test_openai_json_edit_with_data_urls() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    async with aclosing(openai(wire, send_inputs="data_urls")) as client:
        await client.run(make_job(RED, BLUE, mask=MASK, n=2), "gpt-image-2")
    assert_sent(wire.only, "POST", f"{OPENAI_BASE}/images/edits")
    body = body_of(wire.only)
    assert (body["model"], body["n"], body["size"]) == ("gpt-image-2", 2, "1024x1024")
    assert body["image"] == [f"data:image/png;base64,{B64_RED}", f"data:image/png;base64,{B64_BLUE}"]
    assert body["mask"] == f"data:image/png;base64,{base64.b64encode(MASK).decode()}"


async def test_openai_json_edit_with_published_urls_withdraws_them_afterwards() -> None:
    wire = Wire(reply(body=images_body({"b64_json": B64_BLUE})))
    inputs = FakeInputs()
    async with aclosing(openai(wire, send_inputs="urls", inputs=inputs)) as client:
        await client.run(make_job(RED, BLUE, mask=MASK), "gpt-image-2")
    body = body_of(wire.only)
    assert body["image"] == ["https://inputs.test/1.png?sig=x", "https://inputs.test/2.png?sig=x"]
    assert body["mask"] == "https://inputs.test/3.png?sig=x"
    assert inputs.published == [(RED, OutputFormat.PNG), (BLUE, OutputFormat.PNG), (MASK, OutputFormat.PNG)]
    assert inputs.withdrawn == ["handle-1", "handle-2", "handle-3"]


async def test_openai_withdraws_published_inputs_when_the_provider_fails() -> None:
    wire = Wire(reply(500, {"error": {"message": "boom"}}))
    inputs = FakeInputs()
    async with aclosing(openai(wire, send_inputs="urls", inputs=inputs)) as client:
        with pytest.raises(EngineError, match="boom"):
            await client.run(make_job(RED), "gpt-image-2")
    assert inputs.withdrawn == ["handle-1"]


# --- OpenAI: how it reads answers --------------------------------------------------------------


async def test_openai_parses_b64_url_and_data_url_images_with_usage() -> None:
    usage = {"total_tokens": 42, "input_tokens": 30, "output_tokens": 12}
    wire = Wire(
        reply(
            body=images_body(
                {"b64_json": B64_RED, "revised_prompt": "a red square"},
                {"url": "https://cdn.test/b.png"},
                {"url": f"data:image/png;base64,{B64_BLUE}"},
                {"b64_json": f"data:image/png;base64,{B64_BLUE}"},
                "not an object",
                usage=usage,
            )
        )
    )
    async with aclosing(openai(wire)) as client:
        answer = await client.run(make_job(RED, n=4), "gpt-image-2")
    assert [(i.data, i.url, i.revised_prompt) for i in answer.images] == [
        (RED, None, "a red square"),
        (None, "https://cdn.test/b.png", ""),
        (BLUE, None, ""),
        (BLUE, None, ""),
    ]
    assert answer.usage == usage


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (httpx.Response(200, content=b"<html>gateway</html>"), "not JSON"),
        (reply(body={"created": 1}), "no 'data' list"),
        (reply(body=images_body({"b64_json": "not base64!!"})), "not valid base64"),
    ],
)
async def test_openai_malformed_success_answers_are_engine_errors(answer: httpx.Response, says: str) -> None:
    async with aclosing(openai(Wire(answer))) as client:
        with pytest.raises(EngineError, match=says):
            await client.run(make_job(RED), "gpt-image-2")


@pytest.mark.parametrize("status", [400, 413, 415, 422])
async def test_openai_rejection_is_a_bad_request_with_the_providers_message_and_param(status: int) -> None:
    body = {"error": {"message": "Invalid size 7x7.", "type": "invalid_request_error", "param": "size", "code": None}}
    async with aclosing(openai(Wire(reply(status, body)))) as client:
        with pytest.raises(BadRequest) as caught:
            await client.run(make_job(RED), "gpt-image-2")
    assert (caught.value.message, caught.value.param, caught.value.code) == (
        "Invalid size 7x7.",
        "size",
        "invalid_value",
    )


async def test_openai_rejection_keeps_the_providers_code() -> None:
    body = {"error": {"message": "Your prompt was rejected.", "param": "prompt", "code": "moderation_blocked"}}
    async with aclosing(openai(Wire(reply(400, body)))) as client:
        with pytest.raises(BadRequest) as caught:
            await client.run(make_job(), "gpt-image-2")
    assert (caught.value.code, caught.value.param) == ("moderation_blocked", "prompt")


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [
        (429, {"retry-after": "3"}, 3.0),
        (429, {"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        (500, {}, None),
        (502, {"retry-after": "0"}, 0.0),
        (503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        (408, {}, None),
    ],
)
async def test_openai_busy_and_server_faults_are_retryable_with_retry_after(
    status: int, headers: dict[str, str], wait: float | None
) -> None:
    body = {"error": {"message": "Slow down", "type": "rate_limit_error"}}
    async with aclosing(openai(Wire(reply(status, body, headers)))) as client:
        with pytest.raises(EngineError) as caught:
            await client.run(make_job(RED), "gpt-image-2")
    assert type(caught.value) is EngineError
    assert caught.value.retryable is True
    assert caught.value.retry_after == wait
    assert f"'prov' answered {status}: Slow down" in caught.value.message


@pytest.mark.parametrize("status", [401, 403])
async def test_openai_refused_credentials_are_not_retryable(status: int) -> None:
    body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    async with aclosing(openai(Wire(reply(status, body)))) as client:
        with pytest.raises(EngineError) as caught:
            await client.run(make_job(RED), "gpt-image-2")
    assert caught.value.retryable is False
    assert caught.value.message == f"The upstream channel 'prov' refused its credentials ({status})."


async def test_openai_other_statuses_are_not_retryable_and_say_the_reason_without_a_body() -> None:
    async with aclosing(openai(Wire(httpx.Response(404, content=b"")))) as client:
        with pytest.raises(EngineError) as caught:
            await client.run(make_job(RED), "gpt-image-2")
    assert caught.value.retryable is False
    assert caught.value.message == "The upstream channel 'prov' answered 404: Not Found"


# --- OpenAI: streaming -------------------------------------------------------------------------


async def test_openai_streams_partials_to_the_job_and_keeps_the_completed_image() -> None:
    partials: list[tuple[int, bytes]] = []

    async def on_partial(index: int, data: bytes) -> None:
        partials.append((index, data))

    usage = {"total_tokens": 9}
    wire = Wire(
        sse(
            {"type": "image_edit.partial_image", "partial_image_index": 0, "b64_json": B64_RED},
            {"type": "image_edit.partial_image", "partial_image_index": 1, "b64_json": B64_BLUE},
            {"type": "image_edit.completed", "b64_json": B64_BLUE, "usage": usage},
        )
    )
    job = make_job(RED, on_partial=on_partial, stream=True, partial_images=2)
    async with aclosing(openai(wire, send_inputs="data_urls")) as client:
        answer = await client.run(job, "gpt-image-2")
    body = body_of(wire.only)
    assert (body["stream"], body["partial_images"]) == (True, 2)
    assert partials == [(0, RED), (1, BLUE)]
    assert [image.data for image in answer.images] == [BLUE]
    assert answer.usage == usage


async def test_openai_multipart_stream_sends_stream_fields() -> None:
    async def on_partial(index: int, data: bytes) -> None:
        raise AssertionError("no partial was sent")

    wire = Wire(sse({"type": "image_edit.completed", "b64_json": B64_RED}))
    job = make_job(RED, on_partial=on_partial, stream=True, partial_images=1)
    async with aclosing(openai(wire)) as client:
        answer = await client.run(job, "gpt-image-2")
    fields, _ = multipart(wire.only)
    assert (fields["stream"], fields["partial_images"]) == ("true", "1")
    assert [image.data for image in answer.images] == [RED]


async def test_openai_stream_error_event_is_an_engine_error() -> None:
    async def on_partial(index: int, data: bytes) -> None:
        return None

    wire = Wire(sse({"type": "error", "error": {"message": "content policy", "param": "prompt"}}))
    async with aclosing(openai(wire)) as client:
        with pytest.raises(EngineError, match="content policy") as caught:
            await client.run(make_job(on_partial=on_partial, stream=True), "gpt-image-2")
    assert caught.value.param == "prompt"


async def test_openai_stream_answered_as_plain_json_or_refused() -> None:
    async def on_partial(index: int, data: bytes) -> None:
        return None

    wire = Wire(
        reply(body=images_body({"b64_json": B64_RED}, usage={"total_tokens": 1})),
        reply(400, {"error": {"message": "stream not supported", "param": "stream"}}),
    )
    async with aclosing(openai(wire)) as client:
        answer = await client.run(make_job(on_partial=on_partial, stream=True), "gpt-image-2")
        assert [image.data for image in answer.images] == [RED] and answer.usage == {"total_tokens": 1}
        with pytest.raises(BadRequest) as caught:
            await client.run(make_job(on_partial=on_partial, stream=True), "gpt-image-2")
    assert (caught.value.message, caught.value.param) == ("stream not supported", "stream")


# --- OpenAI: seed 003's callback mode ----------------------------------------------------------


async def test_openai_callback_mode_sends_the_slots_url_and_reads_the_callback() -> None:
    inbox = FakeInbox({"success": True, "task_id": "t-1", "data": images_body({"b64_json": B64_BLUE})})
    wire = Wire(reply(body={"task_id": "t-1"}))
    async with aclosing(openai(wire, callbacks=inbox)) as client:
        answer = await client.run(make_job(RED), "gpt-image-2")
    (slot,) = inbox.slots
    fields, _ = multipart(wire.only)
    assert fields["callback_url"] == slot.url
    assert slot.waited and inbox.discarded == [slot]
    assert [image.data for image in answer.images] == [BLUE]
    assert answer.extra == {"upstream_task": "t-1"}


async def test_openai_callback_mode_takes_an_immediate_answer_without_waiting() -> None:
    inbox = FakeInbox()
    wire = Wire(reply(body=images_body({"url": "https://cdn.test/now.png"})))
    async with aclosing(openai(wire, callbacks=inbox, send_inputs="data_urls")) as client:
        answer = await client.run(make_job(RED), "gpt-image-2")
    (slot,) = inbox.slots
    assert body_of(wire.only)["callback_url"] == slot.url
    assert not slot.waited and inbox.discarded == [slot]
    assert [image.url for image in answer.images] == ["https://cdn.test/now.png"]


async def test_openai_failed_callback_is_an_engine_error_and_the_slot_is_discarded() -> None:
    inbox = FakeInbox({"success": False, "error": {"code": "api_error", "message": "fetch failed"}})
    async with aclosing(openai(Wire(reply(body={"task_id": "t-2"})), callbacks=inbox)) as client:
        with pytest.raises(EngineError, match="fetch failed"):
            await client.run(make_job(RED), "gpt-image-2")
    assert inbox.discarded == inbox.slots and len(inbox.slots) == 1


async def test_openai_callback_mode_rejection_discards_the_slot() -> None:
    inbox = FakeInbox()
    body = {"success": False, "error": {"code": "bad_size", "message": "size unsupported", "param": "size"}}
    async with aclosing(openai(Wire(reply(422, body)), callbacks=inbox)) as client:
        with pytest.raises(BadRequest) as caught:
            await client.run(make_job(RED), "gpt-image-2")
    assert (caught.value.message, caught.value.param, caught.value.code) == ("size unsupported", "size", "bad_size")
    assert inbox.discarded == inbox.slots and not inbox.slots[0].waited


async def test_openai_probe_lists_models() -> None:
    wire = Wire(reply(body={"object": "list", "data": [{"id": "a"}, {"id": "b"}]}), reply(401, {}))
    async with aclosing(openai(wire)) as client:
        assert await client.probe() == "ok (2 models listed)"
        with pytest.raises(EngineError, match="refused its credentials"):
            await client.probe()
    assert_sent(wire.requests[0], "GET", f"{OPENAI_BASE}/models")


# --- jobs (seed 002) ---------------------------------------------------------------------------


def jobs(wire: Wire, inputs: FakeInputs) -> JobsUpstream:
    return JobsUpstream(Endpoint("jobs", JOBS_BASE, KEY, 5, 4, wire.transport), inputs, poll_interval_s=0.001)


def created(task_id: str = "task_1") -> httpx.Response:
    return reply(body={"code": 200, "msg": "success", "data": {"taskId": task_id}})


def record(state: str, task_id: str = "task_1", **data: Any) -> httpx.Response:
    return reply(body={"code": 200, "msg": "success", "data": {"taskId": task_id, "state": state, **data}})


async def test_jobs_creates_a_task_with_published_inputs_then_polls_until_success() -> None:
    urls = ["https://cdn.test/r1.png", "https://cdn.test/r2.png"]
    wire = Wire(
        created(),
        record("waiting"),
        record("generating"),
        record("success", resultJson=json.dumps({"resultUrls": urls})),
    )
    inputs = FakeInputs()
    job = make_job(RED, size=Size(1536, 864), quality=Quality.HIGH, output_format=OutputFormat.JPEG)
    async with aclosing(jobs(wire, inputs)) as client:
        answer = await client.run(job, "gpt-image-2")
    create, *polls = wire.requests
    assert_sent(create, "POST", f"{JOBS_BASE}/jobs/createTask")
    assert body_of(create) == {
        "model": "gpt-image-2-image-to-image",
        "input": {
            "prompt": "make it blue",
            "aspect_ratio": "16:9",
            "resolution": "1K",
            "image_urls": ["https://inputs.test/1.png?sig=x"],
            "quality": "high",
            "output_format": "jpeg",
        },
    }
    assert len(polls) == 3
    for poll in polls:
        assert_sent(poll, "GET", f"{JOBS_BASE}/jobs/recordInfo?taskId=task_1")
    assert [image.url for image in answer.images] == urls
    assert answer.extra == {"upstream_task": "task_1"}
    assert inputs.published == [(RED, OutputFormat.PNG)] and inputs.withdrawn == ["handle-1"]


async def test_jobs_generation_uses_the_text_model_and_a_result_object() -> None:
    wire = Wire(created("g"), record("success", "g", resultJson={"resultUrls": ["https://cdn.test/g.png"]}))
    inputs = FakeInputs()
    async with aclosing(jobs(wire, inputs)) as client:
        answer = await client.run(make_job(size=Size(2048, 2048)), "gpt-image-2")
    assert body_of(wire.requests[0]) == {
        "model": "gpt-image-2-text-to-image",
        "input": {"prompt": "make it blue", "aspect_ratio": "1:1", "resolution": "2K", "output_format": "png"},
    }
    assert [image.url for image in answer.images] == ["https://cdn.test/g.png"]
    assert inputs.published == []


async def test_jobs_sends_a_mapped_model_as_it_is() -> None:
    wire = Wire(created(), record("success", resultJson='{"resultUrls":["https://cdn.test/x.png"]}'))
    async with aclosing(jobs(wire, FakeInputs())) as client:
        await client.run(make_job(RED), "flux-kontext-pro")
    assert body_of(wire.requests[0])["model"] == "flux-kontext-pro"


async def test_jobs_failed_task_is_a_final_engine_error_and_inputs_are_withdrawn() -> None:
    wire = Wire(created(), record("fail", failCode="422", failMsg="image unreadable"))
    inputs = FakeInputs()
    async with aclosing(jobs(wire, inputs)) as client:
        with pytest.raises(EngineError, match="422: image unreadable") as caught:
            await client.run(make_job(RED), "gpt-image-2")
    assert caught.value.retryable is False
    assert inputs.withdrawn == ["handle-1"]


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        ((reply(body={"code": 200, "data": {}}),), "created no task"),
        ((created(), reply(body={"code": 200, "data": None})), "has no 'data'"),
        ((created(), record("success", resultJson="{not json")), "resultJson is not JSON"),
        ((created(), record("success", resultJson='{"resultUrls":[]}')), "without resultUrls"),
    ],
)
async def test_jobs_malformed_answers_are_engine_errors(answers: tuple[httpx.Response, ...], says: str) -> None:
    async with aclosing(jobs(Wire(*answers), FakeInputs())) as client:
        with pytest.raises(EngineError, match=says):
            await client.run(make_job(RED), "gpt-image-2")


async def test_jobs_http_rejections_map_to_our_errors() -> None:
    wire = Wire(
        reply(422, {"code": 422, "msg": "prompt is required"}),
        reply(401, {"code": 401, "msg": "bad key"}),
        created(),
        reply(429, {"code": 429, "msg": "too many polls"}, {"retry-after": "2"}),
    )
    async with aclosing(jobs(wire, FakeInputs())) as client:
        with pytest.raises(BadRequest, match="prompt is required"):
            await client.run(make_job(RED), "gpt-image-2")
        with pytest.raises(EngineError) as refused:
            await client.run(make_job(RED), "gpt-image-2")
        assert refused.value.retryable is False and "refused its credentials (401)" in refused.value.message
        with pytest.raises(EngineError) as busy:
            await client.run(make_job(RED), "gpt-image-2")
    assert busy.value.retryable is True and busy.value.retry_after == 2.0
    assert "too many polls" in busy.value.message


async def test_jobs_error_code_inside_a_200_envelope_is_an_engine_error() -> None:
    wire = Wire(reply(200, {"code": 402, "msg": "Credits insufficient", "data": None}))
    async with aclosing(jobs(wire, FakeInputs())) as client:
        with pytest.raises(EngineError, match="Credits insufficient"):
            await client.run(make_job(RED), "gpt-image-2")


async def test_jobs_probe() -> None:
    wire = Wire(reply(404, {"code": 404, "msg": "no such task"}), reply(403, {"code": 403, "msg": "no"}))
    async with aclosing(jobs(wire, FakeInputs())) as client:
        assert await client.probe() == "ok (answers 404 to an unknown task)"
        with pytest.raises(EngineError, match=r"refused its credentials \(403\)"):
            await client.probe()
    assert_sent(wire.requests[0], "GET", f"{JOBS_BASE}/jobs/recordInfo?taskId=probe")


# --- envelope (seed 000) -----------------------------------------------------------------------


def envelope(wire: Wire) -> EnvelopeUpstream:
    return EnvelopeUpstream(Endpoint("env", ENVELOPE_BASE, KEY, 5, 4, wire.transport))


def success(*images: Any) -> httpx.Response:
    return reply(body={"code": 0, "message": "ok", "data": {"images": list(images)}})


async def test_envelope_sends_data_urls_and_reads_url_and_data_url_images() -> None:
    wire = Wire(
        success(
            {"url": "https://cdn.test/e1.png", "revised_prompt": "blue it is"},
            {"url": f"data:image/png;base64,{B64_BLUE}"},
            "https://cdn.test/e2.png",
        )
    )
    job = make_job(RED, BLUE, size=Size(1920, 1080), quality=Quality.LOW, n=3)
    async with aclosing(envelope(wire)) as client:
        answer = await client.run(job, "gpt-image-2-edit")
    assert_sent(wire.only, "POST", f"{ENVELOPE_BASE}/images/edit")
    assert body_of(wire.only) == {
        "model": "gpt-image-2-edit",
        "prompt": "make it blue",
        "image": [f"data:image/png;base64,{B64_RED}", f"data:image/png;base64,{B64_BLUE}"],
        "size": "1920x1088",
        "quality": "low",
        "n": 3,
    }
    assert [(i.data, i.url, i.revised_prompt) for i in answer.images] == [
        (None, "https://cdn.test/e1.png", "blue it is"),
        (BLUE, None, ""),
        (None, "https://cdn.test/e2.png", ""),
    ]
    assert answer.usage is None


async def test_envelope_leaves_default_quality_and_n_out() -> None:
    wire = Wire(success({"url": "https://cdn.test/e.png"}))
    async with aclosing(envelope(wire)) as client:
        await client.run(make_job(RED, quality=Quality.AUTO), "gpt-image-2")
    assert set(body_of(wire.only)) == {"model", "prompt", "image", "size"}


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (reply(body={"code": 1001, "message": "image too small", "data": None}), "image too small"),
        (reply(body={"code": 0, "data": {}}), "no 'data.images' list"),
        (httpx.Response(200, content=b"OK"), "not JSON"),
    ],
)
async def test_envelope_error_envelopes_are_engine_errors(answer: httpx.Response, says: str) -> None:
    async with aclosing(envelope(Wire(answer))) as client:
        with pytest.raises(EngineError, match=says):
            await client.run(make_job(RED), "gpt-image-2")


async def test_envelope_http_errors_map_to_our_errors() -> None:
    wire = Wire(
        reply(400, {"code": 400, "message": "prompt too long"}),
        reply(503, {"code": 503, "message": "overloaded"}, {"retry-after-ms": "250"}),
        reply(403, {"code": 403, "message": "forbidden"}),
    )
    async with aclosing(envelope(wire)) as client:
        with pytest.raises(BadRequest) as rejected:
            await client.run(make_job(RED), "gpt-image-2")
        with pytest.raises(EngineError) as busy:
            await client.run(make_job(RED), "gpt-image-2")
        with pytest.raises(EngineError) as refused:
            await client.run(make_job(RED), "gpt-image-2")
    assert (rejected.value.message, rejected.value.code) == ("prompt too long", "invalid_value")
    assert busy.value.retryable is True and busy.value.retry_after == 0.25 and "overloaded" in busy.value.message
    assert refused.value.retryable is False and "refused its credentials (403)" in refused.value.message


async def test_envelope_probe() -> None:
    wire = Wire(reply(400, {"code": 400, "message": "prompt required"}), reply(401, {}))
    async with aclosing(envelope(wire)) as client:
        assert await client.probe() == "ok (answers 400 to an empty request)"
        with pytest.raises(EngineError, match=r"refused its credentials \(401\)"):
            await client.probe()
    assert_sent(wire.requests[0], "POST", f"{ENVELOPE_BASE}/images/edit")
    assert body_of(wire.requests[0]) == {}


# --- httpx's own failures escape the clients; the upstream engine maps them --------------------


def raising(exc: type[httpx.TransportError]) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("injected", request=request)

    return answer


def each_client(wire: Wire) -> list[UpstreamClient]:
    return [openai(wire), jobs(wire, FakeInputs()), envelope(wire)]


async def test_transport_failures_escape_every_client_raw() -> None:
    wire = Wire(*(raising(httpx.ConnectError) for _ in range(3)))
    for client in each_client(wire):
        async with aclosing(client):
            with pytest.raises(httpx.ConnectError):
                await client.run(make_job(RED), "gpt-image-2")
    assert len(wire.requests) == 3


def channel(**settings: Any) -> ChannelSettings:
    return ChannelSettings(name="prov", engine="openai", base_url=OPENAI_BASE, timeout_s=5, **settings)


def fetcher(wire: Wire | None = None) -> SafeFetcher:
    """A SafeFetcher whose downloads go to `wire` (its address rules still apply)."""
    transport = (wire or Wire()).transport
    return SafeFetcher(FetchPolicy(timeout_s=5), client=httpx.AsyncClient(transport=transport, trust_env=False))


def engine(client: UpstreamClient, downloads: SafeFetcher | None = None, **settings: Any) -> UpstreamEngine:
    return UpstreamEngine(channel(**settings), client, downloads or fetcher(), ImagingSettings(), KEY)


async def run_engine(upstream: UpstreamEngine, job: Job) -> Any:
    try:
        return await upstream.run(job)
    finally:
        await upstream.aclose()
        await upstream.fetcher.aclose()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (httpx.ConnectError, EngineError),
        (httpx.RemoteProtocolError, EngineError),
        (httpx.ReadTimeout, EngineTimeout),
        (httpx.ConnectTimeout, EngineTimeout),
    ],
)
async def test_engine_maps_transport_failures(fault: type[httpx.TransportError], error: type[EngineError]) -> None:
    upstream = engine(openai(Wire(raising(fault))))
    with pytest.raises(EngineError) as caught:
        await run_engine(upstream, make_job(RED, size=Size(8, 8)))
    assert type(caught.value) is error
    assert caught.value.retryable is True
    assert "'prov'" in caught.value.message and fault.__name__ in caught.value.message
    assert isinstance(caught.value.__cause__, fault)


async def test_engine_scrubs_the_channels_key_from_a_providers_words() -> None:
    said = f"Incorrect API key provided: {KEY}."
    wire = Wire(
        reply(400, {"error": {"message": said, "param": f"key={KEY}", "code": f"bad_{KEY}"}}),
        reply(500, {"error": {"message": said}}),
    )
    upstream = engine(openai(wire))
    with pytest.raises(BadRequest) as rejected:
        await upstream.run(make_job(RED, size=Size(8, 8)))
    with pytest.raises(EngineError) as failed:
        await run_engine(upstream, make_job(RED, size=Size(8, 8)))
    assert all(request.headers["authorization"] == f"Bearer {KEY}" for request in wire.requests)
    assert rejected.value.message == "Incorrect API key provided: ***."
    assert (rejected.value.param, rejected.value.code) == ("key=***", "bad_***")
    assert str(rejected.value) == rejected.value.message
    assert failed.value.message == "The upstream channel 'prov' answered 500: Incorrect API key provided: ***."
    assert KEY not in str(failed.value) and failed.value.retryable is True


async def test_engine_turns_an_answer_into_images_and_a_scrubbed_report() -> None:
    answer = png(16, 16, (10, 200, 10))
    wire = Wire(
        reply(
            body=images_body(
                {"b64_json": base64.b64encode(answer).decode(), "revised_prompt": f"green ({KEY})"},
                usage={"total_tokens": 5, "note": KEY},
            )
        )
    )
    upstream = engine(openai(wire), model_map={"gpt-image-2": "provider-image"})
    made = await run_engine(upstream, make_job(RED, size=Size(16, 16)))
    assert multipart(wire.only)[0]["model"] == "provider-image"
    (image,) = made.images
    assert (image.data, image.format, image.size) == (answer, OutputFormat.PNG, Size(16, 16)), "kept as it came"
    assert image.revised_prompt == "green (***)"
    assert made.report["channel"] == "prov" and made.report["model"] == "provider-image"
    assert made.report["usage"] == {"total_tokens": 5, "note": "***"}


async def test_engine_downloads_url_results_under_the_fetch_rules() -> None:
    result = png(16, 16, (1, 2, 3))
    files = Wire(httpx.Response(200, content=result, headers={"content-type": "image/png"}))
    wire = Wire(reply(body=images_body({"url": "https://8.8.8.8/out/1.png"})))
    made = await run_engine(engine(openai(wire), fetcher(files)), make_job(RED, size=Size(16, 16)))
    assert made.images[0].data == result
    assert files.only.url.path == "/out/1.png" and files.only.headers["host"] == "8.8.8.8"
    assert "authorization" not in files.only.headers, "the channel's key never goes to a result host"


async def test_engine_refuses_to_download_a_result_from_a_private_address() -> None:
    files = Wire()
    wire = Wire(reply(body=images_body({"url": "http://169.254.169.254/latest/meta-data"})))
    with pytest.raises(EngineError, match="could not be downloaded") as caught:
        await run_engine(engine(openai(wire), fetcher(files)), make_job(RED, size=Size(16, 16)))
    assert "resolves to a private address" in caught.value.message
    assert files.requests == []
