"""The OpenAI Images dialect, outbound: a client for OpenAI and any OpenAI-compatible provider
(another imagegate included). Edits go as multipart with the inputs' original bytes; generations as
JSON. Provider failures become our error tree here, once (DESIGN principle 2).
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import orjson

from imagegate.config import ChannelSettings
from imagegate.core.catalog import SizeMode, answers_urls_unless_asked
from imagegate.core.job import Job, Source
from imagegate.core.request import Background, OutputFormat, Quality
from imagegate.core.sizing import native_size
from imagegate.core.upstream import CallbackInbox, InputHost, RelayHosts, UpstreamAnswer, UpstreamImage
from imagegate.errors import EngineError
from imagegate.wire.b64_answer import loads_lifting_b64
from imagegate.wire.outbound import (
    Endpoint,
    HttpUpstream,
    MultipartBody,
    Publications,
    b64_payload,
    data_url,
    decode_b64,
    error_parts,
    published,
    revised_prompt,
)


def wire_fields(job: Job, model: str) -> dict[str, str]:
    """The form/JSON fields of a request for `job` as OpenAI names them (defaults left out)."""
    req = job.request
    fields = {"model": model, "prompt": req.prompt}
    if job.spec.basic_fields_only:
        return fields
    fields["n"] = str(req.n)
    if job.spec.size_mode is not SizeMode.ENGINE:
        fields["size"] = str(native_size(job.size))
    if req.quality is not Quality.AUTO:
        fields["quality"] = req.quality.value
    if req.output_format is not OutputFormat.PNG:
        fields["output_format"] = req.output_format.value
    if req.output_compression is not None:
        fields["output_compression"] = str(req.output_compression)
    if req.background is not Background.AUTO:
        fields["background"] = req.background.value
    if req.user:
        fields["user"] = req.user
    if answers_urls_unless_asked(model):
        fields["response_format"] = "b64_json"
    for name, value in req.extra.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool) and name not in fields:
            fields[name] = str(value)
    return fields


def upload_parts(job: Job) -> list[tuple[str, str, Source]]:
    """The multipart file parts of an edit: `image` (one) or `image[]` (several), then `mask`."""
    name = "image" if len(job.images) == 1 else "image[]"
    parts = [(name, f"image{index}.{source.format.value}", source) for index, source in enumerate(job.images)]
    if job.mask is not None:
        parts.append(("mask", f"mask.{job.mask.format.value}", job.mask))
    return parts


def parse_images(body: Any, lifted: dict[str, memoryview] | None = None) -> UpstreamAnswer:
    """An ImagesResponse (`{"data": [{"b64_json"|"url", "revised_prompt"}], "usage"}`) as an answer.

    `lifted` maps the tokens that `loads_lifting_b64` left in place of `b64_json` values to those values'
    bytes; an image read from one keeps them as its `b64`, to be sent on as they came."""
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise EngineError("The upstream's answer has no 'data' list of images.")
    images = []
    for item in items:
        if not isinstance(item, dict):
            continue
        prompt = revised_prompt(item)
        encoded = item.get("b64_json")
        if lifted and isinstance(encoded, str) and encoded in lifted:
            images.append(_passed_through(lifted[encoded], prompt))
        elif isinstance(encoded, str):
            images.append(UpstreamImage(data=decode_b64(encoded), revised_prompt=prompt))
        elif isinstance(item.get("url"), str):
            url = item["url"]
            if url.startswith("data:"):
                images.append(UpstreamImage(data=decode_b64(url), revised_prompt=prompt))
            else:
                images.append(UpstreamImage(url=url, revised_prompt=prompt))
    usage = body.get("usage")
    return UpstreamAnswer(images, usage if isinstance(usage, dict) else None)


def _passed_through(encoded: memoryview, prompt: str) -> UpstreamImage:
    """An image decoded from the provider's base64, which it keeps when that is the canonical
    (padded, unbroken) encoding of the bytes, so that sending it on is sending what encoding gives."""
    payload = b64_payload(encoded)
    data = decode_b64(payload)
    canonical = len(payload) == 4 * -(-len(data) // 3)
    return UpstreamImage(data=data, revised_prompt=prompt, b64=payload if canonical else None)


def parse_callback(body: Any) -> UpstreamAnswer:
    """A seed-003 callback: `{"success": true, "task_id", "data": <ImagesResponse>}` or its failure."""
    if isinstance(body, dict) and body.get("success") is True and isinstance(body.get("data"), dict):
        answer = parse_images(body["data"])
        answer.extra["upstream_task"] = body.get("task_id")
        return answer
    message, code, _ = error_parts(body)
    raise EngineError(f"The upstream task failed: {message or code or 'no reason given'}")


async def relay_events(response: httpx.Response, job: Job) -> UpstreamAnswer:
    """Read an SSE answer: partial images go to `job.on_partial` as they arrive, completed ones are kept."""
    images: list[UpstreamImage] = []
    usage: dict[str, Any] | None = None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        try:
            event = orjson.loads(line[5:].strip())
        except orjson.JSONDecodeError:
            continue
        kind = str(event.get("type", "")) if isinstance(event, dict) else ""
        if kind.endswith(".partial_image") and job.on_partial is not None:
            index = event.get("partial_image_index", 0)
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise EngineError(f"The upstream streamed a partial image whose index is {str(index)[:40]!r}.")
            await job.on_partial(index, decode_b64(str(event.get("b64_json", ""))))
        elif kind.endswith(".completed"):
            images.append(UpstreamImage(data=decode_b64(str(event.get("b64_json", "")))))
            usage = event.get("usage") if isinstance(event.get("usage"), dict) else usage
        elif kind == "error":
            message, code, param = error_parts(event)
            raise EngineError(f"The upstream's stream ended with an error: {message or code or 'unknown'}", param=param)
    return UpstreamAnswer(images, usage)


async def _reference(source: Source, inputs: Publications | None) -> str:
    """An input as a JSON edit names it: a published signed URL, else a data URL."""
    if inputs is not None:
        return await inputs.url(source)
    return await anyio.to_thread.run_sync(data_url, source)


class OpenAIUpstream(HttpUpstream):
    """OpenAI's Images API at `base_url` (as the OpenAI SDK takes it, ending in `/v1`)."""

    images_per_call = 10
    can_generate = True

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        callbacks: CallbackInbox | None = None,
        send_inputs: str = "multipart",
        inputs: InputHost | None = None,
    ) -> None:
        super().__init__(endpoint)
        self._send_inputs = send_inputs
        self._inputs = inputs
        self._callbacks = callbacks
        """With an inbox, results are asked for by `callback_url` (seed 003's async mode)."""

    async def run(self, job: Job, model: str) -> UpstreamAnswer:
        if self._send_inputs == "urls" and self._inputs is not None and job.images:
            async with published(self._inputs) as inputs:
                return await self._run(job, model, inputs)
        return await self._run(job, model, None)

    async def _run(self, job: Job, model: str, inputs: Publications | None) -> UpstreamAnswer:
        fields = wire_fields(job, model)
        streamed = job.on_partial is not None
        if streamed:
            fields.update(stream="true", partial_images=str(job.request.partial_images))
        elif self._callbacks is not None:
            return await self._by_callback(job, fields, self._callbacks, inputs)
        request = await self._request(job, fields, inputs)
        response = await self._http.send(request, stream=streamed)
        try:
            if response.status_code >= 300:
                await response.aread()
                raise self.refused(response)
            if streamed and response.headers.get("content-type", "").startswith("text/event-stream"):
                return await relay_events(response, job)
            body = (await response.aread()) if streamed else response.content
        finally:
            await response.aclose()
        try:
            return parse_images(*loads_lifting_b64(body))
        except orjson.JSONDecodeError as exc:
            raise EngineError(f"The upstream channel '{self.channel}' answered something that is not JSON.") from exc

    async def _by_callback(
        self, job: Job, fields: dict[str, str], inbox: CallbackInbox, inputs: Publications | None
    ) -> UpstreamAnswer:
        """Seed 003's async mode: the provider answers `{"task_id"}` at once and posts the result to us."""
        slot = inbox.expect()
        try:
            fields["callback_url"] = slot.url
            request = await self._request(job, fields, inputs)
            response = await self._http.send(request)
            body = self.answer(response)
            if isinstance(body, dict) and isinstance(body.get("data"), list):
                return parse_images(body)
            return parse_callback(await slot.wait())
        finally:
            inbox.discard(slot)

    async def _request(self, job: Job, fields: dict[str, str], inputs: Publications | None) -> httpx.Request:
        if job.images and self._send_inputs == "multipart":
            body = MultipartBody(fields, upload_parts(job))
            return self._http.build_request("POST", "/images/edits", content=body, headers=body.headers)
        payload: dict[str, Any] = dict(fields)
        for name in ("n", "output_compression", "partial_images"):
            if name in payload:
                payload[name] = int(payload[name])
        if "stream" in payload:
            payload["stream"] = True
        if not job.images:
            return self._http.build_request("POST", "/images/generations", json=payload)
        payload["image"] = [await _reference(source, inputs) for source in job.images]
        if job.mask is not None:
            payload["mask"] = await _reference(job.mask, inputs)
        return self._http.build_request("POST", "/images/edits", json=payload)

    async def probe(self) -> str:
        response = await self._http.get("/models")
        body = self.answer(response)
        data = body.get("data") if isinstance(body, dict) else None
        return f"ok ({len(data)} models listed)" if isinstance(data, list) else "ok"


def client_for(channel: ChannelSettings, key: str, hosts: RelayHosts) -> OpenAIUpstream:
    """A channel's OpenAI client: results by callback when `callback` is set, inputs as it sends them."""
    return OpenAIUpstream(
        Endpoint.of(channel, key),
        callbacks=hosts.inbox if channel.callback else None,
        send_inputs=channel.send_inputs,
        inputs=hosts.inputs,
    )


def calls_back(channel: ChannelSettings) -> bool:
    """Whether the provider posts results to this server or fetches inputs from it."""
    return channel.callback or channel.send_inputs == "urls"
