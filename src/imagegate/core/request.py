"""The canonical, dialect-free edit/generate request (SPEC §1) and the values it is made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any


class Quality(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    AUTO = "auto"
    XHIGH = "xhigh"
    MAX = "max"
    STANDARD = "standard"
    HD = "hd"


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


class Background(StrEnum):
    TRANSPARENT = "transparent"
    OPAQUE = "opaque"
    AUTO = "auto"


class Delivery(StrEnum):
    URL = "url"
    B64_JSON = "b64_json"


@dataclass(frozen=True, order=True)
class Size:
    """An exact output size in pixels."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class ImageRef:
    """One input image as the client gave it; `param` names the field for error messages.

    Exactly one of `upload` (a spooled file), `url` (http/https, fetched later), `inline`
    (a data URL or raw base64 string) or `blob` (a stored copy, for tasks that run later) is set.
    """

    param: str
    upload: IO[bytes] | None = None
    filename: str | None = None
    url: str | None = None
    inline: str | None = None
    blob: str | None = None

    def describe(self) -> dict[str, str]:
        """A JSON-able summary for the task record; never the bytes themselves."""
        if self.upload is not None:
            return {"param": self.param, "kind": "upload", "filename": self.filename or ""}
        if self.url is not None:
            return {"param": self.param, "kind": "url", "url": self.url}
        if self.blob is not None:
            return {"param": self.param, "kind": "blob", "blob": self.blob}
        return {"param": self.param, "kind": "inline", "length": str(len(self.inline or ""))}

    @classmethod
    def from_record(cls, record: dict[str, str]) -> ImageRef:
        """The reference `describe` recorded; only `url` and `blob` references can be run again."""
        kind = record.get("kind")
        if kind == "url":
            return cls(param=record["param"], url=record["url"])
        if kind == "blob":
            return cls(param=record["param"], blob=record["blob"])
        raise ValueError(f"a {kind} reference was not stored and cannot be run again")


@dataclass
class EditRequest:
    """A request for images, as every dialect parses it. Without `images` it is a generation.

    `size` is the raw text ("auto", "WxH"); `resolved_size` is set by the service once the first
    input's dimensions are known. Unknown client fields are kept in `extra` for pass-through.
    """

    prompt: str
    model: str = "gpt-image-2"
    images: list[ImageRef] = field(default_factory=list)
    mask: ImageRef | None = None
    size: str = "auto"
    tier: str = "1K"
    """The tier (`1K`, `2K`, `4K`) that `size=auto` resolves at (seed 002's `resolution`)."""
    quality: Quality = Quality.AUTO
    n: int = 1
    output_format: OutputFormat = OutputFormat.PNG
    output_compression: int | None = None
    background: Background = Background.AUTO
    delivery: Delivery | None = None
    stream: bool = False
    partial_images: int = 0
    callback_url: str | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_edit(self) -> bool:
        return bool(self.images)

    def to_record(self) -> dict[str, Any]:
        """The canonical request as stored on the task row (JSON-able, without image bytes)."""
        return {
            "prompt": self.prompt,
            "model": self.model,
            "images": [ref.describe() for ref in self.images],
            "mask": self.mask.describe() if self.mask else None,
            "size": self.size,
            "tier": self.tier,
            "quality": self.quality.value,
            "n": self.n,
            "output_format": self.output_format.value,
            "output_compression": self.output_compression,
            "background": self.background.value,
            "delivery": self.delivery.value if self.delivery else None,
            "stream": self.stream,
            "partial_images": self.partial_images,
            "callback_url": self.callback_url,
            "user": self.user,
            "extra": self.extra,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EditRequest:
        """The request `to_record` stored (its images must be `url` or `blob` references)."""
        delivery = record.get("delivery")
        mask = record.get("mask")
        return cls(
            prompt=record["prompt"],
            model=record["model"],
            images=[ImageRef.from_record(item) for item in record.get("images", [])],
            mask=ImageRef.from_record(mask) if mask else None,
            size=record.get("size", "auto"),
            tier=record.get("tier", "1K"),
            quality=Quality(record.get("quality", "auto")),
            n=int(record.get("n", 1)),
            output_format=OutputFormat(record.get("output_format", "png")),
            output_compression=record.get("output_compression"),
            background=Background(record.get("background", "auto")),
            delivery=Delivery(delivery) if delivery else None,
            stream=False,
            partial_images=0,
            callback_url=record.get("callback_url"),
            user=record.get("user"),
            extra=dict(record.get("extra") or {}),
        )
