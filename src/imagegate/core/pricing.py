"""The price of a request in credits (SPEC §4): exact Decimals, never floats."""

from __future__ import annotations

from decimal import Decimal

from imagegate.core.catalog import ModelSpec
from imagegate.core.request import Quality, Size
from imagegate.core.sizing import tier_of


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
