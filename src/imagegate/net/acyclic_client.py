"""An httpx client whose responses are freed as soon as nothing refers to them.

httpx's `send` wraps a response's stream in a `BoundAsyncStream` that refers back to the response, so
every response sits in a reference cycle: it and its body (1.2 MB for one image a provider answered)
live on until Python's cyclic collector runs, which under load is after tens of such bodies. Here the
wrapper is let go of once the body has been read and closed.

It also bounds what one answer may hold: a provider that answers without end (or a small compressed
body that inflates without end) is cut off with `AnswerTooLarge` instead of filling the memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx


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


class AcyclicClient(httpx.AsyncClient):
    """httpx.AsyncClient whose responses hold no reference back to themselves once their body is read
    (at once when not streamed, at `aclose` when streamed), and whose answers' bodies, as sent and as
    decoded, may be at most `max_answer_bytes` (None: any length) or raise AnswerTooLarge."""

    def __init__(self, *args: Any, max_answer_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_answer_bytes = max_answer_bytes

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        response = await super().send(request, stream=True, **kwargs)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _LetGoOnClose(response.stream, self.max_answer_bytes)
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
