"""Colour words in English and Chinese (simplified and traditional), read from a prompt.

`colours_in(text)` finds each colour word with where it stands, so a reader can tell which colour
belongs to which thing ("a red circle on a blue background"). "light"/"dark" and 浅/深 before a colour
shade it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RGB = tuple[int, int, int]

# Longer names first, so "sky blue" wins over "blue" and 天蓝 over 蓝.
_ENGLISH: dict[str, RGB] = {
    "sky blue": (135, 206, 235),
    "navy blue": (20, 33, 80),
    "royal blue": (65, 105, 225),
    "hot pink": (255, 105, 180),
    "off white": (250, 248, 240),
    "red": (220, 30, 40),
    "crimson": (200, 20, 60),
    "maroon": (128, 0, 0),
    "orange": (255, 140, 0),
    "amber": (255, 191, 0),
    "yellow": (255, 215, 0),
    "gold": (212, 175, 55),
    "golden": (212, 175, 55),
    "green": (34, 160, 60),
    "lime": (50, 205, 50),
    "olive": (128, 128, 0),
    "mint": (152, 230, 190),
    "teal": (0, 128, 128),
    "cyan": (0, 200, 220),
    "turquoise": (64, 224, 208),
    "blue": (30, 90, 220),
    "azure": (0, 127, 255),
    "navy": (20, 33, 80),
    "indigo": (75, 0, 130),
    "purple": (128, 50, 170),
    "violet": (143, 0, 255),
    "lavender": (200, 180, 240),
    "magenta": (220, 0, 160),
    "pink": (255, 160, 190),
    "coral": (255, 127, 80),
    "peach": (255, 204, 164),
    "brown": (120, 72, 40),
    "beige": (230, 215, 185),
    "tan": (210, 180, 140),
    "cream": (255, 248, 220),
    "ivory": (255, 255, 240),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "silver": (192, 192, 192),
    "charcoal": (54, 69, 79),
}
_CHINESE: dict[str, RGB] = {
    "天蓝": (135, 206, 235),
    "天藍": (135, 206, 235),
    "藏青": (20, 33, 80),
    "海军蓝": (20, 33, 80),
    "海軍藍": (20, 33, 80),
    "宝蓝": (65, 105, 225),
    "寶藍": (65, 105, 225),
    "米色": (230, 215, 185),
    "米白": (250, 248, 240),
    "咖啡": (111, 78, 55),
    "金色": (212, 175, 55),
    "银色": (192, 192, 192),
    "銀色": (192, 192, 192),
    "红": (220, 30, 40),
    "紅": (220, 30, 40),
    "橙": (255, 140, 0),
    "橘": (255, 140, 0),
    "黄": (255, 215, 0),
    "黃": (255, 215, 0),
    "绿": (34, 160, 60),
    "綠": (34, 160, 60),
    "青": (0, 200, 220),
    "蓝": (30, 90, 220),
    "藍": (30, 90, 220),
    "紫": (128, 50, 170),
    "粉": (255, 160, 190),
    "棕": (120, 72, 40),
    "褐": (120, 72, 40),
    "金": (212, 175, 55),
    "银": (192, 192, 192),
    "銀": (192, 192, 192),
    "白": (255, 255, 255),
    "黑": (0, 0, 0),
    "灰": (128, 128, 128),
}
_SHADE = r"(?:(?P<en_shade>light|pale|pastel|dark|deep)[ -])?"
_ZH_SHADE = r"(?P<zh_shade>浅|淺|淡|深|暗)?"
_PATTERN = re.compile(
    _SHADE
    + r"\b(?P<en>"
    + "|".join(re.escape(name) for name in sorted(_ENGLISH, key=len, reverse=True))
    + r")\b|"
    + _ZH_SHADE
    + "(?P<zh>"
    + "|".join(re.escape(name) for name in sorted(_CHINESE, key=len, reverse=True))
    + ")",
    re.IGNORECASE,
)
_LIGHTER = {"light", "pale", "pastel", "浅", "淺", "淡"}


@dataclass(frozen=True)
class Colour:
    """A colour word found in a prompt: its name as written, its value, and where it ends."""

    name: str
    rgb: RGB
    start: int
    end: int


def _shaded(rgb: RGB, shade: str | None) -> RGB:
    if not shade:
        return rgb
    if shade.lower() in _LIGHTER:
        return (
            round(rgb[0] + (255 - rgb[0]) * 0.55),
            round(rgb[1] + (255 - rgb[1]) * 0.55),
            round(rgb[2] + (255 - rgb[2]) * 0.55),
        )
    return round(rgb[0] * 0.55), round(rgb[1] * 0.55), round(rgb[2] * 0.55)


def colours_in(text: str) -> list[Colour]:
    """Every colour word of `text`, in order."""
    found = []
    for match in _PATTERN.finditer(text):
        if match.group("en"):
            rgb = _shaded(_ENGLISH[match.group("en").lower()], match.group("en_shade"))
        else:
            rgb = _shaded(_CHINESE[match.group("zh")], match.group("zh_shade"))
        found.append(Colour(match.group(0).strip(), rgb, match.start(), match.end()))
    return found


def luminance(rgb: RGB) -> float:
    """Relative brightness 0–255 (Rec. 601 weights), to pick a legible ink on a colour."""
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
