"""What every outbound dialect client shares: a pooled HTTP client, the translation of a provider's
non-2xx answers into our error tree, inputs as data URLs or published URLs, and b64 decoding.
(httpx's own failures are mapped once, by the upstream engine that calls every client.)"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, overload

import anyio
import httpx
import pybase64

from imagegate.config import ChannelSettings
from imagegate.core.job import Source
from imagegate.core.upstream import InputHost
from imagegate.core.validation import MAX_PROMPT_CHARS
from imagegate.errors import BadRequest, EngineError, ImagegateError
from imagegate.net.acyclic_client import AcyclicClient
from imagegate.net.aiohttp_transport import AiohttpTransport

CLIENT_FAULTS = {400, 413, 415, 422}
"""Statuses by which a provider rejects the request itself: passed to the client, never retried."""
RETRYABLE = {408, 409, 425, 429}


class Publications:
    """The inputs published for one attempt; `published` withdraws them all when the attempt ends."""

    def __init__(self, host: InputHost) -> None:
        self.host = host
        self.handles: list[str] = []

    async def url(self, source: Source) -> str:
        """A signed URL the provider may fetch `source`'s original bytes from."""
        data = await anyio.to_thread.run_sync(read_source, source)
        url, handle = await self.host.publish(data, source.format)
        self.handles.append(handle)
        return url


@asynccontextmanager
async def published(host: InputHost) -> AsyncIterator[Publications]:
    """Publications for one attempt, withdrawn on the way out (even when it is cancelled)."""
    publications = Publications(host)
    try:
        yield publications
    finally:
        with anyio.CancelScope(shield=True):
            for handle in publications.handles:
                await host.withdraw(handle)


def read_source(source: Source) -> bytes:
    """An input's original bytes (no re-encoding)."""
    with source.lock:
        source.fp.seek(0)
        return source.fp.read()


PIECE = 1024 * 1024
"""How much of an input a multipart body reads at a time."""


def _read_at(source: Source, offset: int, size: int) -> bytes:
    with source.lock:
        source.fp.seek(offset)
        return source.fp.read(size)


def _size_of(source: Source) -> int:
    with source.lock:
        return source.fp.seek(0, 2)


_FORM_ESCAPES = {chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B} | {'"': "%22", "\\": "\\\\"}
_FORM_ESCAPED = re.compile("|".join(re.escape(c) for c in _FORM_ESCAPES))


def _quoted(value: str) -> str:
    """A Content-Disposition parameter value as the HTML5 form encoding (and httpx) writes it."""
    return _FORM_ESCAPED.sub(lambda match: _FORM_ESCAPES[match.group(0)], value)


class MultipartBody(httpx.AsyncByteStream):
    """A multipart/form-data body of text `fields` and file `parts` ((field, filename, source)), its
    file parts read from their sources a piece at a time as it is sent: no copy of an input is held for
    the length of a provider's call, only the source itself. Iterable once per request it is given to;
    `headers` carry its exact length (so it is never sent chunked)."""

    def __init__(self, fields: dict[str, str], parts: list[tuple[str, str, Source]]) -> None:
        self.boundary = secrets.token_hex(16)
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for name, value in fields.items()
        )
        self._pieces: list[bytes | Source] = [head] if head else []
        for name, filename, source in parts:
            self._pieces.append(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"; '
                f'filename="{_quoted(filename)}"\r\nContent-Type: {source.format.content_type}\r\n\r\n'.encode()
            )
            self._pieces += [source, b"\r\n"]
        self._pieces.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(len(piece) if isinstance(piece, bytes) else _size_of(piece) for piece in self._pieces)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "content-type": f"multipart/form-data; boundary={self.boundary}",
            "content-length": str(self.length),
        }

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            offset = 0
            while chunk := await anyio.to_thread.run_sync(_read_at, piece, offset, PIECE):
                offset += len(chunk)
                yield chunk


def data_url(source: Source) -> str:
    """An input as a `data:` URL of its original bytes."""
    return f"data:{source.format.content_type};base64,{pybase64.b64encode(read_source(source)).decode('ascii')}"


DATA_URL_HEAD = 256
"""Where a `data:` URL's comma must be, at the latest (`data:image/png;base64,` is 22 characters)."""


@overload
def b64_payload(value: str) -> str: ...


@overload
def b64_payload(value: memoryview) -> memoryview: ...


def b64_payload(value: str | memoryview) -> str | memoryview:
    """A b64 image value without its `data:…;base64,` prefix, when it has one."""
    if isinstance(value, str):
        _, separated, payload = value.partition(",")
        return payload if value.startswith("data:") and separated else value
    if bytes(value[:5]) != b"data:":
        return value
    comma = bytes(value[:DATA_URL_HEAD]).find(b",")
    return value[comma + 1 :] if comma >= 0 else value


