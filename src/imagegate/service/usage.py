"""The `usage` object of OpenAI image responses, counted the way OpenAI counts image tokens."""

from __future__ import annotations

import math
from typing import Any

from imagegate.core.job import CallReport
from imagegate.core.request import Quality, Size

_OUTPUT_TOKENS_1024 = {Quality.LOW: 272, Quality.MEDIUM: 1056, Quality.HIGH: 4160}
_TILE = 512


def image_input_tokens(width: int, height: int) -> int:
    """Tokens for one input image: 85 base plus 170 per 512-px tile after fitting into 2048/768."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / _TILE) * math.ceil(h / _TILE)


def usage(prompt: str, inputs: list[tuple[int, int]], size: Size, quality: Quality, images: int) -> dict[str, Any]:
    """A usage object for `images` outputs of `size` at `quality` from `prompt` and `inputs`."""
    text_tokens = math.ceil(len(prompt) / 4)
    image_tokens = sum(image_input_tokens(w, h) for w, h in inputs)
    per_image = _OUTPUT_TOKENS_1024.get(quality, _OUTPUT_TOKENS_1024[Quality.HIGH])
    output = images * math.ceil(per_image * size.pixels / (1024 * 1024))
    return {
        "input_tokens": text_tokens + image_tokens,
        "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": text_tokens},
        "output_tokens": output,
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        "total_tokens": text_tokens + image_tokens + output,
    }


def provider_usage(reports: list[CallReport]) -> dict[str, Any] | None:
    """The providers' own `usage`, summed over the calls of a fan-out, when every call reported one."""
    usages = [report.get("usage") for report in reports]
    if not usages or not all(isinstance(u, dict) for u in usages):
        return None
    if len(usages) == 1:
        return usages[0]
    return _add_counts([u for u in usages if isinstance(u, dict)])


def _add_counts(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of `usages` added field by field; a field another usage gave another shape (a
    number where the first had an object, or the other way) is left out of the sum."""
    total: dict[str, Any] = {}
    for item in usages:
        for name, value in item.items():
            have = total.get(name)
            if isinstance(value, dict) and (have is None or isinstance(have, dict)):
                total[name] = _add_counts([have or {}, value])
            elif _is_count(value) and (have is None or _is_count(have)):
                total[name] = (have or 0) + value
    return total


def _is_count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
