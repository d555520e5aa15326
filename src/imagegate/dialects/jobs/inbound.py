"""The task-jobs dialect (seed 002, SPEC §2.3): `POST /api/v1/jobs/createTask`, `GET .../recordInfo`.

Always asynchronous: createTask records a task and answers its id; the runner makes the images;
recordInfo (and the optional `callBackUrl`, which receives the same body) reports it. Errors answer
an HTTP status equal to the body's `code`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from imagegate import openapi
from imagegate.asgi import Scope
from imagegate.core.catalog import Catalog
from imagegate.core.request import Delivery, EditRequest, OutputFormat, Quality
from imagegate.core.sizing import TIERS
from imagegate.core.validation import ratio_size
from imagegate.errors import BadRequest, ImagegateError, MissingParameter
from imagegate.responses import json_response
from imagegate.runtime import runtime_of
from imagegate.service.records import Outcome, ResultLinks, TaskView
from imagegate.service.tasks import Origin
from imagegate.wire.fields import as_enum, as_str, dry_run, json_object, ref_from_text

ERROR_SHAPE: openapi.Schema = {
    "type": "object",
    "required": ["code", "msg", "data"],
    "properties": {"code": {"type": "integer"}, "msg": openapi.STRING, "data": {"type": "null"}},
}
NAME = "jobs"
"""The dialect's name in the registry, and on the tasks it records (their callback body is its)."""
PREFIX = "/api/v1/jobs"
MAX_PROMPT_CHARS = 20_000
IMAGE_FIELDS = ("image_urls", "input_urls", "image_input")
_STATUSES = {400, 401, 402, 404, 409, 422, 429, 500}
_MALFORMED = {"missing_required_parameter", "invalid_json", "untrusted_host"}


def status_of(exc: ImagegateError) -> int:
    """The HTTP status (= body `code`): 400 for a malformed request, 422 for a value that fails validation."""
    if exc.status == 400:
        return 400 if exc.code in _MALFORMED else 422
    if exc.status in _STATUSES:
        return exc.status
    return 400 if exc.status < 500 else 500


def error_response(exc: ImagegateError, scope: Scope) -> Response:
    """The dialect's one error shape: `{"code", "msg", "data": null}` with the same HTTP status."""
    status = status_of(exc)
    body = {"code": status, "msg": exc.message, "data": None}
    return json_response(body, status, exc.headers)


def _ok(data: dict[str, Any]) -> Response:
    return json_response({"code": 200, "msg": "success", "data": data})


