"""Seed 003's service on its own prefixes (SPEC §2.1a): `/v1/openai/...` and `/v1/v1/...`.

Seed 003's clients reach it only there, so requests there get its service exactly while
`/v1/images/...` stays OpenAI's: `success`/`trace_id`/`elapsed` around OpenAI's body, `url` by default
for JSON requests and `b64_json` for multipart ones, one image (billed as one) for every model that
does not make several itself, and its own error codes. Both shapes are supersets of OpenAI's, so the
official SDK still reads them.
"""

from __future__ import annotations

from typing import Any

from imagegate.core.catalog import Catalog
from imagegate.core.request import Delivery, EditRequest
from imagegate.errors import ImagegateError

PREFIXES = ("/v1/openai", "/v1/v1")
CODES = {401: "invalid_token", 429: "too_many_requests", 500: "api_error"}
"""The error codes seed 003 names, by HTTP status; every other status keeps our precise code."""


def error_body(exc: ImagegateError, trace_id: str | None) -> dict[str, Any]:
    """`{"success": false, "error": {"code", "message", "type", "param"}, "trace_id"}`."""
    error = {"code": CODES.get(exc.status, exc.code), "message": exc.message, "type": exc.type, "param": exc.param}
    return {"success": False, "error": error, "trace_id": trace_id}


def adapt(req: EditRequest, catalog: Catalog, *, form: bool) -> None:
    """Apply seed 003's request rules to a parsed request: its default delivery (`b64_json` for a form
    body, `url` for JSON; an explicit `response_format` wins) and `n > 1` read as 1 for models that do
    not make several images per call themselves."""
    if req.delivery is None:
        req.delivery = Delivery.B64_JSON if form else Delivery.URL
    spec = catalog.find(req.model)
    if spec is not None and not spec.native_n:
        req.n = 1


def success_body(body: dict[str, Any], trace_id: str | None, elapsed_s: float) -> dict[str, Any]:
    """OpenAI's ImagesResponse `body` inside seed 003's: `success`, `task_id`, `trace_id`, `created`,
    `data`, `elapsed` (seconds) first, then OpenAI's other fields."""
    head = {
        "success": True,
        "task_id": body.get("task_id"),
        "trace_id": trace_id,
        "created": body["created"],
        "data": body["data"],
        "elapsed": round(elapsed_s, 3),
    }
    return {**head, **{name: value for name, value in body.items() if name not in head}}
