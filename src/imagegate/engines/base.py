"""The Engine protocol: who makes pixels. Our types in, our types out (DESIGN principle 1)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from imagegate.core.catalog import ModelSpec
from imagegate.core.request import EditRequest, OutputFormat, Size
from imagegate.imaging import SourceImage


@dataclass(frozen=True)
class ImageOut:
    """One finished image, already encoded in the requested format at the requested size."""

    data: bytes
    format: OutputFormat
    size: Size
    transparent: bool
    revised_prompt: str
    resampled_from: Size | None = None
    """The engine's native size when the server resampled to the requested one."""
    upstream: dict[str, Any] | None = None
    """For relayed images: the channel, the provider's model, `usage` and latency (kept on the task)."""


PartialSink = Callable[[int, bytes], Awaitable[None]]
"""Receives (partial_image_index, encoded preview) while an engine works on a streamed request."""


@dataclass
class Job:
    """Everything an engine needs for one request: the request, its model, and opened inputs."""

    request: EditRequest
    spec: ModelSpec
    size: Size
    images: list[SourceImage] = field(default_factory=list)
    mask: SourceImage | None = None
    on_partial: PartialSink | None = None


class Engine(Protocol):
    """Makes images. `run` returns exactly `job.request.n` images or raises an EngineError leaf
    (or a BadRequest leaf for input the engine cannot use); nothing from a provider escapes."""

    name: str
    images_per_call: int
    """How many images one `run` may return; the service fans out beyond this (SPEC §3)."""
    can_generate: bool

    async def run(self, job: Job) -> list[ImageOut]: ...

    async def aclose(self) -> None: ...
