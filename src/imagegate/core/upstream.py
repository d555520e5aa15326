"""The interface between the upstream engine and the dialect clients it relays through: what a client
answers, and the hosts it may lean on (published inputs, callbacks). Plain values and protocols, so
engines and dialects both depend on this module and never on each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from imagegate.config import ChannelSettings
from imagegate.core.job import Job
from imagegate.core.request import OutputFormat


@dataclass
class UpstreamImage:
    """One image as a provider answered it: bytes (b64 or data URL, decoded) or a URL to fetch."""

    data: bytes | None = None
    url: str | None = None
    revised_prompt: str = ""
    b64: memoryview | None = None
    """The provider's own base64 of `data`, when it is exactly what encoding `data` gives in length."""


@dataclass
class UpstreamAnswer:
    images: list[UpstreamImage]
    usage: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping on the task (the provider's task id, for example)."""


class UpstreamClient(Protocol):
    """A provider in one dialect. `run` makes one attempt and raises EngineError (retryable or not)
    for the provider's faults, or a BadRequest leaf carrying the provider's message when the
    provider rejected the request itself. httpx's own failures may escape: the upstream engine maps
    them, once, for every client."""

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


@dataclass(frozen=True)
class RelayHosts:
    """What this server offers the providers of relayed calls: published inputs and a callback inbox."""

    inputs: InputHost
    inbox: CallbackInbox


ClientFactory = Callable[[ChannelSettings, str, RelayHosts], UpstreamClient]
"""A dialect's outbound client for one channel, given the channel's upstream key."""


def scrub(value: Any, secret: str) -> Any:
    """`value` (a string, or JSON-like lists and dicts of them) with every occurrence of `secret`
    replaced, so an upstream key a provider echoes never reaches a client, a task row or a log; and
    with lone surrogates (JSON may carry them, no UTF-8 writer takes them) made `?`."""
    if isinstance(value, str):
        return valid_utf8(value.replace(secret, "***") if secret else value)
    if isinstance(value, dict):
        return {scrub(key, secret): scrub(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, secret) for item in value]
    return value


def valid_utf8(text: str) -> str:
    """`text`, with any lone surrogate replaced by `?` so that it can be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
