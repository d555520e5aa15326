"""Size, ratio and tier rules (SPEC §4). Pure functions; failures are BadRequest naming `size`."""

from __future__ import annotations

import math
import re

from imagegate.core.request import Size
from imagegate.errors import BadRequest, excerpt

MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400
MAX_EDGE = 3840
MAX_RATIO = 3
STEP = 16
ONE_K_ALIASES = frozenset({Size(1254, 1254), Size(1672, 941), Size(941, 1672)})
"""Seed 003's upstream 1K output sizes, accepted although they break the flexible rule."""
LISTED_SIZES = frozenset({Size(1920, 1080), Size(1080, 1920)})
"""Seed 004's listed sizes that are not multiples of 16: always accepted, made exactly."""
ONE_K_SIZES = ONE_K_ALIASES | {
    Size(1024, 1024),
    Size(1536, 1024),
    Size(1024, 1536),
    Size(1792, 1024),
    Size(1024, 1792),
    Size(1024, 768),
    Size(768, 1024),
    Size(1536, 864),
    Size(864, 1536),
}
"""Every size a seed sells at the 1K (base) price, whatever its pixel count."""
TIER_1K_MAX = 1_572_864
TIER_2K_MAX = 4_194_304
TIERS = ("1K", "2K", "4K")

FLEXIBLE_RULE = (
    f"width and height must be multiples of {STEP}, the longest edge at most {MAX_EDGE}, "
    f"the ratio of long to short edge at most {MAX_RATIO}:1, and the total pixels between "
    f"{MIN_PIXELS:,} and {MAX_PIXELS:,} (or one of the 1K aliases 1254x1254, 1672x941, 941x1672, "
    "or the listed sizes 1920x1080 and 1080x1920)"
)

# ratio -> (1K, 2K, 4K) in landscape-or-square orientation; the swapped ratio swaps each size.
_RATIO_TABLE: dict[tuple[int, int], tuple[Size, Size, Size]] = {
    (1, 1): (Size(1024, 1024), Size(2048, 2048), Size(2880, 2880)),
    (4, 3): (Size(1024, 768), Size(2048, 1536), Size(3264, 2448)),
    (3, 2): (Size(1536, 1024), Size(2160, 1440), Size(3456, 2304)),
    (16, 9): (Size(1536, 864), Size(2048, 1152), Size(3840, 2160)),
    (5, 4): (Size(1280, 1024), Size(1920, 1536), Size(2880, 2304)),
    (2, 1): (Size(1536, 768), Size(2560, 1280), Size(3840, 1920)),
    (21, 9): (Size(1792, 768), Size(2688, 1152), Size(3808, 1632)),
}
RATIOS = tuple(
    sorted(
        {f"{a}:{b}" for a, b in _RATIO_TABLE} | {f"{b}:{a}" for a, b in _RATIO_TABLE},
        key=lambda r: int(r.split(":")[0]) / int(r.split(":")[1]),
    )
)
_WXH = re.compile(r"^\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*$")
_RATIO = re.compile(r"^\s*(\d{1,3})\s*:\s*(\d{1,3})\s*$")


def parse_wxh(text: str, *, param: str = "size") -> Size:
    """Parse `WxH` (also `W*H`, `W×H`) into a Size, or raise BadRequest naming `param`."""
    match = _WXH.match(text)
    if not match:
        raise BadRequest(
            f"Invalid size '{excerpt(text)}': expected 'auto' or WIDTHxHEIGHT such as 1024x1024.", param=param
        )
    return Size(int(match.group(1)), int(match.group(2)))


def check_flexible(size: Size, *, param: str = "size") -> Size:
    """Accept `size` under the flexible gpt-image-2 rule, or raise BadRequest stating the rule."""
    if size in ONE_K_ALIASES or size in LISTED_SIZES:
        return size
    w, h = size.width, size.height
    problems = []
    if w <= 0 or h <= 0 or w % STEP or h % STEP:
        problems.append(f"{w}x{h} is not made of multiples of {STEP}")
    if max(w, h) > MAX_EDGE:
        problems.append(f"its longest edge {max(w, h)} exceeds {MAX_EDGE}")
    if min(w, h) > 0 and max(w, h) > MAX_RATIO * min(w, h):
        problems.append(f"its edge ratio exceeds {MAX_RATIO}:1")
    if not MIN_PIXELS <= w * h <= MAX_PIXELS:
        problems.append(f"its {w * h:,} pixels are outside {MIN_PIXELS:,}–{MAX_PIXELS:,}")
    if problems:
        raise BadRequest(f"Invalid size '{size}': {'; '.join(problems)}. Rule: {FLEXIBLE_RULE}.", param=param)
    return size


