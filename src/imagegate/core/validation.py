"""Request validation against a model's rules (SPEC §2.1, §4). Pure; failures are BadRequest."""

from __future__ import annotations

from imagegate.core.catalog import ModelSpec, SizeMode
from imagegate.core.request import Background, EditRequest, OutputFormat, Quality, Size
from imagegate.core.sizing import (
    auto_size,
    check_flexible,
    nearest_by_ratio,
    parse_ratio,
    parse_wxh,
    size_for_ratio,
)
from imagegate.errors import BadRequest, MissingParameter, excerpt

MAX_PROMPT_CHARS = 32_000
MAX_PARTIAL_IMAGES = 3


def _strip_to_basic_fields(req: EditRequest) -> None:
    """Models that honour only model, prompt and image drop everything else (seed 003)."""
    defaults = EditRequest(prompt=req.prompt)
    req.mask = None
    req.size = defaults.size
    req.quality = defaults.quality
    req.n = 1
    req.output_format = defaults.output_format
    req.output_compression = None
    req.background = defaults.background
    req.delivery = None
    req.partial_images = 0
    req.images = req.images[:1]


def validate(req: EditRequest, spec: ModelSpec, *, max_input_images: int, max_prompt: int = MAX_PROMPT_CHARS) -> None:
    """Check every field of `req` against `spec`, normalising where the model ignores fields.

    Raises BadRequest (or MissingParameter) whose `param` names the offending field.
    """
    if spec.basic_fields_only:
        _strip_to_basic_fields(req)
    if spec.output_format is not None:
        req.output_format = spec.output_format
    if not req.prompt or not req.prompt.strip():
        raise MissingParameter("Missing required parameter: 'prompt'.", param="prompt")
    if len(req.prompt) > max_prompt:
        raise BadRequest(
            f"Invalid 'prompt': {len(req.prompt)} characters; the maximum is {max_prompt}.", param="prompt"
        )
    limit = min(max_input_images, spec.max_input_images)
    if len(req.images) > limit:
        raise BadRequest(
            f"Invalid 'image': {len(req.images)} images given; model '{spec.id}' accepts at most {limit}.",
            param="image",
        )
    if req.mask is not None and not req.images:
        raise BadRequest("Invalid 'mask': a mask needs an image to apply to.", param="mask")
    if not 1 <= req.n <= spec.max_n:
        raise BadRequest(
            f"Invalid 'n': {req.n}; model '{spec.id}' makes between 1 and {spec.max_n} images per request.",
            param="n",
        )
    allowed = spec.qualities + spec.passthrough_qualities
    if allowed and req.quality not in allowed:
        raise BadRequest(
            f"Invalid 'quality': '{req.quality.value}'; model '{spec.id}' accepts "
            f"{', '.join(q.value for q in allowed)}.",
            param="quality",
        )
    if req.output_compression is not None:
        if not 0 <= req.output_compression <= 100:
            raise BadRequest(
                f"Invalid 'output_compression': {req.output_compression}; it must be between 0 and 100.",
                param="output_compression",
            )
        if req.output_format is OutputFormat.PNG and req.output_compression != 100:
            raise BadRequest(
                "Invalid 'output_compression': it applies only to output_format 'jpeg' or 'webp'.",
                param="output_compression",
            )
    if req.background is Background.TRANSPARENT and req.output_format is OutputFormat.JPEG:
        raise BadRequest("Invalid 'background': 'transparent' needs output_format 'png' or 'webp'.", param="background")
    if not 0 <= req.partial_images <= MAX_PARTIAL_IMAGES:
        raise BadRequest(
            f"Invalid 'partial_images': {req.partial_images}; it must be between 0 and {MAX_PARTIAL_IMAGES}.",
            param="partial_images",
        )
    if req.size != "auto":
        _explicit_size(req.size, spec)
    elif not spec.auto_size and spec.size_mode is SizeMode.FIXED and spec.default_size is None:
        raise BadRequest(
            f"Invalid 'size': 'auto'; model '{spec.id}' accepts {', '.join(map(str, spec.sizes))}.",
            param="size",
        )


def _explicit_size(text: str, spec: ModelSpec) -> Size | None:
    if spec.size_mode is SizeMode.ENGINE:
        return None
    size = parse_wxh(text)
    if spec.size_mode is SizeMode.FLEXIBLE:
        return check_flexible(size)
    if size not in spec.sizes:
        accepted = ", ".join(map(str, spec.sizes)) + (", auto" if spec.auto_size else "")
        raise BadRequest(f"Invalid size '{excerpt(text)}': model '{spec.id}' accepts {accepted}.", param="size")
    return size


def resolve_size(req: EditRequest, spec: ModelSpec, first_image: tuple[int, int] | None) -> Size:
    """The exact output size: the explicit one, or `auto` resolved from the first input image.

    `auto` is the model's default size where it has one; otherwise it keeps the first image's ratio
    at the 1K tier, and a generation's `auto` is the model's first square size. Assumes `validate`
    has passed.
    """
    explicit = None if req.size == "auto" else _explicit_size(req.size, spec)
    if explicit is not None:
        return explicit
    if spec.default_size is not None:
        return spec.default_size
    if spec.size_mode is SizeMode.FIXED:
        if first_image is None:
            return spec.sizes[0] if spec.sizes else Size(1024, 1024)
        return nearest_by_ratio(spec.sizes, *first_image)
    if first_image is None:
        return size_for_ratio((1, 1), req.tier)
    return auto_size(*first_image, tier=req.tier)


def ratio_size(spec: ModelSpec, text: str, tier: str = "1K", *, param: str = "size") -> str:
    """The size text for an aspect ratio (`16:9`) or `auto` at a tier, by the SPEC §4 table.

    Fixed-size models get their size nearest to that ratio; engine-sized models get `auto`.
    Raises BadRequest naming `param` for a ratio outside the table.
    """
    if text.strip().lower() == "auto" or spec.size_mode is SizeMode.ENGINE:
        return "auto"
    size = size_for_ratio(parse_ratio(text, param=param), tier)
    if spec.size_mode is SizeMode.FIXED and spec.sizes:
        size = nearest_by_ratio(spec.sizes, size.width, size.height)
    return str(size)


def resolved_quality(req: EditRequest, spec: ModelSpec) -> Quality:
    """The quality reported back and priced: `auto` resolves to `medium` (or the model's only one)."""
    if req.quality is not Quality.AUTO:
        return req.quality
    if not spec.qualities or Quality.MEDIUM in spec.qualities:
        return Quality.MEDIUM
    return spec.qualities[0]
