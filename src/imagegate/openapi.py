"""What `/openapi.json` says about each route: the request bodies it takes (JSON and multipart), its
query parameters, and every status it really answers, with each dialect's error shape.

Handlers read their bodies themselves (multipart streams, several wire spellings), so FastAPI cannot
infer these; they are written here once and attached where the routes are declared. A schema fuzzer
(tests/test_schema_fuzz.py) holds the server to them. Methods a path does not serve answer 405 with
an `Allow` header.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING = {"type": "string"}
_NULLABLE_INT = {"type": ["integer", "null"]}
OPENAI_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": STRING,
                "type": STRING,
                "param": {"type": ["string", "null"]},
                "code": STRING,
            },
        }
    },
}
"""OpenAI's error object: the shape of every route no other dialect owns."""
_REASONS = {
    200: "Success",
    201: "Created",
    307: "Redirect to a presigned object-store URL (result_urls = presigned)",
    400: "Malformed request or a value the model does not accept (`param` names it)",
    401: "Missing, unknown, revoked or expired API key",
    402: "The key's available credits are below the price",
    403: "The key may not do this (admin only, or a model it may not use)",
    404: "No such resource (or another key's)",
    408: "The request body stalled or arrived too slowly",
    409: "Too many active tasks, or the Idempotency-Key's first request still runs",
    413: "The request body is too large",
    422: "A value fails validation (task jobs), or an Idempotency-Key reused with another request",
    410: "The result file expired (`[storage] results_ttl`); its task keeps its record",
    429: "Requests per minute exceeded (`retry-after` says when to come back)",
    500: "Server error (no detail is given)",
    502: "Every upstream channel failed",
    503: "The file storage or the database failed (`storage_unavailable`, `database_unavailable`)",
    504: "Every upstream channel timed out",
}
IMAGE_STATUSES = (200, 400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504)
JOBS_STATUSES = (200, 400, 401, 402, 404, 409, 422, 429, 500)
READ_STATUSES = (200, 400, 401, 404, 500)
ADMIN_STATUSES = (200, 400, 401, 403, 404, 408, 413, 500)


def responses(
    error: Schema, statuses: tuple[int, ...], *, images: bool = False, stream: bool = False
) -> dict[int | str, Any]:
    """FastAPI `responses=` documenting `statuses`, errors in the `error` shape (its dialect's); a
    success is an image file with `images`, and JSON or (`stream=true`) server-sent events with `stream`."""
    documented: dict[int | str, Any] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": _REASONS.get(status, "")}
        if status >= 400:
            entry["content"] = {"application/json": {"schema": error}}
        elif status == 200 and images:
            entry["content"] = {f"image/{kind}": {} for kind in ("png", "jpeg", "webp")}
        elif status == 200 and stream:
            entry["content"] = {"application/json": {}, "text/event-stream": {}}
        documented[status] = entry
    return documented


def query(*parameters: tuple[str, Schema, str]) -> list[Schema]:
    """OpenAPI query parameters from (name, schema, description)."""
    return [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
        for name, schema, text in parameters
    ]


DRY_RUN = ("dry_run", {"type": "boolean"}, "Validate and price the request without running or charging it.")
LIMIT = ("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "How many rows, newest first.")
LEDGER_BEFORE = ("before", {"type": "integer"}, "Only rows older than this ledger row id.")

_IMAGE_REF = {"type": "string", "description": "An http(s) URL, a data URL or raw base64 of a png, jpeg or webp image."}
_COMMON_FIELDS: Schema = {
    "prompt": {"type": "string", "maxLength": 32000},
    "model": {"type": "string", "default": "gpt-image-2"},
    "n": {"type": "integer", "minimum": 1, "maximum": 10},
    "size": {"type": "string", "description": "auto or WIDTHxHEIGHT"},
    "quality": {"type": "string", "enum": ["low", "medium", "high", "auto", "xhigh", "max", "standard", "hd"]},
    "background": {"type": "string", "enum": ["transparent", "opaque", "auto"]},
    "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
    "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
    "response_format": {"type": "string", "enum": ["url", "b64_json"]},
    "stream": {"type": "boolean"},
    "partial_images": {"type": "integer", "minimum": 0, "maximum": 3},
    "callback_url": {"type": "string"},
    "user": {"type": "string"},
}
IMAGES_JSON: Schema = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        **_COMMON_FIELDS,
        "image": {"oneOf": [_IMAGE_REF, {"type": "array", "items": _IMAGE_REF, "maxItems": 16}]},
        "images": {
            "type": "array",
            "maxItems": 16,
            "items": {"oneOf": [_IMAGE_REF, {"type": "object", "properties": {"image_url": _IMAGE_REF}}]},
        },
        "mask": {"oneOf": [_IMAGE_REF, {"type": "object", "properties": {"image_url": _IMAGE_REF}}]},
    },
}
IMAGES_FORM: Schema = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        **{name: {"type": "string"} for name in _COMMON_FIELDS},
        "image[]": {"type": "array", "maxItems": 16, "items": {"type": "string", "format": "binary"}},
        "mask": {"type": "string", "format": "binary"},
    },
}
ENVELOPE_JSON: Schema = {
    "type": "object",
    "required": ["prompt", "image"],
    "properties": {
        "prompt": {"type": "string"},
        "image": {"oneOf": [_IMAGE_REF, {"type": "array", "items": _IMAGE_REF, "maxItems": 16}]},
        "model": {"type": "string"},
        "size": {"type": "string", "description": "An aspect ratio such as 4:3, or WIDTHxHEIGHT"},
        "quality": {"type": "string", "enum": ["low", "medium", "high"]},
        "n": {"type": "integer", "minimum": 1, "maximum": 10},
    },
}
JOBS_JSON: Schema = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "enum": ["gpt-image-2-image-to-image", "gpt-image-2-text-to-image"]},
        "callBackUrl": {"type": "string"},
        "input": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string", "maxLength": 20000},
                "image_urls": {"type": "array", "items": {"type": "string"}},
                "input_urls": {"type": "array", "items": {"type": "string"}},
                "image_input": {"type": "array", "items": {"type": "string"}},
                "aspect_ratio": {"type": "string"},
                "resolution": {"type": "string", "enum": ["1K", "2K", "4K"]},
                "quality": {"type": "string"},
                "output_format": {"type": "string"},
            },
        },
    },
}
_CREDITS = {"type": "string", "description": "Credits as a decimal string (6 places at most)"}
KEY_SETTINGS: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "rpm": _NULLABLE_INT,
        "max_active": _NULLABLE_INT,
        "max_images": _NULLABLE_INT,
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "expires_at": _NULLABLE_INT,
    },
}
NEW_KEY: Schema = {
    "type": "object",
    "properties": {**KEY_SETTINGS["properties"], "credits": _CREDITS, "admin": {"type": "boolean"}},
}
MOVE: Schema = {
    "type": "object",
    "required": ["amount"],
    "properties": {"amount": _CREDITS, "note": {"type": "string"}},
}
CALLBACK_JSON: Schema = {"type": "object", "description": "The provider's result, as it posts it"}


def body(*, json: Schema | None = None, form: Schema | None = None) -> dict[str, Any]:
    """`openapi_extra` declaring a required request body as JSON and/or multipart."""
    content: dict[str, Any] = {}
    if json is not None:
        content["application/json"] = {"schema": json}
    if form is not None:
        content["multipart/form-data"] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}
