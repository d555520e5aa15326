"""The envelope dialect (seed 000, SPEC §2.2): `POST /v1/images/edit` (singular), JSON in,
`{"code": 0, "message": "ok", "data": {"images": [{"url"}]}}` out, and `{"code": <HTTP status>,
"message", "data": null}` with that status on failure. Sizes may be aspect ratios."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from imagegate import openapi
from imagegate.asgi import Scope
from imagegate.core.request import Delivery, EditRequest
from imagegate.core.validation import ratio_size
from imagegate.errors import ImagegateError, MissingParameter
from imagegate.responses import json_response
from imagegate.runtime import runtime_of
from imagegate.service.tasks import Origin
from imagegate.wire.fields import dry_run, json_object
from imagegate.wire.image_request import apply_fields, request_from_json

ERROR_SHAPE: openapi.Schema = {
    "type": "object",
    "required": ["code", "message", "data"],
    "properties": {"code": {"type": "integer"}, "message": openapi.STRING, "data": {"type": "null"}},
}
NAME = "envelope"
"""The dialect's name in the registry, and on the tasks it records."""
PATH = "/v1/images/edit"


def error_response(exc: ImagegateError, scope: Scope) -> Response:
    """The dialect's one error shape."""
    body = {"code": exc.status, "message": exc.message, "data": None}
    return json_response(body, exc.status, exc.headers)


def _ok(data: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """The dialect's success envelope around `data`."""
    return json_response({"code": 0, "message": "ok", "data": data}, headers=headers)


async def edit(request: Request) -> Response:
    """POST /v1/images/edit"""
    rt = runtime_of(request)
    key = await rt.admit(request)
    body = json_object(await request.body(), hint=" Send JSON.")
    size = body.pop("size", None)
    req: EditRequest = request_from_json(body, rt.catalog.basic_fields_only)
    if not req.images:
        raise MissingParameter("Missing required parameter: 'image'.", param="image")
    if isinstance(size, str) and ":" in size:
        req.size = ratio_size(rt.catalog.get(req.model), size)
    elif size is not None:
        apply_fields(req, {"size": size})
    req.delivery = Delivery.URL
    req.callback_url = None
    if dry_run(request.query_params):
        return _ok(await rt.tasks.quote(key, req))
    base = rt.public_base(request)
    outcome = await rt.tasks.run(key, req, Origin(NAME, "edit", request.state.request_id, base))
    url_for = rt.links.at(base)
    images = [
        {"url": url_for(image.file_id, outcome.output_format), "revised_prompt": image.revised_prompt}
        for image in outcome.images
    ]
    data = {
        "images": images,
        "size": str(outcome.size),
        "quality": outcome.quality.value,
        "output_format": outcome.output_format.value,
        "task_id": outcome.task_id,
    }
    headers = {"x-imagegate-engine": outcome.engine, "x-imagegate-task": outcome.task_id}
    return _ok(data, headers)


def router() -> APIRouter:
    api = APIRouter()
    api.add_api_route(
        PATH,
        edit,
        methods=["POST"],
        responses=openapi.responses(ERROR_SHAPE, openapi.IMAGE_STATUSES),
        openapi_extra={**openapi.body(json=openapi.ENVELOPE_JSON), "parameters": openapi.query(openapi.DRY_RUN)},
    )
    return api
