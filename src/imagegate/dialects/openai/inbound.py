"""The OpenAI Images dialect (SPEC §2.1): `/v1/images/edits|generations` and aliases, `/v1/models`.

Parses multipart and JSON bodies into EditRequest, renders Outcome as OpenAI's (superset) response
or as SSE events, and owns the OpenAI error shape (`error_body`).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import anyio
import orjson
import pybase64
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import FormData, UploadFile

from imagegate import openapi
from imagegate.config import Limits
from imagegate.core.catalog import Catalog, ModelSpec
from imagegate.core.request import Background, Delivery, EditRequest, ImageRef, OutputFormat, Quality
from imagegate.core.validation import resolved_quality
from imagegate.dialects.fields import (
    as_bool,
    as_enum,
    as_int,
    as_str,
    dry_run,
    json_object,
    ref_from_json,
    ref_from_text,
)
from imagegate.dialects.forms import read_multipart
from imagegate.dialects.openai import seed003
from imagegate.errors import BadRequest, ImagegateError, MissingParameter
from imagegate.imaging import has_alpha
from imagegate.responses import json_response
from imagegate.runtime import Runtime, runtime_of
from imagegate.service.records import Outcome, ResultLinks, UrlFor
from imagegate.service.tasks import Origin, Prepared
from imagegate.stores.db import Task

PREFIXES = ("/v1", *seed003.PREFIXES)
_IMAGE_FIELD = re.compile(r"^image(\[\d*\])?$")
_NESTED = re.compile(r"^(\w+)\[(\w+)\]$")
_SCALARS = {
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "response_format",
    "stream",
    "partial_images",
    "callback_url",
    "user",
}


def error_body(exc: ImagegateError) -> dict[str, Any]:
    """OpenAI's error object; the official SDKs map the HTTP status and read `message`/`param`/`code`."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def apply_fields(req: EditRequest, values: dict[str, Any]) -> None:
    """Set the scalar fields named in `values` (wire spellings) on `req`; BadRequest names a bad one."""
    for name, value in values.items():
        if value is None:
            continue
        if name == "prompt":
            req.prompt = as_str(value, name)
        elif name == "model":
            req.model = as_str(value, name).strip()
        elif name == "n":
            req.n = as_int(value, name)
        elif name == "size":
            req.size = as_str(value, name).strip().lower() or "auto"
        elif name == "quality":
            req.quality = as_enum(Quality, value, name)
        elif name == "background":
            req.background = as_enum(Background, value, name)
        elif name == "output_format":
            text = as_str(value, name).strip().lower()
            req.output_format = as_enum(OutputFormat, "jpeg" if text == "jpg" else text, name)
        elif name == "output_compression":
            req.output_compression = as_int(value, name)
        elif name == "response_format":
            delivery = as_str(value, name).strip().lower()
            if delivery not in ("url", "b64_json"):
                raise BadRequest(
                    f"Invalid value for 'response_format': '{delivery}'. Supported values are: 'url', 'b64_json'.",
                    param="response_format",
                )
            req.delivery = Delivery(delivery)
        elif name == "stream":
            req.stream = as_bool(value, name)
        elif name == "partial_images":
            req.partial_images = as_int(value, name)
        elif name == "callback_url":
            req.callback_url = as_str(value, name)
        elif name == "user":
            req.user = as_str(value, name)


def _reject_aspect_ratio(values: dict[str, Any]) -> None:
    if "aspect_ratio" in values:
        raise BadRequest(
            "Unknown parameter 'aspect_ratio': this API sets shape and resolution through 'size' "
            "(for example 1536x1024 or auto).",
            param="size",
        )


BasicOnly = Callable[[str], bool]
"""Whether a model id honours only model, prompt and image (its other fields are ignored unparsed)."""


def _apply_scalars(req: EditRequest, scalars: dict[str, Any], basic_only: BasicOnly) -> None:
    model = scalars.get("model")
    if isinstance(model, str) and basic_only(model.strip()):
        # seed 003: its async callback works for these models like for any other
        scalars = {k: v for k, v in scalars.items() if k in ("model", "prompt", "callback_url")}
    apply_fields(req, scalars)


def _from_form(form: FormData, basic_only: BasicOnly) -> EditRequest:
    req = EditRequest(prompt="")
    scalars: dict[str, Any] = {}
    for name, value in form.multi_items():
        if _IMAGE_FIELD.match(name):
            param = f"image[{len(req.images)}]"
            req.images.append(_form_ref(value, param))
        elif name == "mask":
            req.mask = _form_ref(value, "mask")
        elif isinstance(value, UploadFile):
            req.extra[name] = f"<file {value.filename}>"
        elif name in _SCALARS:
            scalars[name] = value
        elif nested := _NESTED.match(name):
            req.extra.setdefault(nested.group(1), {})[nested.group(2)] = value
        else:
            req.extra[name] = value
    _reject_aspect_ratio(req.extra)
    _apply_scalars(req, scalars, basic_only)
    return req


def _form_ref(value: UploadFile | str, param: str) -> ImageRef:
    if isinstance(value, UploadFile):
        return ImageRef(param=param, upload=value.file, filename=value.filename)
    return ref_from_text(value, param)


