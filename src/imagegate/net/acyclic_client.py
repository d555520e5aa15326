"""An httpx client whose responses are freed as soon as nothing refers to them.

httpx's `send` wraps a response's stream in a `BoundAsyncStream` that refers back to the response, so
every response sits in a reference cycle: it and its body (1.2 MB for one image a provider answered)
live on until Python's cyclic collector runs, which under load is after tens of such bodies. Here the
wrapper is let go of once the body has been read and closed.

It also bounds what one answer may hold: a provider that answers without end (or a small compressed
body that inflates without end) is cut off with `AnswerTooLarge` instead of filling the memory. httpx
inflates each piece that arrives whole, so such a client inflates bodies itself, a bounded piece at a
time, and takes only the encodings it asks for (`ACCEPTED_ENCODINGS`).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

ACCEPTED_ENCODINGS = "gzip, deflate"
"""What a client with `max_answer_bytes` asks for and inflates (httpx would add br and zstd when their
packages are installed)."""
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
_PIECE = 1024 * 1024


class AnswerTooLarge(httpx.TransportError):
    """The answer's body, as sent or as decoded, passed the client's `max_answer_bytes`."""


class _LetGoOnClose(httpx.AsyncByteStream):
    """`inner` until it is closed, then nothing (iterating a closed one raises httpx.StreamClosed);
    AnswerTooLarge once more than `limit` bytes came from it."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int | None) -> None:
        self._inner: httpx.AsyncByteStream | None = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._inner is None:
            raise httpx.StreamClosed()
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if self._limit is not None and size > self._limit:
                raise AnswerTooLarge(f"the answer is longer than {self._limit:,} bytes")
            yield chunk

    async def aclose(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.aclose()


class _Inflated(httpx.AsyncByteStream):
    """`inner`, a body in `encoding` (a key of _WBITS), inflated at most _PIECE at a time; AnswerTooLarge
    once more than `limit` bytes came out of it."""

    def __init__(self, inner: httpx.AsyncByteStream, encoding: str, limit: int) -> None:
        self._inner = inner
        self._encoding = encoding
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        inflater = zlib.decompressobj(_WBITS[self._encoding])
        size, first = 0, True
        async for chunk in self._inner:
            if (
                first
                and chunk
                and self._encoding == "deflate"
                and (chunk[0] & 0x0F != 8 or int.from_bytes(chunk[:2]) % 31)
            ):
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # a raw deflate stream, as some servers send
            first = False
            data = chunk
            while True:
                try:
                    out = inflater.decompress(data, _PIECE)
                except zlib.error as exc:
                    raise httpx.DecodingError(f"the answer is not valid {self._encoding}: {exc}") from exc
                data = inflater.unconsumed_tail
                size += len(out)
                if size > self._limit:
                    raise AnswerTooLarge(f"the answer inflates to more than {self._limit:,} bytes")
                if out:
                    yield out
                if not data and len(out) < _PIECE:
                    break

    async def aclose(self) -> None:
        await self._inner.aclose()


def _inflated_here(response: httpx.Response, limit: int) -> None:
    """Take over the inflation of `response`'s body from httpx, bounded by `limit`; DecodingError for an
    encoding not in _WBITS, or several."""
    encodings = [
        name.strip().lower()
        for name in response.headers.get("content-encoding", "").split(",")
        if name.strip().lower() not in ("", "identity")
    ]
    if not encodings:
        return
    if len(encodings) > 1 or encodings[0] not in _WBITS:
        raise httpx.DecodingError(
            f"the answer is encoded as {', '.join(encodings)!r}, not one of {ACCEPTED_ENCODINGS}",
            request=response.request,
        )
    del response.headers["content-encoding"]
    assert isinstance(response.stream, httpx.AsyncByteStream)
    response.stream = _Inflated(response.stream, encodings[0], limit)


class AcyclicClient(httpx.AsyncClient):
    """httpx.AsyncClient whose responses hold no reference back to themselves once their body is read
    (at once when not streamed, at `aclose` when streamed), and whose answers' bodies, as sent and as
    decoded, may be at most `max_answer_bytes` (None: any length) or raise AnswerTooLarge."""

    def __init__(self, *args: Any, max_answer_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_answer_bytes = max_answer_bytes
        if max_answer_bytes is not None:
            self.headers["accept-encoding"] = ACCEPTED_ENCODINGS

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        response = await super().send(request, stream=True, **kwargs)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _LetGoOnClose(response.stream, self.max_answer_bytes)
        if self.max_answer_bytes is not None:
            try:
                _inflated_here(response, self.max_answer_bytes)
            except BaseException:
                await response.aclose()
                raise
        if not stream:
            try:
                await self._read(response)
            finally:
                await response.aclose()
        return response

    async def _read(self, response: httpx.Response) -> None:
        """`response.aread()`, stopped once the decoded body passes `max_answer_bytes`."""
        if self.max_answer_bytes is None:
            await response.aread()
            return
        parts, size = [], 0
        async for part in response.aiter_bytes():
            size += len(part)
            if size > self.max_answer_bytes:
                raise AnswerTooLarge(f"the answer decodes to more than {self.max_answer_bytes:,} bytes")
            parts.append(part)
        response._content = b"".join(parts)  # what aread() leaves: the body it read, for .content
