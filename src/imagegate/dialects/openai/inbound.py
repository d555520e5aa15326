"""The OpenAI Images dialect (SPEC §2.1): `/v1/images/edits|generations` and aliases, `/v1/models`.

Parses multipart and JSON bodies into EditRequest, renders Outcome as OpenAI's (superset) response
or as SSE events, and owns the OpenAI error shape (`error_body`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import anyio
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from imagegate import openapi
from imagegate.asgi import Scope
from imagegate.core.catalog import Catalog, ModelSpec
from imagegate.core.request import Background, Delivery
from imagegate.core.validation import resolved_quality
from imagegate.dialects.openai import seed003
from imagegate.errors import BadRequest, ImagegateError, MissingParameter
from imagegate.idempotency import failed_after_2xx, settled_before_sent
from imagegate.imaging import has_alpha
from imagegate.responses import Base64Bytes, json_response
from imagegate.runtime import Runtime, runtime_of
from imagegate.service.records import Outcome, ResultLinks, TaskView, UrlFor
from imagegate.service.tasks import Origin, Prepared
from imagegate.wire.fields import dry_run
from imagegate.wire.image_request import parse_request

NAME = "openai"
"""The dialect's name in the registry, and on the tasks it records on any of its prefixes (seed 003's
callback body is this dialect's)."""


