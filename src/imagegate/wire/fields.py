"""Coercion of wire values (form strings or JSON values) into canonical ones, shared by dialects.
Every failure is a BadRequest naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from imagegate.core.request import ImageRef
from imagegate.errors import BadRequest, excerpt

E = TypeVar("E", bound=StrEnum)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


MAX_JSON_DEPTH = 250
"""The deepest nesting a request's JSON may have: it is stored with its task, at most STORED_UNDER
levels deep, and orjson writes 254 levels."""
STORED_UNDER = 254 - MAX_JSON_DEPTH


def json_object(raw: bytes, *, hint: str = "", code: str | None = None) -> dict[str, Any]:
    """A request body that must be a JSON object, nested at most MAX_JSON_DEPTH deep; otherwise
    BadRequest (with `code`, and `hint` appended)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request.{hint}", code=code) from exc
    if not isinstance(body, dict):
        raise BadRequest("The JSON body must be an object.", code=code)
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:  # else it cannot nest that deep
        stored: object = body
        for _ in range(STORED_UNDER):
            stored = [stored]
        try:
            orjson.dumps(stored)
        except TypeError as exc:
            raise BadRequest(f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.", code=code) from exc
    return body


def as_str(value: object, param: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise BadRequest(f"Invalid type for '{param}': expected a string.", param=param)


def as_int(value: object, param: str) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"Invalid type for '{param}': expected an integer.", param=param)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise BadRequest(f"Invalid type for '{param}': expected an integer, got {excerpt(value)}.", param=param)


def as_bool(value: object, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise BadRequest(f"Invalid type for '{param}': expected a boolean, got {excerpt(value)}.", param=param)


def as_enum(kind: type[E], value: object, param: str) -> E:
    text = as_str(value, param).strip().lower()
    try:
        return kind(text)
    except ValueError:
        allowed = ", ".join(f"'{member.value}'" for member in kind)
        raise BadRequest(
            f"Invalid value for '{param}': '{excerpt(text)}'. Supported values are: {allowed}.", param=param
        ) from None


def ref_from_text(text: str, param: str) -> ImageRef:
    """An image given as text: an http(s) URL, a data URL, or raw base64."""
    stripped = text.strip()
    if not stripped:
        raise BadRequest(f"Invalid '{param}': empty image reference.", param=param)
    if stripped.lower().startswith(("http://", "https://")):
        return ImageRef(param=param, url=stripped)
    return ImageRef(param=param, inline=stripped)


def ref_from_json(value: object, param: str) -> ImageRef:
    """An image given in JSON: a string, or `{"image_url": ...}` (`{"url": ...}` too)."""
    if isinstance(value, str):
        return ref_from_text(value, param)
    if isinstance(value, dict):
        inner = value.get("image_url", value.get("url"))
        if isinstance(inner, dict):
            inner = inner.get("url")
        if isinstance(inner, str):
            return ref_from_text(inner, param)
        if "file_id" in value:
            raise BadRequest(
                f"Invalid '{param}': file_id references are not supported here; send the image itself, "
                "a URL or a data URL.",
                param=param,
            )
    raise BadRequest(f"Invalid '{param}': expected an image URL, data URL or base64 string.", param=param)


def dry_run(query: Mapping[str, str]) -> bool:
    """Whether the query string asks for a price quote (`?dry_run=true`) instead of a run."""
    value = query.get("dry_run")
    return value is not None and as_bool(value, "dry_run")
