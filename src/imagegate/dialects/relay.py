"""What every outbound dialect client shares: the answer it returns, the protocol it implements, and
the translation of HTTP faults into our error tree (DESIGN principle 2)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import httpx
import pybase64

from imagegate.core.request import OutputFormat
from imagegate.engines.base import Job
from imagegate.errors import BadRequest, EngineError, EngineTimeout, ImagegateError
from imagegate.imaging import SourceImage

CLIENT_FAULTS = {400, 413, 415, 422}
"""Statuses by which a provider rejects the request itself: passed to the client, never retried."""
RETRYABLE = {408, 409, 425, 429}


@dataclass
class UpstreamImage:
    """One image as a provider answered it: bytes (b64 or data URL, decoded) or a URL to fetch."""

    data: bytes | None = None
    url: str | None = None
    revised_prompt: str = ""


@dataclass
class UpstreamAnswer:
    images: list[UpstreamImage]
    usage: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping on the task (the provider's task id, for example)."""


class UpstreamClient(Protocol):
    """A provider in one dialect. `run` makes one attempt and raises EngineError (retryable or not)
    for the provider's faults, or a BadRequest leaf carrying the provider's message when the
    provider rejected the request itself."""

    images_per_call: int
    can_generate: bool

    async def run(self, job: Job, model: str) -> UpstreamAnswer: ...

    async def probe(self) -> str:
        """A one-line health report (raises EngineError when the provider cannot be reached)."""
        ...

    async def aclose(self) -> None: ...


class InputHost(Protocol):
    """Makes input images fetchable by a provider that takes only URLs, for as long as an attempt lasts."""

    async def publish(self, data: bytes, fmt: OutputFormat) -> tuple[str, str]:
        """A public, signed, expiring URL for `data`, and the handle to withdraw it by."""
        ...

    async def withdraw(self, handle: str) -> None: ...


class CallbackSlot(Protocol):
    """Where one provider callback lands."""

    url: str
    """The `callback_url` to give the provider."""

    async def wait(self) -> Any:
        """The callback's JSON body, once it arrived."""
        ...


class CallbackInbox(Protocol):
    """Receives providers' callbacks for the requests waiting on them."""

    def expect(self) -> CallbackSlot: ...

    def discard(self, slot: CallbackSlot) -> None: ...


class Publications:
    """The inputs published for one attempt; `published` withdraws them all when the attempt ends."""

    def __init__(self, host: InputHost) -> None:
        self.host = host
        self.handles: list[str] = []

    async def url(self, source: SourceImage) -> str:
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


def read_source(source: SourceImage) -> bytes:
    """An input's original bytes (no re-encoding)."""
    with source.lock:
        source.fp.seek(0)
        return source.fp.read()


def data_url(source: SourceImage) -> str:
    """An input as a `data:` URL of its original bytes."""
    return f"data:{source.format.content_type};base64,{pybase64.b64encode(read_source(source)).decode('ascii')}"


def decode_b64(text: str) -> bytes:
    """A b64 image value, with or without a `data:` prefix; EngineError when it is not base64."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return pybase64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise EngineError("The upstream answered an image that is not valid base64.") from exc


def scrub(value: Any, secret: str) -> Any:
    """`value` (a string, or JSON-like lists and dicts of them) with every occurrence of `secret`
    replaced, so an upstream key a provider echoes never reaches a client, a task row or a log."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, "***")
    if isinstance(value, dict):
        return {scrub(key, secret): scrub(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, secret) for item in value]
    return value


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


@contextmanager
def mapped_faults(channel: str) -> Iterator[None]:
    """httpx's failures as EngineTimeout / EngineError (both worth retrying)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise EngineTimeout(f"The upstream channel '{channel}' timed out ({type(exc).__name__}).") from exc
    except httpx.HTTPError as exc:
        raise EngineError(f"The upstream channel '{channel}' could not be reached ({type(exc).__name__}).") from exc


def http_client(base_url: str, api_key: str, *, timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """The pooled client of one channel: bearer auth, the channel's timeout, no proxies from the environment."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        trust_env=False,
    )


class HttpUpstream:
    """What every HTTP dialect client holds: its channel's name and a pooled client that sends its key;
    `answer` turns a response into its JSON body or the right error."""

    def __init__(self, channel: str, base_url: str, api_key: str, *, timeout_s: float, max_connections: int) -> None:
        self.channel = channel
        self._http = http_client(base_url, api_key, timeout_s=timeout_s, max_connections=max_connections)

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
