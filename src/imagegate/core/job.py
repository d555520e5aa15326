"""What crosses from the service to an engine and back: the Job, the images made, the call's report.

These are plain values shared by engines, dialect clients and the service, so none of them imports
another to reach them (docs/architecture.md).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from PIL import Image

from imagegate.core.catalog import ModelSpec
from imagegate.core.request import EditRequest, OutputFormat, Size


class Source(Protocol):
    """An opened input image, not yet decoded (imaging.SourceImage): its sniffed format, oriented
    dimensions, the request field it came from, and its original bytes in `fp` (read under `lock`)."""

    image: Image.Image
    """Opened header-only: its mode and info, no pixels."""
    format: OutputFormat
    width: int
    height: int
    param: str
    fp: IO[bytes]
    lock: threading.Lock

    def decode(self, at_least: Size | None = None) -> Image.Image:
        """Decoded, oriented, RGB or RGBA (JPEGs shrunk on load while at least `at_least`)."""
        ...


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
    b64: memoryview | None = None
    """`data` as base64, when a provider answered it so and the server passed its bytes through."""


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
    images: Sequence[Source] = field(default_factory=list)
    mask: Source | None = None
    on_partial: PartialSink | None = None