def decode_b64(text: str | memoryview) -> bytes:
    """A b64 image value, with or without a `data:` prefix; EngineError when it is not base64."""
    try:
        return pybase64.b64decode(b64_payload(text), validate=True)
    except ValueError as exc:
        raise EngineError("The upstream answered an image that is not valid base64.") from exc


def revised_prompt(item: object) -> str:
    """An answer item's `revised_prompt` when the provider gave text (cut to MAX_PROMPT_CHARS), else ''.
    (Lone surrogates in it are the upstream engine's `scrub` to mend, as in all a provider says.)"""
    value = item.get("revised_prompt") if isinstance(item, dict) else None
    return value[:MAX_PROMPT_CHARS] if isinstance(value, str) else ""


def error_parts(body: Any) -> tuple[str | None, str | None, str | None]:
    """(message, code, param) from an error body: OpenAI's `{"error": {...}}`, seed 003's
    `{"success": false, "error": {...}}`, or the seed dialects' `{"code", "message"|"msg"}`."""
    if not isinstance(body, dict):
        return None, None, None
    error = body.get("error")
    if isinstance(error, dict):
        message, code, param = error.get("message"), error.get("code"), error.get("param")
        return (str(message) if message else None, str(code) if code else None, str(param) if param else None)
    if isinstance(error, str):
        return error, None, None
    message = body.get("message") or body.get("msg")
    return (str(message) if message else None, None, None)


def retry_after(headers: httpx.Headers) -> float | None:
    """`retry-after` (seconds or an HTTP date) or OpenAI's `retry-after-ms`, in seconds."""
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            return None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def rejection(response: httpx.Response, channel: str) -> ImagegateError:
    """The error for a non-2xx answer: the provider's own words for a rejected request, else ours.
    (The upstream engine scrubs the channel's key from whatever a provider said.)"""
    try:
        body = response.json()
    except ValueError:
        body = None
    message, code, param = error_parts(body)
    status = response.status_code
    said = message or response.reason_phrase or "no message"
    if status in CLIENT_FAULTS:
        return BadRequest(said, param=param, code=code or "invalid_value")
    if status == 429 or status >= 500 or status in RETRYABLE:
        return EngineError(
            f"The upstream channel '{channel}' answered {status}: {said}",
            retryable=True,
            retry_after=retry_after(response.headers),
        )
    if status in (401, 403):
        return EngineError(f"The upstream channel '{channel}' refused its credentials ({status}).", retryable=False)
    return EngineError(f"The upstream channel '{channel}' answered {status}: {said}", retryable=False)


MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""The longest answer a provider may send (and that its body may decode to): several 4K images as
base64, more than any provider answers one call; beyond it the call fails as the provider's fault."""


@dataclass(frozen=True)
class Endpoint:
    """Where one channel's provider answers, and how this server reaches it."""

    channel: str
    base_url: str
    api_key: str = ""
    timeout_s: float = 180.0
    max_connections: int = 64
    transport: httpx.AsyncBaseTransport | None = None
    """Replaces the network (an `httpx.MockTransport` in tests)."""

    @classmethod
    def of(cls, channel: ChannelSettings, api_key: str) -> Endpoint:
        """A configured channel's endpoint, with its upstream key."""
        return cls(channel.name, channel.base_url or "", api_key, channel.timeout_s, channel.max_concurrency)

    def client(self) -> httpx.AsyncClient:
        """The channel's pooled client: bearer auth, its timeout, no proxies from the environment, at
        most `max_connections` connections, answers of at most MAX_ANSWER_BYTES, over aiohttp unless
        `transport` replaces the network."""
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return AcyclicClient(
            base_url=self.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
            trust_env=False,
            transport=self.transport or AiohttpTransport(self.max_connections),
            max_answer_bytes=MAX_ANSWER_BYTES,
        )


class HttpUpstream:
    """What every HTTP dialect client holds: its channel's name and a pooled client that sends its key;
    `answer` turns a response into its JSON body or the right error."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.channel = endpoint.channel
        self._http = endpoint.client()

    async def aclose(self) -> None:
        await self._http.aclose()

    def refused(self, response: httpx.Response) -> ImagegateError:
        """The error for a non-2xx `response` (its body already read)."""
        return rejection(response, self.channel)

    def answer(self, response: httpx.Response) -> Any:
        """The JSON body of a 2xx `response`; raises `refused(...)` or EngineError for a non-JSON body."""
        if response.status_code >= 300:
            raise self.refused(response)
        try:
            return response.json()
        except ValueError as exc:
            raise EngineError(f"The upstream channel '{self.channel}' answered something that is not JSON.") from exc
