"""Pixel operations of the classic engine. Each takes and returns an RGB or RGBA image of one size
(rotation may swap the edges) and leaves the alpha channel alone."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from PIL import Image, ImageChops, ImageCms, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps, ImageStat

Operation = Callable[[Image.Image, str], Image.Image]
DEFAULT_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
)


def _on_rgb(fn: Callable[[Image.Image], Image.Image]) -> Callable[[Image.Image, str], Image.Image]:
    """Lift an RGB-only transform to RGB/RGBA images, keeping alpha."""

    def apply(img: Image.Image, _arg: str) -> Image.Image:
        out = fn(img.convert("RGB") if img.mode == "RGBA" else img)
        if out.mode != "RGB" or out is img:
            out = out.convert("RGB")
        if img.mode == "RGBA":
            out.putalpha(img.getchannel("A"))
        return out

    return apply


def _channel_scale(r: float, g: float, b: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        bands = [
            band.point(lambda v, k=k: min(255, round(v * k))) for band, k in zip(img.split(), (r, g, b), strict=True)
        ]
        return Image.merge("RGB", bands)

    return apply


_SRGB_TO_LAB = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
_LAB_TO_SRGB = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")


def _dark_mode(img: Image.Image) -> Image.Image:
    """Invert perceptual lightness and keep colour: L* -> 100 - L* in CIELAB with a* and b* unchanged,
    so light backgrounds turn dark, dark text turns light, and hues stay what they were."""
    lightness, a, b = _SRGB_TO_LAB.apply(img).split()
    return _LAB_TO_SRGB.apply(Image.merge("LAB", (ImageOps.invert(lightness), a, b)))


@cache
def _sepia_palette() -> bytes:
    """The sepia tone of each grey level, as `ImageOps.colorize` makes it."""
    ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
    return ImageOps.colorize(ramp, black="#2b1d0e", white="#fff3dc", mid="#a9835a").tobytes()


def _sepia(img: Image.Image) -> Image.Image:
    # The grey image read through a palette: the same pixels as colorize, in one pass instead of three.
    gray = ImageOps.grayscale(img)
    gray.putpalette(_sepia_palette())
    return gray.convert("RGB")


def _sketch(img: Image.Image) -> Image.Image:
    gray = ImageOps.grayscale(img)
    edges = ImageOps.invert(gray.filter(ImageFilter.FIND_EDGES))
    shade = ImageEnhance.Brightness(ImageOps.autocontrast(gray)).enhance(1.6)
    return ImageChops.multiply(ImageOps.autocontrast(edges), shade).convert("RGB")


def _cartoon(img: Image.Image) -> Image.Image:
    flat = ImageOps.posterize(img.filter(ImageFilter.MedianFilter(5)), 3)
    flat = ImageEnhance.Color(flat).enhance(1.4)
    lines = ImageOps.grayscale(img).filter(ImageFilter.FIND_EDGES).point(lambda v: 0 if v > 40 else 255)
    return ImageChops.multiply(flat, lines.convert("RGB"))


def _pixelate(img: Image.Image) -> Image.Image:
    w, h = img.size
    block = max(4, min(w, h) // 64)
    small = img.resize((max(1, w // block), max(1, h // block)), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _rotate(img: Image.Image, arg: str) -> Image.Image:
    degrees = int(arg.split("°")[0]) if arg else 90
    turns = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    return img.transpose(turns[degrees]) if degrees in turns else img


def _flip(img: Image.Image, arg: str) -> Image.Image:
    axis = Image.Transpose.FLIP_TOP_BOTTOM if arg == "vertical" else Image.Transpose.FLIP_LEFT_RIGHT
    return img.transpose(axis)


def border_colour(img: Image.Image) -> tuple[int, int, int]:
    """The median colour of a one-pixel frame around `img`."""
    rgb = img.convert("RGB")
    w, h = rgb.size
    frame = Image.new("RGB", (2 * (w + h), 1))
    for i, strip in enumerate((rgb.crop((0, 0, w, 1)), rgb.crop((0, h - 1, w, h)))):
        frame.paste(strip, (i * w, 0))
    for i, strip in enumerate((rgb.crop((0, 0, 1, h)), rgb.crop((w - 1, 0, w, h)))):
        frame.paste(strip.transpose(Image.Transpose.ROTATE_90), (2 * w + i * h, 0))
    r, g, b = (int(v) for v in ImageStat.Stat(frame).median)
    return r, g, b


def remove_background(img: Image.Image, _arg: str = "") -> Image.Image:
    """Make the region whose colour matches the border transparent, with a soft edge."""
    rgb = img.convert("RGB")
    distance = ImageChops.difference(rgb, Image.new("RGB", rgb.size, border_colour(rgb))).convert("L")
    alpha = distance.point(lambda v: 0 if v < 18 else (255 if v > 48 else (v - 18) * 255 // 30))
    if img.mode == "RGBA":
        alpha = ImageChops.multiply(alpha, img.getchannel("A"))
    out = rgb.copy()
    out.putalpha(alpha)
    return out


class TextRenderer:
    """Draws quoted text as a caption band; reports text whose glyphs the font lacks."""

    def __init__(self, font_path: str | None) -> None:
        candidates = [font_path] if font_path else list(DEFAULT_FONTS)
        self.path = next((p for p in candidates if p and Path(p).is_file()), None)

    def missing_glyphs(self, text: str) -> str:
        """Characters of `text` the font cannot draw (CJK without a CJK font, for example)."""
        if self.path is None:
            return ""
        font = ImageFont.truetype(self.path, 16)
        notdef = font.getmask("\uffff").getbbox()
        return "".join(sorted({ch for ch in text if not ch.isspace() and font.getmask(ch).getbbox() == notdef}))

    def font(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        """The renderer's font at `size` pixels (Pillow's built-in scalable font without a font file)."""
        return ImageFont.truetype(self.path, size) if self.path else ImageFont.load_default(size)

    def __call__(self, img: Image.Image, text: str) -> Image.Image:
        w, h = img.size
        size = max(12, min(h // 10, int(w * 1.6 / max(len(text), 1))))
        font = self.font(size)
        out = img.copy()
        draw = ImageDraw.Draw(out)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = (w - (right - left)) // 2 - left
        y = h - (bottom - top) - h // 16 - top
        band = (0, y + top - size // 4, w, y + bottom + size // 4)
        overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
        ImageDraw.Draw(overlay).rectangle(band, fill=(0, 0, 0, 110))
        out = Image.alpha_composite(out.convert("RGBA"), overlay)
        ImageDraw.Draw(out).text(
            (x, y),
            text,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=max(1, size // 18),
            stroke_fill=(0, 0, 0, 255),
        )
        return out if img.mode == "RGBA" else out.convert("RGB")


OPERATIONS: dict[str, Operation] = {
    "dark_mode": _on_rgb(_dark_mode),
    "grayscale": _on_rgb(lambda im: ImageOps.grayscale(im).convert("RGB")),
    "invert": _on_rgb(ImageOps.invert),
    "sepia": _on_rgb(_sepia),
    "blur": _on_rgb(lambda im: im.filter(ImageFilter.GaussianBlur(max(2, min(im.size) // 200)))),
    "sharpen": _on_rgb(lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=160, threshold=2))),
    "brighter": _on_rgb(lambda im: ImageEnhance.Brightness(im).enhance(1.3)),
    "darker": _on_rgb(lambda im: ImageEnhance.Brightness(im).enhance(0.7)),
    "warmer": _on_rgb(_channel_scale(1.12, 1.03, 0.88)),
    "cooler": _on_rgb(_channel_scale(0.88, 1.0, 1.12)),
    "contrast": _on_rgb(lambda im: ImageEnhance.Contrast(im).enhance(1.4)),
    "saturate": _on_rgb(lambda im: ImageEnhance.Color(im).enhance(1.5)),
    "sketch": _on_rgb(_sketch),
    "cartoon": _on_rgb(_cartoon),
    "pixelate": _on_rgb(_pixelate),
    "emboss": _on_rgb(lambda im: im.filter(ImageFilter.EMBOSS)),
    "posterize": _on_rgb(lambda im: ImageOps.posterize(im, 3)),
    "rotate": _rotate,
    "flip": _flip,
    "remove_background": remove_background,
}
GEOMETRIC = frozenset({"rotate", "flip"})
