"""An ImagesResponse read without turning its base64 images into Python strings.

A provider's answer is mostly its `b64_json` values (1.2 MB for one 1024² PNG). Parsed whole, each
becomes a new 1.2 MB string only to be decoded and dropped, and encoded again for our own answer.
Here each `"data": [{"b64_json": "…"}]` value stays a view into the answer's bytes: decoded from
there, and sent from there to a client that asked for the same base64.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

LIFT_ABOVE = 64 * 1024
"""Answers at most this long are parsed whole: there is nothing worth keeping out of strings."""

_KEY = b'"b64_json"'
_SPACE = b" \t\r\n"


def _value_span(body: bytes, key_at: int) -> tuple[int, int] | None:
    """Where the string after the key at `key_at` starts and ends (quotes excluded), when it is a plain
    string (no escapes, which base64 never needs); None otherwise."""
    at = key_at + len(_KEY)
    while at < len(body) and body[at] in _SPACE:
        at += 1
    if body[at : at + 1] != b":":
        return None
    at += 1
    while at < len(body) and body[at] in _SPACE:
        at += 1
    if body[at : at + 1] != b'"':
        return None
    end = body.find(b'"', at + 1)
    if end < 0 or body.find(b"\\", at + 1, end) >= 0:
        return None
    return at + 1, end


def loads_lifting_b64(body: bytes) -> tuple[Any, dict[str, memoryview]]:
    """`body` parsed as JSON, with each `data[i].b64_json` string replaced by a token that the returned
    dict maps to a view of the string's bytes in `body`.

    When `body` is short, or any `"b64_json"` in it is not exactly such a value (escaped, elsewhere in
    the document), it is parsed whole and the dict is empty. Raises orjson.JSONDecodeError when `body`
    is not JSON."""
    if len(body) <= LIFT_ABOVE or _KEY not in body:
        return orjson.loads(body), {}
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    spans: dict[str, memoryview] = {}
    view = memoryview(body)
    done = 0
    found = body.find(_KEY)
    while found >= 0:
        span = _value_span(body, found)
        if span is None:
            return orjson.loads(body), {}
        start, end = span
        token = f"\ue000{nonce}:{len(spans)}"
        pieces += [body[done:start], token.encode()]
        spans[token] = view[start:end]
        done = end
        found = body.find(_KEY, end + 1)
    pieces.append(body[done:])
    try:
        document = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError:
        return orjson.loads(body), {}
    items = document.get("data") if isinstance(document, dict) else None
    placed = [item.get("b64_json") for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    if sorted(value for value in placed if isinstance(value, str) and value in spans) != sorted(spans):
        return orjson.loads(body), {}
    return document, spans