def error_body(exc: ImagegateError) -> dict[str, Any]:
    """OpenAI's error object; the official SDKs map the HTTP status and read `message`/`param`/`code`."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_response(exc: ImagegateError, scope: Scope) -> Response:
    """The dialect's one error shape, with the error's status and headers."""
    return json_response(error_body(exc), exc.status, exc.headers)


def seed003_error_response(exc: ImagegateError, scope: Scope) -> Response:
    """Seed 003's error shape on its prefixes, with the request's id as `trace_id`."""
    trace_id = scope.get("state", {}).get("request_id")
    return json_response(seed003.error_body(exc, trace_id), exc.status, exc.headers)


def _image_item(
    outcome: Outcome, index: int, url_for: UrlFor, spec: ModelSpec, prompt: str, *, sent: bool
) -> dict[str, Any]:
    image = outcome.images[index]
    item: dict[str, Any] = {"revised_prompt": prompt if spec.echo_prompt else image.revised_prompt}
    if outcome.delivery is Delivery.URL:
        item["url"] = url_for(image.file_id, outcome.output_format)
    else:
        prefix = f"data:{outcome.output_format.content_type};base64," if spec.url_b64_as_data_url else ""
        encoded = Base64Bytes(image.data or b"", prefix, image.b64)
        item["b64_json"] = encoded if sent else encoded.text()
    return item


def render(outcome: Outcome, url_for: UrlFor, spec: ModelSpec, prompt: str, *, sent: bool = False) -> dict[str, Any]:
    """OpenAI's ImagesResponse with the resolved values (never `auto`) and our task id; a model that
    echoes the prompt (seed 003's adapter layer) answers `created` 0 and `revised_prompt` = `prompt`.
    A body to be `sent` by `json_response` carries its b64 images as `Base64Bytes`, plain strings otherwise."""
    return {
        "created": 0 if spec.echo_prompt else outcome.created,
        "data": [_image_item(outcome, i, url_for, spec, prompt, sent=sent) for i in range(len(outcome.images))],
        "size": str(outcome.size),
        "quality": outcome.quality.value,
        "output_format": outcome.output_format.value,
        "background": outcome.background.value,
        "usage": outcome.usage,
        "task_id": outcome.task_id,
    }


APPLIED_HEADER_MAX = 2048
"""The longest `x-imagegate-applied` value, encoded: proxies refuse long response headers (nginx's
buffer for them is 4 or 8 KB by default)."""
_APPLIED_SAFE = " !#$&'()*+,/:;=?@[]~"
_CUT = quote("…")


def applied_header(outcome: Outcome) -> dict[str, str]:
    """`x-imagegate-applied`: what the engine did (its revised prompt, percent-encoded beyond ASCII, cut
    to APPLIED_HEADER_MAX with a closing `…`), for models whose answer must echo the prompt instead."""
    if not outcome.images:
        return {}
    text = outcome.images[0].revised_prompt
    value = quote(text, safe=_APPLIED_SAFE)
    if len(value) > APPLIED_HEADER_MAX:
        kept, size = [], len(_CUT)
        for char in text:
            size += len(quote(char, safe=_APPLIED_SAFE))
            if size > APPLIED_HEADER_MAX:
                break
            kept.append(char)
        value = quote("".join(kept), safe=_APPLIED_SAFE) + _CUT
    return {"x-imagegate-applied": value}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(rt: Runtime, prepared: Prepared, kind: str, request: Request) -> AsyncIterator[bytes]:
    """SSE events for one streamed request; the request's uploads are closed when it ends."""
    try:
        events = _events(
            rt, prepared, kind, lambda: settled_before_sent(request.scope), lambda: failed_after_2xx(request.scope)
        )
        async for chunk in events:
            yield chunk
    finally:
        await request.close()


async def _events(
    rt: Runtime, prepared: Prepared, kind: str, on_settled: Callable[[], None], on_error: Callable[[], None]
) -> AsyncIterator[bytes]:
    prefix = "image_edit" if kind == "edit" else "image_generation"
    req = prepared.request
    common = {
        "size": str(prepared.size),
        "quality": resolved_quality(req, prepared.spec).value,
        "output_format": req.output_format.value,
    }
    send, receive = anyio.create_memory_object_stream[bytes](max_buffer_size=8)

    async def on_partial(index: int, data: bytes) -> None:
        payload = {
            "type": f"{prefix}.partial_image",
            "b64_json": Base64Bytes(data).text(),
            "created_at": int(time.time()),
            "partial_image_index": index,
            **common,
            # resolved as the completed event resolves it: from the image made
            "background": (Background.TRANSPARENT if has_alpha(data) else Background.OPAQUE).value,
        }
        await send.send(_sse(f"{prefix}.partial_image", payload))

    async def produce() -> None:
        async with send:
            try:
                outcome = await rt.tasks.execute(prepared, on_partial)
            except ImagegateError as exc:
                on_error()
                await send.send(_sse("error", {"type": "error", **error_body(exc)}))
                return
            on_settled()
            for image in outcome.images:
                payload = {
                    "type": f"{prefix}.completed",
                    "b64_json": Base64Bytes(image.data or b"", encoded=image.b64).text(),
                    "created_at": int(time.time()),
                    **common,
                    "background": outcome.background.value,
                    "quality": outcome.quality.value,
                    "usage": outcome.usage,
                }
                await send.send(_sse(f"{prefix}.completed", payload))

    async with anyio.create_task_group() as group:
        group.start_soon(produce)
        async with receive:
            async for chunk in receive:
                yield chunk


async def _images(request: Request, kind: str, seed003_service: bool) -> Response:
    streaming = False
    started = time.perf_counter()
    try:
        rt = runtime_of(request)
        key = await rt.admit(request)
        req = await parse_request(request, rt.config.limits, rt.catalog.basic_fields_only)
        if seed003_service:
            seed003.adapt(req, rt.catalog, form=not _is_json(request))
        if kind == "edit" and not req.images:
            raise MissingParameter("Missing required parameter: 'image'.", param="image")
        if kind == "generate" and req.images:
            raise BadRequest("Generations take no 'image'; send reference images to /v1/images/edits.", param="image")
        if dry_run(request.query_params):
            return json_response(await rt.tasks.quote(key, req))
        origin = Origin(NAME, kind, trace_id=request.state.request_id, base_url=rt.public_base(request))
        if req.callback_url and not req.stream:
            task_id = await rt.tasks.submit(key, req, origin)
            return json_response({"task_id": task_id})
        prepared = await rt.tasks.prepare(key, req, origin)
        headers = {"x-imagegate-engine": prepared.engine.name, "x-imagegate-task": prepared.task_id}
        if req.stream:
            streaming = True
            return StreamingResponse(
                _stream(rt, prepared, kind, request),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-store"},
            )
        outcome = await rt.tasks.execute(prepared)
        body = render(outcome, rt.links.at(rt.public_base(request)), prepared.spec, req.prompt, sent=True)
        if prepared.spec.echo_prompt:
            headers.update(applied_header(outcome))
        if seed003_service:
            body = seed003.success_body(body, request.state.request_id, time.perf_counter() - started)
        return json_response(body, headers=headers)
    finally:
        if not streaming:
            await request.close()


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").lower()
    return not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))


