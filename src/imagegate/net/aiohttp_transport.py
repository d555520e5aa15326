"""An httpx transport that moves the bytes through aiohttp.

The upstream clients keep httpx's API (requests, responses, `httpx.MockTransport` in tests); only the
network under them changes. aiohttp parses HTTP in C: relaying a 1 MB edit and its 1.2 MB answer
costs it about 2.5 ms of CPU against httpx's own transport's 5.5 ms (BENCHMARKS.md, issue 14).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx

READ_BUFFER = 1024 * 1024
"""How much of an answer aiohttp takes in before it stops reading the socket."""


def as_httpx_error(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """aiohttp's failure `exc` as the httpx error that names the same thing."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, TimeoutError):
        kind = httpx.PoolTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, aiohttp.ClientConnectionError):
        kind = httpx.ReadError
    else:
        kind = httpx.TransportError
    return kind(message, request=request)


@contextmanager
def httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise aiohttp's failures (and its timeouts) inside the block as httpx's."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise as_httpx_error(exc, request) from exc


class _Body(httpx.AsyncByteStream):
    """An aiohttp response's body as it arrives; closing it hands the connection back to the pool."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends each request through one aiohttp session, made on first use in the running event loop,
    with at most `max_connections` connections, each kept alive `keepalive_s` between requests.
    httpx's per-request timeouts apply (connect, read, and pool as the wait for a connection); no
    redirects are followed, no proxy is taken from the environment, bodies are not decompressed here
    (httpx does that). Failures are raised as httpx's own errors, so callers map one family."""

    def __init__(self, max_connections: int, keepalive_s: float = 5.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_s
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False, read_bufsize=READ_BUFFER
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open_session()
        body: bytes | httpx.AsyncByteStream | None
        try:
            body = request.content or None
        except httpx.RequestNotRead:  # a stream: sent as it is read, with the length its headers give
            assert isinstance(request.stream, httpx.AsyncByteStream)
            body = request.stream
        limits = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, connect=limits.get("pool"), sock_connect=limits.get("connect"), sock_read=limits.get("read")
        )
        with httpx_errors(request):
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("user-agent", "accept", "accept-encoding", "content-type"),
            )
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
