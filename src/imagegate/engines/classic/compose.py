"""Composition of several references into one canvas, in prompt order (SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PIL import Image

from imagegate.core.request import Size
from imagegate.imaging import fit_cover


def side_by_side(images: Iterable[Image.Image], count: int, size: Size) -> Image.Image:
    """Split the canvas into `count` equal columns (rows for a portrait canvas), one cover-fitted
    image each. `images` is consumed one at a time, so only one full-size input is alive at once."""
    horizontal = size.width >= size.height
    mode = "RGBA"
    canvas = Image.new(mode, (size.width, size.height), (255, 255, 255, 255))
    span = size.width if horizontal else size.height
    edges = [round(i * span / count) for i in range(count + 1)]
    for img, start, end in zip(images, edges, edges[1:], strict=False):
        cell = Size(end - start, size.height) if horizontal else Size(size.width, end - start)
        tile = fit_cover(img, cell).convert(mode)
        canvas.paste(tile, (start, 0) if horizontal else (0, start))
    return canvas


def onto(foreground: Callable[[], Image.Image], background: Callable[[], Image.Image], size: Size) -> Image.Image:
    """Place the foreground (contained in half the canvas, alpha respected) on the lower centre of the
    background cover-fitted to `size`. Each is decoded (by calling it) only when it is used, so only
    one full-size input is alive at once."""
    decoded = background()
    keep_alpha = decoded.mode == "RGBA"
    base = fit_cover(decoded, size).convert("RGBA")
    del decoded
    box = Size(max(1, size.width // 2), max(1, size.height // 2))
    decoded = foreground()
    scale = min(box.width / decoded.width, box.height / decoded.height)
    fg = fit_cover(decoded, Size(max(1, round(decoded.width * scale)), max(1, round(decoded.height * scale))))
    del decoded
    fg = fg.convert("RGBA")
    x = (size.width - fg.width) // 2
    y = size.height - fg.height - size.height // 12
    base.alpha_composite(fg, (x, max(0, y)))
    return base if keep_alpha else base.convert("RGB")