def tier_of(size: Size) -> str:
    """`1K`, `2K` or `4K` by pixel count; every size a seed sells as 1K is 1K (SPEC §4)."""
    if size in ONE_K_SIZES or size.pixels <= TIER_1K_MAX:
        return "1K"
    return "2K" if size.pixels <= TIER_2K_MAX else "4K"


def parse_ratio(text: str, *, param: str = "size") -> tuple[int, int]:
    """Parse one of the table's ratios (`16:9`), or raise BadRequest listing them."""
    match = _RATIO.match(text)
    if match:
        a, b = int(match.group(1)), int(match.group(2))
        if (a, b) in _RATIO_TABLE or (b, a) in _RATIO_TABLE:
            return a, b
    raise BadRequest(f"Invalid aspect ratio '{excerpt(text)}': use one of {', '.join(RATIOS)}.", param=param)


def size_for_ratio(ratio: tuple[int, int], tier: str = "1K", *, param: str = "resolution") -> Size:
    """The table's size for a ratio at a tier (`1K`, `2K`, `4K`)."""
    tier = tier.upper()
    if tier not in TIERS:
        raise BadRequest(f"Invalid resolution '{tier}': use one of {', '.join(TIERS)}.", param=param)
    a, b = ratio
    index = TIERS.index(tier)
    if (a, b) in _RATIO_TABLE:
        return _RATIO_TABLE[(a, b)][index]
    swapped = _RATIO_TABLE[(b, a)][index]
    return Size(swapped.height, swapped.width)


_TIER_TARGET_PIXELS = {"1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 2880 * 2880}
_TIER_MAX_PIXELS = {"1K": TIER_1K_MAX, "2K": TIER_2K_MAX, "4K": MAX_PIXELS}


def auto_size(width: int, height: int, tier: str = "1K") -> Size:
    """The flexible size at `tier` that keeps `width:height` (clamped to 3:1), multiples of 16."""
    ratio = min(max(width / max(height, 1), 1 / MAX_RATIO), MAX_RATIO)
    target = _TIER_TARGET_PIXELS.get(tier.upper(), _TIER_TARGET_PIXELS["1K"])
    w = max(STEP, round(math.sqrt(target * ratio) / STEP) * STEP)
    h = max(STEP, round(math.sqrt(target / ratio) / STEP) * STEP)
    shrink = min(1.0, MAX_EDGE / max(w, h), math.sqrt(MAX_PIXELS / (w * h)))
    if shrink < 1:
        w = max(STEP, math.floor(w * shrink / STEP) * STEP)
        h = max(STEP, math.floor(h * shrink / STEP) * STEP)
    cap = _TIER_MAX_PIXELS.get(tier.upper(), MAX_PIXELS)
    while w * h > cap:
        if w >= h:
            w -= STEP
        else:
            h -= STEP
    while max(w, h) > MAX_RATIO * min(w, h):
        if w > h:
            w -= STEP
        else:
            h -= STEP
    return check_flexible(Size(w, h))


def native_size(size: Size) -> Size:
    """What to ask of a provider that takes only flexible sizes: `size` itself, or for a listed size
    that breaks the multiple-of-16 rule the smallest one covering it (1920x1080 -> 1920x1088); the
    server then crops the result to `size`."""
    if size not in LISTED_SIZES:
        return size
    return Size(math.ceil(size.width / STEP) * STEP, math.ceil(size.height / STEP) * STEP)


def nearest_by_ratio(sizes: tuple[Size, ...], width: int, height: int) -> Size:
    """Of `sizes`, the one whose aspect ratio is closest (in log space) to `width:height`."""
    target = math.log(width / max(height, 1))
    return min(sizes, key=lambda s: abs(math.log(s.width / s.height) - target))


def ratio_and_tier(size: Size) -> tuple[str, str]:
    """The table's ratio nearest to `size`'s shape (`16:9`) and `size`'s tier, for dialects that take
    a ratio and a resolution instead of exact sizes."""
    target = math.log(size.width / size.height)
    ratio = min(RATIOS, key=lambda r: abs(math.log(int(r.split(":")[0]) / int(r.split(":")[1])) - target))
    return ratio, tier_of(size)
