"""An httpx client whose responses are freed as soon as nothing refers to them.

httpx's `send` wraps a response's stream in a `BoundAsyncStream` that refers back to the response, so
every response sits in a reference cycle: it and its body (1.2 MB for one image a provider answered)
live on until Python's cyclic collector runs, which under load is after tens of such bodies. Here the
wrapper is let go of once the body has been read and closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx


class _LetGoOnClose(httpx.AsyncByteStream):
    """`inner` until it is closed, then nothing (iterating a closed one raises httpx.StreamClosed)."""

    def __init__(self, inner: httpx.AsyncByteStream | None) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._inner is None:
            raise httpx.StreamClosed()
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.aclose()


class AcyclicClient(httpx.AsyncClient):
    """httpx.AsyncClient whose responses hold no reference back to themselves once their body is read
    (at once when not streamed, at `aclose` when streamed)."""

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        response = await super().send(request, stream=stream, **kwargs)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _LetGoOnClose(response.stream if stream else None)
        return response
