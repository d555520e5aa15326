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
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._inner is None:
            raise httpx.StreamClosed()
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if self.limit is not None and size > self.limit:
                raise AnswerTooLarge(f"the answer is longer than {self.limit:,} bytes")
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
        inflater: Any = None
        size, head = 0, b""
        async for chunk in self._inner:
            if inflater is not None and inflater.eof:  # bytes after the end: read (raw cap), not fed to zlib,
                continue  # which would append each to unused_data (quadratic time, 2x the limit in memory)
            if inflater is None:  # its first two bytes tell a zlib stream from raw deflate
                head += chunk
                if len(head) < 2:
                    continue
                inflater = zlib.decompressobj(self._wbits(head))
                chunk, head = head, b""
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
                if inflater.eof or (not data and len(out) < _PIECE):
                    break
        if inflater is None and head:
            raise httpx.DecodingError(f"the answer is not valid {self._encoding}: it is one byte long")

    def _wbits(self, head: bytes) -> int:
        """The window bits for a stream beginning with `head`: `deflate` may be zlib's format or, as some
        servers send it, raw deflate."""
        zlib_header = head[0] & 0x0F == 8 and int.from_bytes(head[:2], "big") % 31 == 0
        return -zlib.MAX_WBITS if self._encoding == "deflate" and not zlib_header else _WBITS[self._encoding]

    async def aclose(self) -> None:
        await self._inner.aclose()


_NOT_INFLATED = {"br", "zstd", "compress", "x-compress"}
"""Compressions this client does not inflate (values it does not know at all are ignored, as by httpx)."""


MAX_CODINGS = 3
"""The most codings one answer may stack (`gzip, gzip`), each inflated within the limit."""


class _Withheld(httpx.AsyncByteStream):
    """No body in place of `inner`'s (which is closed with it): empty, or DecodingError(`refusal`) for
    whoever reads it, so that a status and headers may still be used without the body."""

    def __init__(self, inner: httpx.AsyncByteStream, refusal: str | None = None) -> None:
        self._inner = inner
        self._refusal = refusal

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._refusal is not None:
            raise httpx.DecodingError(self._refusal)
        return
        yield b""

    async def aclose(self) -> None:
        await self._inner.aclose()


def _inflated_here(response: httpx.Response, limit: int) -> None:
    """Take over the inflation of `response`'s body from httpx, each coding bounded by `limit`. A body
    in a coding of _NOT_INFLATED (or more than MAX_CODINGS) raises DecodingError when it is read; an
    error's is dropped, so that its status and headers still say what happened."""
    encodings = [
        name.strip().lower()
        for name in response.headers.get("content-encoding", "").split(",")
        if name.strip().lower() in _WBITS or name.strip().lower() in _NOT_INFLATED
    ]
    if not encodings:
        return
    del response.headers["content-encoding"]
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    if len(encodings) <= MAX_CODINGS and all(name in _WBITS for name in encodings):
        slack = limit + limit // 1000 + 1024  # deflate may make a stored image a little larger
        if isinstance(stream, _LetGoOnClose):
            stream.limit = slack
        for depth, name in enumerate(reversed(encodings), 1):  # the last coding applied is the first undone
            stream = _Inflated(stream, name, limit if depth == len(encodings) else slack)
        response.stream = stream
    elif response.status_code >= 300:  # an error's status and headers say what happened
        response.stream = _Withheld(stream)
    else:  # a webhook's delivery still reads its status
        response.stream = _Withheld(
            stream, f"the answer is encoded as {', '.join(encodings)!r}, not {ACCEPTED_ENCODINGS}"
        )


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
            _inflated_here(response, self.max_answer_bytes)
        if not stream:
            try:
                await response.aread()  # bounded by the streams above, as sent and as inflated
            finally:
                await response.aclose()
        return response