def _strings(value: object, param: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest(f"Invalid '{param}': expected an array of image URLs.", param=param)


def parse_create(body: dict[str, Any], catalog: Catalog) -> tuple[EditRequest, str]:
    """The canonical request and kind (`edit`/`generate`) of a createTask body."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise MissingParameter("Missing required parameter: 'model'.", param="model")
    spec = catalog.get(model.strip())
    data = body.get("input")
    if not isinstance(data, dict):
        raise MissingParameter("Missing required parameter: 'input' (an object).", param="input")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise MissingParameter("Missing required parameter: 'input.prompt'.", param="input.prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(
            f"Invalid 'input.prompt': {len(prompt)} characters; the maximum is {MAX_PROMPT_CHARS}.",
            param="input.prompt",
        )
    urls: list[str] = []
    for name in IMAGE_FIELDS:
        for url in _strings(data.get(name), f"input.{name}"):
            if url.strip() and url.strip() not in urls:
                urls.append(url.strip())
    if spec.needs_image and not urls:
        raise MissingParameter(
            "Missing required parameter: 'input.image_urls' (at least one URL).", param="input.image_urls"
        )
    resolution = as_str(data.get("resolution") or "1K", "input.resolution").strip().upper()
    if resolution not in TIERS:
        raise BadRequest(
            f"Invalid 'input.resolution': '{resolution}'; use one of {', '.join(TIERS)}.", param="input.resolution"
        )
    ratio = as_str(data.get("aspect_ratio") or "auto", "input.aspect_ratio")
    req = EditRequest(
        prompt=prompt,
        model=spec.id,
        images=[ref_from_text(url, f"input.image_urls[{i}]") for i, url in enumerate(urls)],
        size=ratio_size(spec, ratio, resolution, param="input.aspect_ratio"),
        tier=resolution,
        delivery=Delivery.URL,
    )
    if data.get("quality") is not None:
        req.quality = as_enum(Quality, data["quality"], "input.quality")
    if data.get("output_format") is not None:
        text = as_str(data["output_format"], "input.output_format").strip().lower()
        req.output_format = as_enum(OutputFormat, "jpeg" if text == "jpg" else text, "input.output_format")
    known = {"prompt", "resolution", "aspect_ratio", "quality", "output_format", *IMAGE_FIELDS}
    req.extra = {name: value for name, value in data.items() if name not in known}
    callback = body.get("callBackUrl")
    if callback is not None and as_str(callback, "callBackUrl").strip():
        req.callback_url = as_str(callback, "callBackUrl").strip()
    return req, "edit" if urls else "generate"


def record_info(task: TaskView, outcome: Outcome | None, links: ResultLinks) -> dict[str, Any]:
    """recordInfo's `data` for any task, whichever dialect created it."""
    base = (task.base_url or "").rstrip("/")
    result = None
    if outcome is not None:
        url_for = links.at(base)
        urls = [url_for(image.file_id, outcome.output_format) for image in outcome.images]
        result = orjson.dumps({"resultUrls": urls}).decode()
    finished = task.state in ("success", "fail")
    param = task.wire if task.wire is not None else {"model": task.model, "input": task.request}
    return {
        "taskId": task.id,
        "model": task.model,
        "state": task.state if finished else "waiting",
        "param": orjson.dumps(param).decode(),
        "resultJson": result,
        "failCode": task.error_code if task.state == "fail" else None,
        "failMsg": task.error_message if task.state == "fail" else None,
        "costTime": (task.finished_at - task.created_at) if finished and task.finished_at else None,
        "completeTime": task.finished_at if finished else None,
        "createTime": task.created_at,
    }


def callback_renderer(links: ResultLinks) -> Callable[[TaskView, Outcome | None], Awaitable[dict[str, Any]]]:
    """What `callBackUrl` receives: the recordInfo answer of the finished task."""

    async def body(task: TaskView, outcome: Outcome | None) -> dict[str, Any]:
        return {"code": 200, "msg": "success", "data": record_info(task, outcome, links)}

    return body


async def create_task(request: Request) -> Response:
    """POST /api/v1/jobs/createTask"""
    rt = runtime_of(request)
    key = await rt.admit(request)
    body = json_object(await request.body(), code="invalid_json")
    req, kind = parse_create(body, rt.catalog)
    if dry_run(request.query_params):
        return _ok(await rt.tasks.quote(key, req))
    origin = Origin(NAME, kind, trace_id=request.state.request_id, base_url=rt.public_base(request), wire=body)
    task_id = await rt.tasks.submit(key, req, origin)
    return _ok({"taskId": task_id})


async def get_record_info(request: Request) -> Response:
    """GET /api/v1/jobs/recordInfo?taskId=..."""
    rt = runtime_of(request)
    key = await rt.authenticate(request)
    task_id = request.query_params.get("taskId", "").strip()
    if not task_id:
        raise MissingParameter("Missing required query parameter: 'taskId'.", param="taskId")
    task = await rt.tasks.get_task(key.id, task_id)
    return _ok(record_info(task, await rt.tasks.outcome(task), rt.links))


def router() -> APIRouter:
    api = APIRouter()
    api.add_api_route(
        f"{PREFIX}/createTask",
        create_task,
        methods=["POST"],
        responses=openapi.responses(ERROR_SHAPE, openapi.JOBS_STATUSES),
        openapi_extra={**openapi.body(json=openapi.JOBS_JSON), "parameters": openapi.query(openapi.DRY_RUN)},
    )
    api.add_api_route(
        f"{PREFIX}/recordInfo",
        get_record_info,
        methods=["GET"],
        responses=openapi.responses(ERROR_SHAPE, openapi.READ_STATUSES),
        openapi_extra={"parameters": openapi.query(("taskId", {"type": "string"}, "The task to report."))},
    )
    return api
