"""What crosses from the service to an engine and back: the Job, the images made, the call's report.

These are plain values shared by engines, dialect clients and the service, so none of them imports
another to reach them (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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


CallReport = dict[str, Any]
"""What one relayed call leaves on its task: the channel, the provider's model, `usage`, latency,
attempts and failovers (JSON-ready; a provider's words already scrubbed of the channel's key)."""


@dataclass
class Made:
    """What one engine call returns: its images, and (for relayed calls) one report for the call."""

    images: list[ImageOut]
    report: CallReport | None = None


PartialSink = Callable[[int, bytes], Awaitable[None]]
"""Receives (partial_image_index, encoded preview) while an engine works on a streamed request."""


@dataclass
class Job:
    """Everything an engine needs for one call: the request, its model, and opened inputs."""

    request: EditRequest
    spec: ModelSpec
    size: Size
    images: list[SourceImage] = field(default_factory=list)
    mask: SourceImage | None = None
    on_partial: PartialSink | None = None
