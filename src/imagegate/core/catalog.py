"""The model catalog (SPEC §4): what each public model id accepts, defaults to and costs.

Built-in defaults; the `[models.<id>]` tables of the configuration override any field or add models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from imagegate.core.request import Delivery, OutputFormat, Quality, Size
from imagegate.errors import ModelNotFound, excerpt


class SizeMode(StrEnum):
    FLEXIBLE = "flexible"
    """`auto` or any WxH under the flexible rule (gpt-image-2)."""
    FIXED = "fixed"
    """Only the listed sizes (plus `auto` when allowed)."""
    ENGINE = "engine"
    """Whatever the engine makes; the client's size is ignored (nano-banana)."""


GPT_QUALITIES = (Quality.LOW, Quality.MEDIUM, Quality.HIGH, Quality.AUTO)
GPT_IMAGE_PRICES = {"low": Decimal(2), "medium": Decimal(6), "high": Decimal(12)}
LEGACY_SIZES = (Size(1024, 1024), Size(1536, 1024), Size(1024, 1536))
DALLE2_SIZES = (Size(256, 256), Size(512, 512), Size(1024, 1024))


@dataclass(frozen=True)
class ModelSpec:
    """One public model id and its rules."""

    id: str
    size_mode: SizeMode = SizeMode.FLEXIBLE
    sizes: tuple[Size, ...] = ()
    auto_size: bool = True
    default_size: Size | None = None
    """The size of a request that names none (dall-e-2: 1024x1024, as OpenAI does)."""
    qualities: tuple[Quality, ...] = GPT_QUALITIES
    passthrough_qualities: tuple[Quality, ...] = (Quality.XHIGH, Quality.MAX, Quality.STANDARD, Quality.HD)
    max_n: int = 10
    native_n: bool = False
    """Makes several images per call itself (dall-e-2). On seed 003's prefixes every other model
    answers `n > 1` with one image, billed as one (SPEC §2.1a)."""
    default_delivery: Delivery = Delivery.B64_JSON
    url_b64_as_data_url: bool = False
    """With `response_format=b64_json` the value carries a `data:` prefix (seed 001)."""
    basic_fields_only: bool = False
    """Only model, prompt and image are honoured; everything else is ignored (seed 003)."""
    output_format: OutputFormat | None = None
    """The one format this model delivers (nano-banana: jpeg), whatever the request says."""
    echo_prompt: bool = False
    """Answers `revised_prompt` = the prompt and `created` = 0, as seed 003's adapter layer does; what
    the engine did goes in the `x-imagegate-applied` header instead."""
    max_input_images: int = 16
    needs_image: bool = False
    """Edits only: a request without an input image is refused (seed 002's image-to-image model)."""
    prices: dict[str, Decimal] = field(default_factory=lambda: dict(GPT_IMAGE_PRICES))
    """Credits per image by quality; `auto` prices as `medium`."""
    per_call_price: Decimal | None = None
    above_1k_multiplier: Decimal = Decimal("1.5")
    description: str = ""


URLS_UNLESS_ASKED = ("dall-e",)
"""Provider model families that answer URLs unless asked `response_format=b64_json`."""


def answers_urls_unless_asked(provider_model: str) -> bool:
    """Whether a provider's model (the id a channel sends, after its `model_map`) answers URLs unless
    a request asks for b64 (DALL·E); a relayed call then asks, so the image comes back inline."""
    return provider_model.startswith(URLS_UNLESS_ASKED)


