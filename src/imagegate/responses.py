"""The one way handlers answer JSON: orjson-encoded (exact decimals arrive as strings)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import anyio
import orjson
import pybase64
from fastapi.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

B64_PIECE = 3 * 2**18
"""Bytes encoded per piece sent (a multiple of 3, so the pieces' base64 concatenates to the whole's)."""


class Base64Bytes:
    """Bytes that a JSON body carries as one base64 string, after `prefix` (e.g. a `data:` URL's head).

    `json_response` encodes them piece by piece as the answer is sent, so an image is never held as its
    bytes, its whole base64 string and that string again inside the serialised body. (Not a dataclass:
    orjson would serialise one as an object.)

    `encoded`, when given, is `data`'s base64 already (a provider's, passed through): it is sent as it
    is, never encoded again."""

    __slots__ = ("data", "encoded", "prefix")

    def __init__(self, data: bytes, prefix: str = "", encoded: memoryview | None = None) -> None:
        self.data = data
        self.prefix = prefix
        self.encoded = encoded

    def text(self) -> str:
        """The whole string, for a body that is stored or signed rather than sent."""
        encoded = self.encoded if self.encoded is not None else pybase64.b64encode(self.data)
        return self.prefix + str(encoded, "ascii")

    def __len__(self) -> int:
        """The length of the base64 (without the prefix)."""
        return len(self.encoded) if self.encoded is not None else 4 * -(-len(self.data) // 3)

    def pieces(self) -> Iterator[bytes | memoryview]:
        """The base64, in pieces of about 1 MB: views of `encoded`, or `data` encoded piece by piece."""
        if self.encoded is not None:
            step = 4 * B64_PIECE // 3
            for offset in range(0, len(self.encoded), step):
                yield self.encoded[offset : offset + step]
            return
        data = memoryview(self.data)
        for offset in range(0, len(data), B64_PIECE):
            yield pybase64.b64encode(data[offset : offset + B64_PIECE])


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """`body` as an `application/json` response with `status` and `headers`; `Base64Bytes` values in it
    are sent as their base64 strings, encoded as the response goes out."""
    blobs: list[Base64Bytes] = []
    mark = f"\ue000{secrets.token_hex(8)}\ue000"

    def placeholder(value: object) -> str:
        if not isinstance(value, Base64Bytes):
            raise TypeError
        blobs.append(value)
        return f"{value.prefix}{mark}"

    encoded = orjson.dumps(body, default=placeholder)
    if not blobs:
        return Response(encoded, status_code=status, media_type="application/json", headers=headers)
    return _PiecedJson(encoded.split(mark.encode()), blobs, status, headers)


class _PiecedJson(Response):
    """A JSON body in pieces: serialised text between the base64 values, which are encoded as sent."""

    media_type = "application/json"

    def __init__(
        self, texts: list[bytes], blobs: list[Base64Bytes], status: int, headers: Mapping[str, str] | None
    ) -> None:
        self._texts = texts
        self._blobs = blobs
        length = sum(map(len, texts)) + sum(map(len, blobs))
        super().__init__(None, status, {**(headers or {}), "content-length": str(length)})

    def _pieces(self) -> Iterator[bytes | memoryview]:
        """All but the last text. (Views are sent as they are: the servers we run under, uvicorn's
        httptools and h11 protocols, write any bytes-like body.)"""
        for text, blob in zip(self._texts, self._blobs, strict=False):
            yield text
            yield from blob.pieces()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for piece in self._pieces():
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": self._texts[-1], "more_body": False})
        if self.background is not None:
            await self.background()


_PATHSEND = "http.response.pathsend"


class OpenedFileResponse(FileResponse):
    """A FileResponse sent from `file`, opened before the response was made (and closed after it):
    a file deleted meanwhile (a result the sweeper expires) is still sent whole, where FileResponse
    would open it again by path once its headers had gone out, and fail."""

    def __init__(self, file: BinaryIO, path: Path, media_type: str, headers: Mapping[str, str]) -> None:
        super().__init__(path, media_type=media_type, headers=headers, stat_result=os.fstat(file.fileno()))
        self._file = file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = {name: value for name, value in scope.get("extensions", {}).items() if name != _PATHSEND}
        try:  # a server offered `pathsend` would open the file again by its path: not offered here
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self._file.close()

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        self._file.seek(0)
        yield anyio.AsyncFile(self._file)
