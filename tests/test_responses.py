"""JSON answers whose base64 images are encoded as they are sent: the same bytes as one serialised body."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

import orjson
import pybase64

from imagegate.responses import B64_PIECE, Base64Bytes, json_response


async def sent(body: object) -> tuple[dict[str, str], list[bytes]]:
    """The headers and body messages `json_response(body)` sends."""
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    await json_response(body, headers={"x-imagegate-task": "t1"})({"type": "http"}, receive, send)
    start, *bodies = messages
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert [m.get("more_body", False) for m in bodies] == [True] * (len(bodies) - 1) + [False]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return headers, [m["body"] for m in bodies]


async def test_base64_values_are_sent_in_pieces_that_make_the_whole_body() -> None:
    big, small = os.urandom(2 * B64_PIECE + 7), os.urandom(10)
    body = {
        "data": [{"b64_json": Base64Bytes(big), "n": 1}, {"b64_json": Base64Bytes(small, "data:image/png;base64,")}],
        "prompt": '图1 \ue000 "quoted"',
    }
    headers, pieces = await sent(body)
    inline = {
        "data": [
            {"b64_json": pybase64.b64encode(big).decode(), "n": 1},
            {"b64_json": "data:image/png;base64," + pybase64.b64encode(small).decode()},
        ],
        "prompt": '图1 \ue000 "quoted"',
    }
    whole = b"".join(pieces)
    assert whole == orjson.dumps(inline)
    assert headers["content-length"] == str(len(whole))
    assert headers["content-type"] == "application/json" and headers["x-imagegate-task"] == "t1"
    assert max(map(len, pieces)) <= 4 * B64_PIECE // 3
    assert Base64Bytes(small, "p,").text() == "p," + pybase64.b64encode(small).decode()


async def test_a_body_without_base64_values_is_one_message() -> None:
    headers, pieces = await sent({"a": [1, "b"]})
    assert pieces == [orjson.dumps({"a": [1, "b"]})]
    assert headers["content-length"] == str(len(pieces[0]))


async def test_an_empty_image_is_an_empty_string() -> None:
    _, pieces = await sent({"b64_json": Base64Bytes(b"")})
    assert b"".join(pieces) == b'{"b64_json":""}'


async def test_a_providers_base64_is_sent_as_it_came_and_counted_in_the_length() -> None:
    data = os.urandom(3 * B64_PIECE)
    encoded = memoryview(pybase64.b64encode(data))
    headers, pieces = await sent({"data": [{"b64_json": Base64Bytes(data, "", encoded)}]})
    whole = b"".join(pieces)
    assert whole == orjson.dumps({"data": [{"b64_json": bytes(encoded).decode()}]})
    assert headers["content-length"] == str(len(whole))
    assert any(isinstance(piece, memoryview) and piece.obj is encoded.obj for piece in pieces), "not encoded again"
    assert Base64Bytes(data, "p,", encoded).text() == "p," + bytes(encoded).decode()