def _builtin() -> dict[str, ModelSpec]:
    gpt2 = ModelSpec("gpt-image-2", description="GPT-Image-2 style editing; flexible WxH sizes")
    legacy = ModelSpec("gpt-image-1", size_mode=SizeMode.FIXED, sizes=LEGACY_SIZES)
    banana = ModelSpec(
        "nano-banana",
        size_mode=SizeMode.ENGINE,
        qualities=(),
        passthrough_qualities=(),
        max_n=1,
        default_delivery=Delivery.URL,
        basic_fields_only=True,
        output_format=OutputFormat.JPEG,
        echo_prompt=True,
        per_call_price=Decimal("0.14"),
    )
    specs = [
        gpt2,
        replace(gpt2, id="gpt-image-2-2026-04-21", description="gpt-image-2 snapshot"),
        replace(gpt2, id="gpt-image-2-all", max_n=1, default_delivery=Delivery.URL, url_b64_as_data_url=True),
        replace(gpt2, id="gpt-image-2-image-to-image", max_n=1, default_delivery=Delivery.URL, needs_image=True),
        replace(gpt2, id="gpt-image-2-text-to-image", max_n=1, default_delivery=Delivery.URL),
        legacy,
        replace(legacy, id="gpt-image-1.5"),
        replace(legacy, id="gpt-image-1-mini"),
        replace(legacy, id="chatgpt-image-latest"),
        ModelSpec(
            "dall-e-2",
            size_mode=SizeMode.FIXED,
            sizes=DALLE2_SIZES,
            auto_size=False,
            default_size=Size(1024, 1024),
            native_n=True,
            qualities=(Quality.STANDARD, Quality.AUTO),
            passthrough_qualities=(),
            default_delivery=Delivery.URL,
            max_input_images=1,
            prices={"standard": Decimal(2)},
            above_1k_multiplier=Decimal(1),
        ),
        banana,
        replace(banana, id="nano-banana-2", per_call_price=Decimal("0.28")),
        replace(banana, id="nano-banana-pro", per_call_price=Decimal("0.35")),
    ]
    return {spec.id: spec for spec in specs}


def _size(value: object) -> Size:
    width, height = map(int, str(value).lower().split("x"))
    return Size(width, height)


def _coerce(name: str, value: Any) -> Any:
    if name in {"per_call_price", "above_1k_multiplier"}:
        try:
            return None if value is None else Decimal(str(value))
        except InvalidOperation as exc:
            raise ValueError(f"models.*.{name}: not a decimal: {value!r}") from exc
    if name == "prices":
        return {str(k): Decimal(str(v)) for k, v in dict(value).items()}
    if name == "sizes":
        return tuple(_size(s) for s in value)
    if name == "default_size":
        return None if value is None else _size(value)
    if name == "output_format":
        return None if value is None else OutputFormat(value)
    if name in {"qualities", "passthrough_qualities"}:
        return tuple(Quality(q) for q in value)
    if name == "size_mode":
        return SizeMode(value)
    if name == "default_delivery":
        return Delivery(value)
    return value


class Catalog:
    """Lookup of ModelSpec by public id; unknown ids raise ModelNotFound (404)."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = specs

    @classmethod
    def from_config(cls, overrides: dict[str, dict[str, Any]]) -> Catalog:
        """Built-in models with `overrides[id][field]` applied; an unknown id adds a gpt-image-2 clone.

        Raises ValueError naming the bad key.
        """
        specs = _builtin()
        known = {f.name for f in fields(ModelSpec)}
        for model_id, values in overrides.items():
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"models.{model_id}: unknown keys {sorted(unknown)}")
            base = specs.get(model_id, replace(specs["gpt-image-2"], id=model_id, description=""))
            try:
                coerced = {name: _coerce(name, value) for name, value in values.items()}
            except (TypeError, ValueError) as exc:
                raise ValueError(f"models.{model_id}: {exc}") from exc
            specs[model_id] = replace(base, **coerced)
        return cls(specs)

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise ModelNotFound(
                f"The model '{excerpt(model_id)}' does not exist. GET /v1/models lists the available models.",
                param="model",
            ) from None

    def find(self, model_id: str) -> ModelSpec | None:
        """The spec of `model_id`, or None when the catalog has no such model."""
        return self._specs.get(model_id)

    def basic_fields_only(self, model_id: str) -> bool:
        """True for known models that honour only model, prompt and image."""
        spec = self.find(model_id)
        return spec is not None and spec.basic_fields_only

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())