def request_from_json(body: dict[str, Any], basic_only: BasicOnly) -> EditRequest:
    """The canonical request from an OpenAI-style JSON object (also used by the envelope dialect)."""
    _reject_aspect_ratio(body)
    req = EditRequest(prompt="")
    image = body.get("image")
    items: list[Any] = image if isinstance(image, list) else ([] if image is None else [image])
    images = body.get("images")
    if images is not None:
        if not isinstance(images, list):
            raise BadRequest("Invalid 'images': expected an array.", param="images")
        items += images
    req.images = [ref_from_json(item, f"image[{index}]") for index, item in enumerate(items)]
    if body.get("mask") is not None:
        req.mask = ref_from_json(body["mask"], "mask")
    _apply_scalars(req, {k: v for k, v in body.items() if k in _SCALARS}, basic_only)
    req.extra = {k: v for k, v in body.items() if k not in _SCALARS and k not in ("image", "images", "mask")}
    return req


async def parse_request(request: Request, limits: Limits, basic_only: BasicOnly) -> EditRequest:
    """The canonical request from a multipart or JSON body. Raises BadRequest for malformed bodies."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return _from_form(await read_multipart(request, limits), basic_only)
    if content_type.startswith("application/x-www-form-urlencoded"):
        return _from_form(await request.form(max_fields=limits.max_form_fields), basic_only)
    body = json_object(await request.body(), hint=" Send JSON or multipart/form-data.")
    return request_from_json(body, basic_only)


def _image_item(outcome: Outcome, index: int, url_for: UrlFor, spec: ModelSpec, prompt: str) -> dict[str, Any]:
    image = outcome.images[index]
    item: dict[str, Any] = {"revised_prompt": prompt if spec.echo_prompt else image.revised_prompt}
    if outcome.delivery is Delivery.URL:
        item["url"] = url_for(image.file_id, outcome.output_format)
    else:
        encoded = pybase64.b64encode(image.data or b"").decode("ascii")
        if spec.url_b64_as_data_url:
            encoded = f"data:{outcome.output_format.content_type};base64,{encoded}"
        item["b64_json"] = encoded
    return item


def render(outcome: Outcome, url_for: UrlFor, spec: ModelSpec, prompt: str) -> dict[str, Any]:
    """OpenAI's ImagesResponse with the resolved values (never `auto`) and our task id; a model that
    echoes the prompt (seed 003's adapter layer) answers `created` 0 and `revised_prompt` = `prompt`."""
    return {
        "created": 0 if spec.echo_prompt else outcome.created,
        "data": [_image_item(outcome, i, url_for, spec, prompt) for i in range(len(outcome.images))],
        "size": str(outcome.size),
        "quality": outcome.quality.value,
        "output_format": outcome.output_format.value,
        "background": outcome.background.value,
        "usage": outcome.usage,
        "task_id": outcome.task_id,
    }


def applied_header(outcome: Outcome) -> dict[str, str]:
    """`x-imagegate-applied`: what the engine did (its revised prompt, percent-encoded beyond ASCII),
    for models whose answer must echo the prompt instead."""
    if not outcome.images:
        return {}
    return {"x-imagegate-applied": quote(outcome.images[0].revised_prompt, safe=" !#$&'()*+,/:;=?@[]~")}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(rt: Runtime, prepared: Prepared, kind: str, request: Request) -> AsyncIterator[bytes]:
    """SSE events for one streamed request; the request's uploads are closed when it ends."""
    try:
        async for chunk in _events(rt, prepared, kind):
            yield chunk
    finally:
        await request.close()


async def _events(rt: Runtime, prepared: Prepared, kind: str) -> AsyncIterator[bytes]:
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
            "b64_json": pybase64.b64encode(data).decode("ascii"),
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
                await send.send(_sse("error", {"type": "error", **error_body(exc)}))
                return
            for image in outcome.images:
                payload = {
                    "type": f"{prefix}.completed",
                    "b64_json": pybase64.b64encode(image.data or b"").decode("ascii"),
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
        origin = Origin("openai", kind, trace_id=request.state.request_id, base_url=rt.public_base(request))
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
        body = render(outcome, rt.links.at(rt.public_base(request)), prepared.spec, req.prompt)
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
) -> Callable[[Task, Outcome | None], Awaitable[dict[str, Any]]]:
    """The seed 003 callback body for a finished task: its sync response under `data`, or its error."""

    async def body(task: Task, outcome: Outcome | None) -> dict[str, Any]:
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


def router() -> APIRouter:
    """The dialect's routes under every prefix clients use (`/v1`, `/v1/openai`, `/v1/v1`)."""
    api = APIRouter()
    for prefix in PREFIXES:
        images_edits, images_generations = _image_routes(prefix in seed003.PREFIXES)
        shown = prefix == "/v1"
        for path, endpoint in (("images/edits", images_edits), ("images/generations", images_generations)):
            api.add_api_route(
                f"{prefix}/{path}",
                endpoint,
                methods=["POST"],
                include_in_schema=shown,
                responses=openapi.responses("openai", openapi.IMAGE_STATUSES, stream=True),
                openapi_extra={
                    **openapi.body(json=openapi.IMAGES_JSON, form=openapi.IMAGES_FORM),
                    "parameters": openapi.query(openapi.DRY_RUN),
                },
            )
        reads = openapi.responses("openai", openapi.READ_STATUSES)
        api.add_api_route(f"{prefix}/models", list_models, methods=["GET"], include_in_schema=shown, responses=reads)
        api.add_api_route(
            f"{prefix}/images/tasks/{{task_id}}", get_task, methods=["GET"], include_in_schema=shown, responses=reads
        )
    return api


__all__ = ["error_body", "parse_request", "router"]