def _image_routes(seed003_service: bool) -> tuple[Callable[[Request], Awaitable[Response]], ...]:
    """The edits and generations handlers of one prefix (seed 003's service, or OpenAI's)."""

    async def images_edits(request: Request) -> Response:
        """POST .../images/edits"""
        return await _images(request, "edit", seed003_service)

    async def images_generations(request: Request) -> Response:
        """POST .../images/generations"""
        return await _images(request, "generate", seed003_service)

    return images_edits, images_generations


async def list_models(request: Request) -> JSONResponse:
    """GET /v1/models: the models the key may use, with the engine that serves each."""
    rt = runtime_of(request)
    key = await rt.authenticate(request)
    data = [
        {
            "id": spec.id,
            "object": "model",
            "created": 0,
            "owned_by": "imagegate",
            "engine": rt.engines[spec.id].name,
            "description": spec.description,
        }
        for spec in rt.catalog
        if (key.models is None or spec.id in key.models) and spec.id in rt.engines
    ]
    return JSONResponse({"object": "list", "data": data})


def callback_renderer(
    catalog: Catalog, links: ResultLinks
) -> Callable[[TaskView, Outcome | None], Awaitable[dict[str, Any]]]:
    """The seed 003 callback body for a finished task: its sync response under `data`, or its error."""

    async def body(task: TaskView, outcome: Outcome | None) -> dict[str, Any]:
        head: dict[str, Any] = {"task_id": task.id, "trace_id": task.trace_id}
        if outcome is not None:
            url_for = links.at((task.base_url or "").rstrip("/"))
            prompt = str(task.request.get("prompt", ""))
            return {"success": True, **head, "data": render(outcome, url_for, catalog.get(task.model), prompt)}
        if task.state == "fail":
            return {"success": False, **head, "error": {"code": task.error_code, "message": task.error_message}}
        return {"success": None, **head}

    return body


async def get_task(request: Request, task_id: str) -> Response:
    """GET .../images/tasks/{task_id}: the callback body of a task (with `status`), for polling."""
    rt = runtime_of(request)
    key = await rt.authenticate(request)
    task = await rt.tasks.get_task(key.id, task_id)
    body = await callback_renderer(rt.catalog, rt.links)(task, await rt.tasks.outcome(task))
    return json_response({**body, "status": task.state})


def router(prefixes: tuple[str, ...], *, seed003_service: bool) -> APIRouter:
    """The dialect's routes under each of `prefixes`: OpenAI's service (`/v1`) or seed 003's."""
    api = APIRouter()
    for prefix in prefixes:
        images_edits, images_generations = _image_routes(seed003_service)
        shown = not seed003_service
        for path, endpoint in (("images/edits", images_edits), ("images/generations", images_generations)):
            api.add_api_route(
                f"{prefix}/{path}",
                endpoint,
                methods=["POST"],
                include_in_schema=shown,
                responses=openapi.responses(openapi.OPENAI_ERROR, openapi.IMAGE_STATUSES, stream=True),
                openapi_extra={
                    **openapi.body(json=openapi.IMAGES_JSON, form=openapi.IMAGES_FORM),
                    "parameters": openapi.query(openapi.DRY_RUN),
                },
            )
        reads = openapi.responses(openapi.OPENAI_ERROR, openapi.READ_STATUSES)
        api.add_api_route(f"{prefix}/models", list_models, methods=["GET"], include_in_schema=shown, responses=reads)
        api.add_api_route(
            f"{prefix}/images/tasks/{{task_id}}", get_task, methods=["GET"], include_in_schema=shown, responses=reads
        )
    return api
