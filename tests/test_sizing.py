"""SPEC §4 size rules, the ratio/tier table and `auto` resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegate.core.catalog import Catalog
from imagegate.core.pricing import price, price_before_inputs
from imagegate.core.request import EditRequest, ImageRef, Quality, Size
from imagegate.core.sizing import (
    MAX_PIXELS,
    MIN_PIXELS,
    auto_size,
    check_flexible,
    native_size,
    parse_ratio,
    parse_wxh,
    size_for_ratio,
    tier_of,
)
from imagegate.core.validation import resolve_size, validate
from imagegate.errors import BadRequest

TABLE = {
    "1:1": ("1024x1024", "2048x2048", "2880x2880"),
    "4:3": ("1024x768", "2048x1536", "3264x2448"),
    "3:2": ("1536x1024", "2160x1440", "3456x2304"),
    "16:9": ("1536x864", "2048x1152", "3840x2160"),
    "4:5": ("1024x1280", "1536x1920", "2304x2880"),
    "2:1": ("1536x768", "2560x1280", "3840x1920"),
    "21:9": ("1792x768", "2688x1152", "3808x1632"),
}
SWAPPED = {"4:3": "3:4", "3:2": "2:3", "16:9": "9:16", "4:5": "5:4", "2:1": "1:2", "21:9": "9:21"}


@pytest.mark.parametrize("ratio", sorted(TABLE))
@pytest.mark.parametrize("tier_index", [0, 1, 2])
def test_every_table_entry_and_its_swap(ratio: str, tier_index: int) -> None:
    tier = ("1K", "2K", "4K")[tier_index]
    expected = parse_wxh(TABLE[ratio][tier_index])
    assert size_for_ratio(parse_ratio(ratio), tier) == expected
    if ratio in SWAPPED:
        assert size_for_ratio(parse_ratio(SWAPPED[ratio]), tier) == Size(expected.height, expected.width)
    assert check_flexible(expected) == expected
    assert tier_of(expected) == tier


def test_unknown_ratio_and_tier_are_rejected_with_the_list() -> None:
    with pytest.raises(BadRequest, match="16:9") as info:
        parse_ratio("7:5")
    assert info.value.param == "size"
    with pytest.raises(BadRequest, match="1K, 2K, 4K"):
        size_for_ratio((1, 1), "8K")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1000x1000", "multiples of 16"),
        ("4096x1024", "longest edge 4096 exceeds 3840"),
        ("2400x784", "ratio exceeds 3:1"),
        ("512x512", "262,144 pixels are outside"),
        ("3840x2400", "9,216,000 pixels are outside"),
    ],
)
def test_each_flexible_rule_is_stated(text: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_flexible(parse_wxh(text))
    assert fragment in info.value.message
    assert "Rule:" in info.value.message
    assert info.value.param == "size"


@pytest.mark.parametrize("text", ["1254x1254", "1672x941", "941x1672"])
def test_upstream_1k_aliases_are_accepted_as_1k(text: str) -> None:
    size = check_flexible(parse_wxh(text))
    assert tier_of(size) == "1K"


@pytest.mark.parametrize("text", ["big", "1024", "1024x", "x1024", "-16x16", "16x16x16"])
def test_malformed_sizes(text: str) -> None:
    with pytest.raises(BadRequest, match="WIDTHxHEIGHT"):
        parse_wxh(text)


def test_bounds_are_inclusive() -> None:
    assert check_flexible(Size(1024, 640)).pixels == MIN_PIXELS
    assert check_flexible(Size(3840, 2160)).pixels == MAX_PIXELS
    assert tier_of(Size(1536, 1024)) == "1K"
    assert tier_of(Size(1536, 1040)) == "2K"
    assert tier_of(Size(2048, 2048)) == "2K"
    assert tier_of(Size(2048, 2064)) == "4K"


@given(st.integers(1, 20000), st.integers(1, 20000))
def test_auto_always_gives_a_valid_1k_size_near_the_ratio(width: int, height: int) -> None:
    size = auto_size(width, height)
    assert check_flexible(size) == size
    assert tier_of(size) == "1K"
    ratio = min(max(width / height, 1 / 3), 3)
    assert abs(size.width / size.height - ratio) / ratio < 0.05


def _req(size: str, model: str = "gpt-image-2") -> EditRequest:
    return EditRequest(prompt="p", model=model, size=size, images=[ImageRef(param="image", inline="x")])


def test_auto_for_edit_keeps_the_first_images_ratio() -> None:
    spec = Catalog.from_config({}).get("gpt-image-2")
    assert resolve_size(_req("auto"), spec, (1920, 1080)) == Size(1360, 768)
    assert resolve_size(_req("auto"), spec, None) == Size(1024, 1024)
    assert resolve_size(_req("2048x1152"), spec, (10, 10)) == Size(2048, 1152)


def test_fixed_size_models() -> None:
    catalog = Catalog.from_config({})
    legacy = catalog.get("gpt-image-1")
    assert resolve_size(_req("auto", "gpt-image-1"), legacy, (1920, 1080)) == Size(1536, 1024)
    with pytest.raises(BadRequest, match="1024x1024, 1536x1024, 1024x1536, auto"):
        validate(_req("2048x2048", "gpt-image-1"), legacy, max_input_images=16)
    dalle = catalog.get("dall-e-2")
    with pytest.raises(BadRequest, match="256x256, 512x512, 1024x1024"):
        validate(_req("2048x2048", "dall-e-2"), dalle, max_input_images=16)


def test_dalle2_without_a_size_is_1024_square_as_at_openai() -> None:
    catalog = Catalog.from_config({})
    dalle = catalog.get("dall-e-2")
    req = _req("auto", "dall-e-2")
    validate(req, dalle, max_input_images=16)
    assert resolve_size(req, dalle, (1920, 1080)) == Size(1024, 1024)
    assert price_before_inputs(req, dalle) == 2


@pytest.mark.parametrize(
    "text",
    [
        "1024x1024",
        "1536x1024",
        "1024x1536",
        "1792x1024",
        "1024x1792",
        "1024x768",
        "768x1024",
        "1536x864",
        "864x1536",
        "1254x1254",
        "1672x941",
        "941x1672",
    ],
)
def test_every_size_a_seed_sells_as_1k_is_billed_at_the_base_price(text: str) -> None:
    spec = Catalog.from_config({}).get("gpt-image-2")
    size = check_flexible(parse_wxh(text))
    assert tier_of(size) == "1K"
    assert price(spec, Quality.MEDIUM, size, 1) == 6


@pytest.mark.parametrize(("text", "tier"), [("1920x1080", "2K"), ("1080x1920", "2K"), ("2048x1152", "2K")])
def test_seed004_listed_sizes_are_accepted_and_cost_half_again(text: str, tier: str) -> None:
    spec = Catalog.from_config({}).get("gpt-image-2")
    size = check_flexible(parse_wxh(text))
    assert tier_of(size) == tier
    assert price(spec, Quality.MEDIUM, size, 1) == 9
    assert native_size(size) == Size(size.width + (-size.width % 16), size.height + (-size.height % 16))
    assert native_size(Size(1254, 1254)) == Size(1254, 1254), "the 1K aliases go to providers as they are"
