"""Generation by the classic engine: it draws what it can read from a prompt and says what it could not.

What it reads (English and Chinese): a background in the colours named, or a gradient "from X to Y"
(从X到Y渐变); quoted text, laid out large as a poster, a banner, a label or a plain title; and simple
shapes — circle, square, triangle, stripes, grid or checkerboard, border — each in the colour named
just before it. Everything is drawn flat at exactly the requested size. `Drawing.describe()` is the
`revised_prompt`: what was drawn, what was only partly read, and what was not drawn at all. It is a
drawing machine, not a picture model, and says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image, ImageDraw, ImageFont

from imagegate.core.request import Size
from imagegate.engines.classic.palette import RGB, Colour, colours_in, luminance
from imagegate.engines.classic.vocabulary import QUOTES

NEUTRAL: RGB = (246, 245, 240)
SHAPES: dict[str, re.Pattern[str]] = {
    "circle": re.compile(r"\b(circles?|spheres?|balls?|dots?|discs?|orbs?)\b|圆形|圓形|圆|圓|球", re.I),
    "square": re.compile(r"\b(squares?|rectangles?|boxe?s?|cubes?|blocks?)\b|正方形|方形|矩形|方块|方塊", re.I),
    "triangle": re.compile(r"\b(triangles?|pyramids?)\b|三角", re.I),
    "stripes": re.compile(r"\b(stripes?|striped|stripy)\b|条纹|條紋", re.I),
    "checkerboard": re.compile(r"\b(checker(board|ed)?|chequered|chessboard)\b|棋盘|棋盤|格子", re.I),
    "grid": re.compile(r"\bgrid\b|网格|網格", re.I),
    "border": re.compile(r"\b(border|frame[ds]?)\b|边框|邊框|相框|画框|畫框", re.I),
}
LAYOUTS: dict[str, re.Pattern[str]] = {
    "poster": re.compile(r"\b(poster|flyer|cover)\b|海报|海報|封面", re.I),
    "banner": re.compile(r"\b(banner|header|headline|sign)\b|横幅|橫幅|标语|標語|招牌", re.I),
    "label": re.compile(r"\b(label|sticker|tag|badge|button)\b|标签|標籤|贴纸|貼紙", re.I),
}
_GRADIENT = re.compile(r"\b(gradient|fade|fading|ombre)\b|渐变|漸變|过渡|過渡", re.I)
_FROM_TO = re.compile(r"\bfrom\b.*\bto\b|从.*到|從.*到", re.I)
_HORIZONTAL = re.compile(
    r"\b(left to right|right to left|horizontal(ly)?|sideways)\b|从左到右|從左到右|横向|橫向|水平", re.I
)
_DIAGONAL = re.compile(r"\bdiagonal(ly)?\b|对角|對角|斜", re.I)
_RADIAL = re.compile(r"\b(radial|from the cent(er|re))\b|径向|徑向|从中心|從中心", re.I)
_BACKGROUND = re.compile(
    r"\b(background|backdrop|bg|wall|sky|desk|table|surface|paper|canvas|floor)\b|背景|底色|底|墙|牆|天空|桌", re.I
)
_TEXT_INTRO = re.compile(
    r"\b(saying|says|that reads|reading|reads|titled|entitled|with the (words?|text|title|caption))\b|"
    r"写着|寫著|写上|寫上|标题|標題|字样|字樣|文字|文案",
    re.I,
)
_INK = re.compile(r"\b(text|letters?|lettering|font|title|words?|writing|type)\b|文字|字体|字體|字", re.I)
_CLAUSES = re.compile(r"[,.;!?:，。；！？：、\n]+")
_FILLER = re.compile(
    r"\b(a|an|the|with|of|on|in|at|and|or|from|to|into|its|some|one|two|three|make|draw|paint|create|generate|"
    r"render|show|showing|image|picture|saying|says|reads?|that|which|is|are|colou?r(ed)?|big|large|small|simple|"
    r"plain|solid|flat|centered|centred|middle|cent(er|re))\b|"
    r"一个|一張|一张|个|個|的|色|有|在|上|中间|中間|画|畫|生成|写着|寫著|一|和|与|與|及",
    re.I,
)


@dataclass
class Drawing:
    """What the classic engine will draw for a prompt, and what it cannot."""

    background: list[RGB] = field(default_factory=list)
    """One colour (solid) or several (a gradient, in order)."""
    direction: str = "vertical"
    shapes: list[tuple[str, RGB | None]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    layout: str = "title"
    ink: RGB | None = None
    drawn: list[str] = field(default_factory=list)
    partly: list[str] = field(default_factory=list)
    """Clauses only partly drawn (their colours and shapes, not the rest)."""
    unperformed: list[str] = field(default_factory=list)

    def describe(self, notes: list[str]) -> str:
        """The `revised_prompt`: what was drawn, what was read only in part, and what was not drawn."""
        parts = ["classic engine (draws flat colours, shapes and text; not a picture model)"]
        parts.append("drew: " + "; ".join([*self.drawn, *notes]))
        if self.partly:
            parts.append("only colours, shapes and text taken from: " + "; ".join(self.partly))
        if self.unperformed:
            parts.append("not drawn (outside the classic vocabulary): " + "; ".join(self.unperformed))
        return " — ".join(parts)


def _owner(colour: Colour, clause: str, shapes: list[tuple[int, str]]) -> str | None:
    """The shape a colour word qualifies: the first shape named after it in the same clause, with no
    other colour in between."""
    following = [(start, name) for start, name in shapes if start >= colour.end]
    if not following:
        return None
    start, name = min(following)
    between = clause[colour.end : start]
    return None if colours_in(between) else name


def read(prompt: str) -> Drawing:
    """Read `prompt` into a Drawing (quoted text, colours, gradient, shapes, layout)."""
    drawing = Drawing()
    drawing.texts = [next(g for g in m.groups() if g).strip() for m in QUOTES.finditer(prompt)]
    drawing.texts = [text for text in drawing.texts if text]
    bare = QUOTES.sub(" ", prompt)
    for name, pattern in LAYOUTS.items():
        if pattern.search(bare):
            drawing.layout = name
            break
    loose: list[RGB] = []
    for clause in (c.strip() for c in _CLAUSES.split(bare)):
        if len(re.sub(r"[\W_]+", "", clause)) < 2:
            continue
        _read_clause(clause, drawing, loose)
    if not drawing.background:
        drawing.background = loose[:1] or [NEUTRAL]
    return drawing


def _read_clause(clause: str, drawing: Drawing, loose: list[RGB]) -> None:
    colours = colours_in(clause)
    shapes = sorted((m.start(), name) for name, pattern in SHAPES.items() for m in pattern.finditer(clause))
    known = [_GRADIENT, _INK, _TEXT_INTRO, *LAYOUTS.values()]
    understood = bool(colours or shapes or any(pattern.search(clause) for pattern in known))
    if len(colours) >= 2 and len(drawing.background) < 2 and (_GRADIENT.search(clause) or _FROM_TO.search(clause)):
        drawing.background = [colour.rgb for colour in colours]
        drawing.direction = _direction(clause)
        names = " to ".join(colour.name for colour in colours)
        drawing.drawn.append(f"a {drawing.direction} gradient from {names}")
        colours = []
    owners = {colour: _owner(colour, clause, shapes) for colour in colours}
    for colour in colours:
        if owners[colour] is not None:
            continue
        if _INK.match(clause[colour.end :].lstrip()):
            drawing.ink = colour.rgb
            drawing.drawn.append(f"{colour.name} text")
        elif not drawing.background and (_BACKGROUND.search(clause) or not loose):
            drawing.background = [colour.rgb]
            drawing.drawn.append(f"a {colour.name} background")
        else:
            loose.append(colour.rgb)
    for start, name in shapes:
        owned = next((c for c in reversed(colours) if owners[c] == name and c.end <= start), None)
        word = clause[start:].split()[0]
        kind = "horizontal stripes" if name == "stripes" and _HORIZONTAL.search(clause) else name
        drawing.shapes.append((kind, owned.rgb if owned else None))
        label = f"{owned.name + ' ' if owned else ''}{kind}"
        label = label if kind.endswith("s") else f"a {label}"
        drawing.drawn.append(label if word.lower().startswith(name[:4]) else f"{label} (for “{word}”)")
    if not understood:
        drawing.unperformed.append(clause)
    elif len(re.sub(r"[\W_]+", "", _strip_known(clause))) >= 3:
        drawing.partly.append(clause)


def _strip_known(clause: str) -> str:
    text = clause
    for colour in reversed(colours_in(text)):
        text = text[: colour.start] + " " + text[colour.end :]
    for pattern in [*SHAPES.values(), *LAYOUTS.values(), _GRADIENT, _FROM_TO, _BACKGROUND, _TEXT_INTRO, _INK, _FILLER]:
        text = pattern.sub(" ", text)
    for pattern in (_HORIZONTAL, _DIAGONAL, _RADIAL):
        text = pattern.sub(" ", text)
    return text


def _direction(clause: str) -> str:
    if _RADIAL.search(clause):
        return "radial"
    if _DIAGONAL.search(clause):
        return "diagonal"
    return "horizontal" if _HORIZONTAL.search(clause) else "vertical"


def _ramp(colours: list[RGB]) -> list[RGB]:
    """256 colours evenly through `colours` (two or more stops)."""
    out = []
    for x in range(256):
        position = x / 255 * (len(colours) - 1)
        left = min(int(position), len(colours) - 2)
        t = position - left
        a, b = colours[left], colours[left + 1]
        out.append((round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t)))
    return out


def gradient(colours: list[RGB], size: Size, direction: str) -> Image.Image:
    """A gradient through `colours` across `size`: vertical (top to bottom), horizontal (left to
    right), diagonal (top left to bottom right) or radial (centre outwards)."""
    ramp = _ramp(colours)
    if direction == "radial":
        position = Image.radial_gradient("L").resize((size.width, size.height), Image.Resampling.BILINEAR)
    else:
        across = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90)  # 0 at the left
        if direction == "vertical":
            across = Image.linear_gradient("L")  # 0 at the top
        elif direction == "diagonal":
            corner = Image.linear_gradient("L")
            across = Image.blend(across, corner, 0.5)
        position = across.resize((size.width, size.height), Image.Resampling.BILINEAR)
    bands = [position.point([colour[band] for colour in ramp]) for band in range(3)]
    return Image.merge("RGB", bands)


FIGURES = ("circle", "square", "triangle")
_PLACES = {"poster": " as a poster's title", "banner": " on a banner", "label": " on a label", "title": ""}
PATTERNS = ("stripes", "horizontal stripes", "checkerboard", "grid")


def contrast(rgb: RGB) -> RGB:
    """A near-black or near-white ink that reads on `rgb`."""
    return (24, 24, 28) if luminance(rgb) > 140 else (248, 248, 244)


class TextFonts(Protocol):
    """Where the drawing gets its fonts (the classic engine's TextRenderer)."""

    def font(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont: ...

    def missing_glyphs(self, text: str) -> str: ...


def render(drawing: Drawing, size: Size, fonts: TextFonts, transparent: bool) -> tuple[Image.Image, list[str]]:
    """The drawing at exactly `size` (RGBA on a transparent canvas when `transparent`), and notes on
    what could not be drawn (text whose glyphs the font lacks)."""
    notes: list[str] = []
    base = _mean(drawing.background)
    if transparent:
        canvas = Image.new("RGBA", (size.width, size.height), (0, 0, 0, 0))
        notes.append("a transparent background, as asked")
    elif len(drawing.background) > 1:
        canvas = gradient(drawing.background, size, drawing.direction)
    else:
        canvas = Image.new("RGB", (size.width, size.height), drawing.background[0])
    ink = drawing.ink or contrast(base)
    draw = ImageDraw.Draw(canvas)
    for name, colour in drawing.shapes:
        if name in PATTERNS:
            _pattern(draw, name, colour or ink, size)
    figures = [(name, colour or ink) for name, colour in drawing.shapes if name in FIGURES]
    texts = []
    for text in drawing.texts:
        missing = fonts.missing_glyphs(text)
        if missing:
            drawing.unperformed.append(f"text “{text}” (the font has no glyphs for {missing})")
        else:
            texts.append(text)
            notes.append(f"the text “{text}”" + _PLACES[drawing.layout if len(texts) == 1 else "title"])
    figure_box, text_box = _regions(size, bool(figures), bool(texts), drawing.layout)
    _figures(draw, figures, figure_box)
    if any(name == "border" for name, _ in drawing.shapes):
        colour = next(c for n, c in drawing.shapes if n == "border") or ink
        width = max(4, min(size.width, size.height) // 30)
        draw.rectangle((0, 0, size.width - 1, size.height - 1), outline=colour, width=width)
    if texts:
        _texts(canvas, texts, text_box, drawing.layout, ink, fonts)
    return canvas, notes


def _mean(colours: list[RGB]) -> RGB:
    return (
        sum(c[0] for c in colours) // len(colours),
        sum(c[1] for c in colours) // len(colours),
        sum(c[2] for c in colours) // len(colours),
    )


Box = tuple[int, int, int, int]


def _regions(size: Size, figures: bool, texts: bool, layout: str) -> tuple[Box, Box]:
    """Where the figures and the text go: shared canvas when only one of them is drawn; a poster puts
    its text on top, other layouts put the figures above the text."""
    whole = (0, 0, size.width, size.height)
    if not (figures and texts):
        return whole, whole
    split = size.height * 45 // 100
    if layout == "poster":
        return (0, split, size.width, size.height), (0, 0, size.width, split)
    return (0, 0, size.width, size.height - split), (0, size.height - split, size.width, size.height)


def _pattern(draw: ImageDraw.ImageDraw, name: str, colour: RGB, size: Size) -> None:
    step = max(8, min(size.width, size.height) // 8)
    if name == "grid":
        width = max(2, min(size.width, size.height) // 200)
        for x in range(0, size.width + 1, step):
            draw.line((x, 0, x, size.height), fill=colour, width=width)
        for y in range(0, size.height + 1, step):
            draw.line((0, y, size.width, y), fill=colour, width=width)
    elif name == "checkerboard":
        for row, y in enumerate(range(0, size.height, step)):
            for column, x in enumerate(range(0, size.width, step)):
                if (row + column) % 2 == 0:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=colour)
    else:
        band = max(4, step // 2)
        for offset in range(0, max(size.width, size.height), 2 * band):
            if name == "horizontal stripes":
                draw.rectangle((0, offset, size.width, offset + band - 1), fill=colour)
            else:
                draw.rectangle((offset, 0, offset + band - 1, size.height), fill=colour)


def _figures(draw: ImageDraw.ImageDraw, figures: list[tuple[str, RGB]], box: Box) -> None:
    """Figures side by side, centred in `box`, each as large as its share allows."""
    if not figures:
        return
    left, top, right, bottom = box
    cell = (right - left) / len(figures)
    extent = int(min(cell, bottom - top) * 0.62)
    for index, (name, colour) in enumerate(figures):
        cx = int(left + cell * (index + 0.5))
        cy = (top + bottom) // 2
        x0, y0, x1, y1 = cx - extent // 2, cy - extent // 2, cx + extent // 2, cy + extent // 2
        if name == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif name == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)


def _texts(canvas: Image.Image, texts: list[str], box: Box, layout: str, ink: RGB, fonts: TextFonts) -> None:
    """Quoted texts stacked in `box`, each line as large as fits: the first as the title, the others
    smaller; a banner puts them on a band across the canvas, a label on a card."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    draw = ImageDraw.Draw(canvas)
    if layout in ("banner", "label"):
        band = (left, top + height // 4, right, bottom - height // 4)
        if layout == "label":
            inset = width // 8
            band = (left + inset, top + height // 5, right - inset, bottom - height // 5)
        fill = contrast(ink)
        radius = 0 if layout == "banner" else min(width, height) // 20
        draw.rounded_rectangle(band, radius=radius, fill=fill, outline=ink, width=max(2, height // 80))
        left, top, right, bottom = band
        width, height = right - left, bottom - top
    shares = [2.0] + [1.0] * (len(texts) - 1)
    total = sum(shares)
    y = top
    for text, share in zip(texts, shares, strict=True):
        slot = int(height * share / total)
        lines, font = _fit(text, int(width * 0.86), int(slot * 0.8), fonts)
        line_height = slot // len(lines)
        for index, line in enumerate(lines):
            x0, y0, x1, y1 = draw.textbbox((0, 0), line, font=font)
            x = left + (width - (x1 - x0)) // 2 - x0
            ty = y + index * line_height + (line_height - (y1 - y0)) // 2 - y0
            stroke = max(1, getattr(font, "size", 20) // 28)
            draw.text((x, ty), line, font=font, fill=ink, stroke_width=stroke, stroke_fill=contrast(ink))
        y += slot


def _fit(
    text: str, width: int, height: int, fonts: TextFonts
) -> tuple[list[str], ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    """The text broken into at most three balanced lines, with the largest font that fits `width` x
    `height`."""
    best: tuple[int, list[str]] = (0, [text])
    words = text.split() if " " in text.strip() else list(text)
    joiner = " " if " " in text.strip() else ""
    for count in range(1, min(3, len(words)) + 1):
        per = math.ceil(len(words) / count)
        lines = [joiner.join(words[i : i + per]) for i in range(0, len(words), per)]
        size = max(8, height // len(lines))
        probe = fonts.font(size)
        widest = max(probe.getbbox(line)[2] - probe.getbbox(line)[0] for line in lines) or 1
        size = max(8, min(size, int(size * width / widest)))
        if size > best[0]:
            best = (size, lines)
    return best[1], fonts.font(best[0])
