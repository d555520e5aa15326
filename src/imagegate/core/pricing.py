"""The price of a request in credits (SPEC §4): exact Decimals, never floats."""

from __future__ import annotations

from decimal import Decimal

from imagegate.core.catalog import ModelSpec, SizeMode
from imagegate.core.request import EditRequest, Quality, Size
from imagegate.core.sizing import TIERS, size_for_ratio, tier_of
from imagegate.core.validation import resolve_size, resolved_quality


def credits_text(value: Decimal) -> str:
    """Credits as clients read them: a plain decimal string without trailing zeros (`"13.5"`, `"0.14"`)."""
    return f"{value.normalize():f}"


def unit_price(spec: ModelSpec, quality: Quality, size: Size | None) -> Decimal:
    """Credits for one delivered image (or one call, for per-call models)."""
    if spec.per_call_price is not None:
        return spec.per_call_price
    key = Quality.MEDIUM.value if quality is Quality.AUTO else quality.value
    if key not in spec.prices:
        key = Quality.HIGH.value if quality in (Quality.XHIGH, Quality.MAX, Quality.HD) else key
    price = spec.prices.get(key) or spec.prices.get(Quality.MEDIUM.value) or next(iter(spec.prices.values()))
    if size is not None and tier_of(size) != "1K":
        price *= spec.above_1k_multiplier
    return price


def price(spec: ModelSpec, quality: Quality, size: Size | None, images: int) -> Decimal:
    """Credits for `images` delivered images."""
    return unit_price(spec, quality, size) * images


def price_before_inputs(req: EditRequest, spec: ModelSpec) -> Decimal:
    """The most `req` can cost before its inputs are opened: what a task holds when it is recorded.

    An `auto` size of a fixed-size model depends on the first image, so its dearest size is taken;
    every other `auto` stays in the tier the request names, which alone sets the price.
    """
    quality = resolved_quality(req, spec)
    if req.size == "auto" and spec.size_mode is SizeMode.FIXED and spec.sizes and spec.default_size is None:
        return max(price(spec, quality, size, req.n) for size in spec.sizes)
    return price(spec, quality, resolve_size(req, spec, None), req.n)


def price_table(spec: ModelSpec) -> dict[str, object]:
    """A model's prices as `GET /v1/pricing` lists them: per call, or per image by quality and tier."""
    if spec.per_call_price is not None:
        return {"per": "call", "price": credits_text(spec.per_call_price)}
    tiers: tuple[str, ...] = TIERS
    if spec.size_mode is SizeMode.FIXED and spec.sizes:
        tiers = tuple(tier for tier in TIERS if any(tier_of(size) == tier for size in spec.sizes))
    qualities = [quality for quality in spec.qualities if quality is not Quality.AUTO]
    prices = {
        quality.value: {tier: credits_text(unit_price(spec, quality, size_for_ratio((1, 1), tier))) for tier in tiers}
        for quality in qualities
    }
    return {"per": "image", "prices": prices}
