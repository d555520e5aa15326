"""The classic engine's instruction vocabulary: prompt text -> operations, in English and Chinese.

A prompt is split into clauses; each clause yields the operations it names, or, when it names
none, is reported back as not performed (never silently faked). Quoted text becomes a text overlay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Op:
    """One recognised instruction; `arg` parametrises it (degrees, axis, text...)."""

    name: str
    arg: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.arg}".strip() if self.name != "text" else f"text “{self.arg}”"


@dataclass
class Plan:
    """What the engine will do for a prompt, and what it cannot."""

    ops: list[Op] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unperformed: list[str] = field(default_factory=list)
    compose: str = "side_by_side"
    order: list[int] = field(default_factory=list)
    """0-based image indices in the order the prompt mentions them (图1 -> 0)."""


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# (operation, pattern). English words are bounded; Chinese has no word boundaries.
VOCABULARY: list[tuple[str, re.Pattern[str]]] = [
    ("dark_mode", _rx(r"\b(dark|night)[ -]?(mode|theme)\b|暗色|夜间模式|深色模式|暗黑模式|黑夜模式")),
    (
        "grayscale",
        _rx(r"\b(gr[ae]y[ -]?scale|black[ -]and[ -]white|monochrome|b&w|desaturate)\b|黑白|灰度|去色"),
    ),
    ("invert", _rx(r"\binvert(ed)?\b|\bnegative\b|反色|反相|负片|颜色反转")),
    ("sepia", _rx(r"\b(sepia|vintage|old[ -]photo|retro)\b|复古|怀旧|老照片|棕褐")),
    ("blur", _rx(r"\b(blur(ry|red)?|defocus)\b|模糊|虚化")),
    ("sharpen", _rx(r"\b(sharpen|sharper|crisper)\b|锐化|更清晰")),
    ("brighter", _rx(r"\b(brighten|brighter|lighten|lighter|bright)\b|提亮|更亮|调亮|变亮|明亮")),
    ("darker", _rx(r"\b(darken|darker|dim)\b|调暗|变暗|更暗|压暗")),
    ("warmer", _rx(r"\b(warmer|warm (tone|tones|colou?rs?|light))\b|暖色|暖调|更暖|偏暖")),
    ("cooler", _rx(r"\b(cooler|cool (tone|tones|colou?rs?)|cold tones?)\b|冷色|冷调|更冷|偏冷")),
    (
        "contrast",
        _rx(r"\b(more|higher|increase[ds]?|boost(ed)?|strong(er)?) contrast\b|\bcontrast(y)?\b|对比度|增强对比"),
    ),
    ("saturate", _rx(r"\b(vivid|saturat(e|ed|ion)|more colou?rful)\b|鲜艳|饱和")),
    ("rotate", _rx(r"\b(rotate|rotated|turn)\b|旋转|向左转|向右转")),
    ("flip", _rx(r"\b(flip(ped)?|mirror(ed)?|upside[ -]down)\b|翻转|镜像|倒置")),
    ("sketch", _rx(r"\b(pencil[ -]?sketch|sketch|line[ -]art|pencil drawing)\b|素描|铅笔画|线稿")),
    ("cartoon", _rx(r"\b(cartoon(ish|ify)?|comic|toon)\b|卡通|漫画|动漫")),
    ("pixelate", _rx(r"\b(pixel(ate|ated)?|mosaic|8[- ]?bit)\b|像素化|马赛克|像素风")),
    ("emboss", _rx(r"\bemboss(ed)?\b|浮雕")),
    ("posterize", _rx(r"\bposteri[sz]e\b|色调分离")),
    (
        "remove_background",
        _rx(r"\b(remove|cut out|drop)\b.{0,20}\bbackground\b|transparent background|去背景|抠图|透明背景|去除背景"),
    ),
]
_KEEP = _rx(r"\b(keep|preserve|retain|maintain|unchanged|identical|intact|same)\b|保持|不变|保留|不要改")
QUOTES = re.compile(r"“([^”]{1,200})”|「([^」]{1,200})」|\"([^\"]{1,200})\"|(?<![A-Za-z])'([^']{1,200})'(?![A-Za-z])")
_BLACK_AND_WHITE = _rx(r"black and white")
_SENTENCES = re.compile(r"[.;!?。；！？\n]+")
_CLAUSES = re.compile(r"[,:，：、]+|\s+(?:and then|then|and|but)\s+|然后|并且|同时|再")
_TEXT_WORDS = _rx(
    r"\b(add|put|write|render|the|a|text|caption|title|words?|saying|that reads?|with)\b|加上|添加|写上|文字|文案|标题|字样"
)
_DEGREES = re.compile(r"(90|180|270)\s*(°|度|deg|degrees)?")
_LEFT = _rx(r"\b(left|counter[ -]?clockwise|anti[ -]?clockwise)\b|向左|逆时针|左转")
_VERTICAL = _rx(r"\b(vertical(ly)?|upside[ -]down|top[ -]to[ -]bottom)\b|垂直|上下|倒置")
_IMAGE_REF = re.compile(r"(?:图|圖|image\s*|picture\s*|photo\s*|img\s*)(\d{1,2})", re.IGNORECASE)
_ONTO = _rx(r"\b(onto|into|on top of|inside|over)\b|放进|放到|放入|贴到|贴在|合成到|放在|置于")


def _arg_for(name: str, clause: str) -> str:
    if name == "rotate":
        match = _DEGREES.search(clause)
        degrees = int(match.group(1)) if match else 90
        if _LEFT.search(clause):
            degrees = (360 - degrees) % 360
        return f"{degrees}° clockwise"
    if name == "flip":
        return "vertical" if _VERTICAL.search(clause) else "horizontal"
    return ""


def _is_noise(clause: str) -> bool:
    return len(re.sub(r"[\W_]+", "", clause)) < 2


def plan(prompt: str, image_count: int) -> Plan:
    """Read `prompt` into a Plan for `image_count` inputs (composition order and mode included)."""
    result = Plan()
    texts = [next(g for g in m.groups() if g) for m in QUOTES.finditer(prompt)]
    remainder = _BLACK_AND_WHITE.sub("black-and-white", QUOTES.sub(" ", prompt))
    seen: set[Op] = set()
    for sentence in (x.strip() for x in _SENTENCES.split(remainder)):
        if _is_noise(sentence):
            continue
        if _KEEP.search(sentence) and not any(p.search(sentence) for _, p in VOCABULARY):
            result.kept.append(sentence)
            continue
        for clause in (c.strip() for c in _CLAUSES.split(sentence)):
            if _is_noise(clause):
                continue
            found = [Op(name, _arg_for(name, clause)) for name, pattern in VOCABULARY if pattern.search(clause)]
            for op in found:
                if op not in seen:
                    seen.add(op)
                    result.ops.append(op)
            if found or (_IMAGE_REF.search(clause) and image_count > 1):
                continue
            if texts and _is_noise(_TEXT_WORDS.sub("", clause)):
                continue
            (result.kept if _KEEP.search(clause) else result.unperformed).append(clause)
    if any(op.name == "dark_mode" for op in result.ops):
        # "invert the colour scheme" next to dark mode describes the dark mode itself.
        result.ops = [op for op in result.ops if op.name != "invert"]
    result.ops.extend(Op("text", text.strip()) for text in texts if text.strip())
    mentioned = [int(n) - 1 for n in _IMAGE_REF.findall(prompt) if 0 < int(n) <= image_count]
    result.order = list(dict.fromkeys(mentioned)) + [i for i in range(image_count) if i not in mentioned]
    if image_count > 1 and len(set(mentioned)) >= 2 and _ONTO.search(prompt):
        result.compose = "onto"
    return result


def describe(result: Plan, extra_notes: list[str]) -> str:
    """The `revised_prompt`: what was applied, what was kept, and what could not be done."""
    parts = ["classic engine"]
    applied = [op.label for op in result.ops] + extra_notes
    parts.append("applied: " + (", ".join(applied) if applied else "nothing (no known instruction)"))
    if result.kept:
        parts.append("kept as asked: " + "; ".join(result.kept))
    if result.unperformed:
        parts.append("not performed (outside the classic vocabulary): " + "; ".join(result.unperformed))
    return " — ".join(parts)
