"""The Engine protocol (who makes pixels; our types in, our types out: DESIGN principle 1) and the
EngineKind a registry holds for each kind a channel may name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from imagegate.config import ChannelSettings, Config
from imagegate.core.job import Job, Made
from imagegate.core.request import EditRequest
from imagegate.core.upstream import RelayHosts
from imagegate.net.fetch import SafeFetcher


class Engine(Protocol):
    """Makes images. `run` returns exactly `job.request.n` images (or fewer, when a provider ignored
    `n`; the service asks again) or raises an EngineError leaf (or a BadRequest leaf for input the
    engine cannot use); nothing from a provider escapes."""

    name: str
    images_per_call: int
    """How many images one `run` may return; the service fans out beyond this (SPEC §3)."""
    can_generate: bool

    async def run(self, job: Job) -> Made: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Refusal:
    """Why an engine cannot serve a request (e.g. more reference images than its model takes), and the
    request field at fault; the client gets it as a 400."""

    message: str
    param: str | None = None
    code: str = "model_not_supported"


def refusal(engine: Engine, request: EditRequest) -> Refusal | None:
    """What `engine` says against `request`, for engines that say (those with a `refuses` method):
    None when it can serve it. Generation on an edit-only engine is refused here for every engine."""
    refuses = getattr(engine, "refuses", None)
    if refuses is not None:
        said: Refusal | None = refuses(request)
        return said
    if not request.is_edit and not engine.can_generate:
        return Refusal(
            f"Model '{request.model}' is served by the {engine.name} engine, which edits images but cannot "
            "generate them; generations need an upstream (OpenAI-compatible) or local-model channel.",
            "model",
        )
    return None


@dataclass(frozen=True)
class EngineContext:
    """What opening an engine may use: the configuration, the channel it serves (None for the default
    engine of a server without channels) with its key, and the hosts relayed calls lean on."""

    config: Config
    fetcher: SafeFetcher
    hosts: RelayHosts
    channel: ChannelSettings | None = None
    key: str = ""
    """The channel's upstream key, read from the environment variable it names."""


def never(channel: ChannelSettings) -> bool:
    return False


@dataclass(frozen=True)
class EngineKind:
    """One kind of engine a channel may name (`engine = "<name>"`): how to open one, whether it relays
    to a provider at a `base_url`, and whether that provider calls this server back (then `public_url`
    must be set)."""

    name: str
    open: Callable[[EngineContext], Engine]
    relays: bool = False
    calls_back: Callable[[ChannelSettings], bool] = never
