"""The classic engine: every vocabulary entry in English and Chinese, geometry, composition, honesty."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops

from imagegate.config import ImagingSettings
from imagegate.core.catalog import Catalog
from imagegate.core.job import Job
from imagegate.core.request import Background, EditRequest, OutputFormat, Size
from imagegate.engines.classic.engine import ClassicEngine
from imagegate.engines.classic.vocabulary import VOCABULARY, plan
from imagegate.imaging import open_image
from tests.conftest import decode, make_image

SQUARE = Size(1024, 1024)
PHRASES = {
    "dark_mode": ("convert to dark mode", "改成夜间模式"),
    "grayscale": ("make it black and white", "转成黑白"),
    "invert": ("invert the colors", "反色"),
    "sepia": ("give it a sepia look", "做成复古老照片"),
    "blur": ("blur it", "模糊处理"),
    "sharpen": ("sharpen the photo", "锐化"),
    "brighter": ("make it brighter", "提亮一点"),
    "darker": ("make it darker", "调暗"),
    "warmer": ("warmer tones", "暖色调"),
    "cooler": ("cooler tones please", "冷色调"),
    "contrast": ("more contrast", "增强对比度"),
    "saturate": ("make it vivid", "更鲜艳"),
    "rotate": ("rotate 90 degrees", "旋转90度"),
    "flip": ("mirror it", "水平翻转"),
    "sketch": ("pencil sketch", "素描风格"),
    "cartoon": ("cartoon style", "卡通风格"),
    "pixelate": ("pixelate it", "马赛克"),
    "emboss": ("emboss", "浮雕效果"),
    "posterize": ("posterize", "色调分离"),
    "remove_background": ("remove the background", "抠图"),
}


def test_every_operation_is_documented_here_in_both_languages() -> None:
    assert {name for name, _ in VOCABULARY} == set(PHRASES)


@pytest.mark.parametrize(("name", "phrase"), [(n, p) for n, pair in PHRASES.items() for p in pair])
def test_each_phrase_is_recognised(name: str, phrase: str) -> None:
    result = plan(phrase, 1)
    assert [op.name for op in result.ops] == [name]
    assert result.unperformed == []


def test_unknown_instructions_are_reported_not_faked() -> None:
    result = plan("replace the sky with fireworks, then make it black and white", 1)
    assert [op.name for op in result.ops] == ["grayscale"]
    assert result.unperformed == ["replace the sky with fireworks"]


def test_rotation_direction_and_flip_axis() -> None:
    assert plan("rotate 90 degrees counterclockwise", 1).ops[0].arg == "270° clockwise"
    assert plan("向右旋转180度", 1).ops[0].arg == "180° clockwise"
    assert plan("flip it upside down", 1).ops[0].arg == "vertical"


def test_quoted_text_in_any_quote_style() -> None:
    for prompt, text in (
        ('add the text "SALE"', "SALE"),
        ("加上文字“新品”", "新品"),
        ("labeled 'Relax & Unwind'", "Relax & Unwind"),
    ):
        assert [op.label for op in plan(prompt, 1).ops] == [f"text “{text}”"]


def test_composition_order_follows_the_prompt() -> None:
    result = plan("put 图3 onto 图1", 3)
    assert result.order == [2, 0, 1] and result.compose == "onto"
    assert plan("combine them", 3).compose == "side_by_side"


async def _run(prompt: str, *images: bytes, size: Size = SQUARE, **fields: object) -> tuple[Image.Image, str]:
    engine = ClassicEngine(ImagingSettings())
    sources = [open_image(io.BytesIO(data), max_pixels=10**8, param=f"image[{i}]") for i, data in enumerate(images)]
    req = EditRequest(prompt=prompt, size=str(size), **fields)  # type: ignore[arg-type]
    out = (await engine.run(Job(req, Catalog.from_config({}).get("gpt-image-2"), size, sources))).images
    return decode(out[0].data), out[0].revised_prompt


@pytest.mark.parametrize("name", sorted(PHRASES))
async def test_each_operation_changes_the_pixels(name: str) -> None:
    original, _ = await _run("nothing known here", make_image(1024, 1024))
    edited, revised = await _run(PHRASES[name][0], make_image(1024, 1024))
    assert edited.size == (1024, 1024)
    assert ImageChops.difference(original.convert("RGBA"), edited.convert("RGBA")).getbbox(alpha_only=False) is not None
    assert name in revised


async def test_geometry_is_exact_and_deterministic() -> None:
    first, _ = await _run("rotate 90", make_image(500, 300), size=Size(1536, 864))
    second, _ = await _run("rotate 90", make_image(500, 300), size=Size(1536, 864))
    assert first.size == (1536, 864)
    assert first.tobytes() == second.tobytes()


async def test_side_by_side_composition_puts_images_in_prompt_order() -> None:
    red = _solid((255, 0, 0))
    blue = _solid((0, 0, 255))
    img, revised = await _run("图2 next to 图1", red, blue, size=Size(1536, 768))
    assert img.convert("RGB").getpixel((10, 384)) == (0, 0, 255)
    assert img.convert("RGB").getpixel((1500, 384)) == (255, 0, 0)
    assert "图2, 图1" in revised


async def test_onto_composition_places_the_first_on_the_second() -> None:
    img, revised = await _run("把图1放进图2", _solid((255, 0, 0)), _solid((0, 0, 255)))
    assert img.convert("RGB").getpixel((512, 700)) == (255, 0, 0)
    assert img.convert("RGB").getpixel((20, 20)) == (0, 0, 255)
    assert "图1 onto 图2" in revised


async def test_transparent_output_and_formats() -> None:
    img, _ = await _run("x", _solid((255, 255, 255), inner=(0, 128, 0)), background=Background.TRANSPARENT)
    assert img.mode == "RGBA"
    alpha = img.getchannel("A")
    assert alpha.getpixel((5, 5)) == 0 and alpha.getpixel((512, 512)) == 255
    jpeg, _ = await _run("x", make_image(), output_format=OutputFormat.JPEG, output_compression=40)
    assert jpeg.format == "JPEG"


async def test_cjk_text_without_a_cjk_font_is_reported() -> None:
    _, revised = await _run("加上文字“你好”", make_image())
    assert "你好" in revised


def _solid(colour: tuple[int, int, int], inner: tuple[int, int, int] | None = None) -> bytes:
    img = Image.new("RGB", (400, 400), colour)
    if inner is not None:
        img.paste(inner, (100, 100, 300, 300))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _lightness(img: Image.Image) -> float:
    """Mean CIELAB L* (0–100) of an RGB image."""
    from PIL import ImageCms, ImageStat

    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return float(ImageStat.Stat(to_lab.apply(img.convert("RGB")).getchannel("L")).mean[0]) * 100 / 255


def _encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def test_dark_mode_turns_a_light_ui_dark_and_its_dark_text_light() -> None:
    from PIL import ImageDraw

    ui = Image.new("RGB", (1024, 1024), (246, 247, 250))
    draw = ImageDraw.Draw(ui)
    for row in range(8):
        draw.rectangle((80, 100 + row * 100, 700, 130 + row * 100), fill=(30, 32, 40))  # lines of "text"
    draw.rectangle((760, 860, 960, 940), fill=(0, 110, 230))  # a blue button
    edited, revised = await _run("Convert this screenshot to dark mode", _encoded(ui))
    rgb = edited.convert("RGB")
    background, text, button = rgb.getpixel((20, 20)), rgb.getpixel((300, 115)), rgb.getpixel((860, 900))
    assert isinstance(background, tuple) and isinstance(text, tuple) and isinstance(button, tuple)
    assert max(background) < 40, f"the light background became dark: {background}"
    assert min(text) > 200, f"the dark text became light: {text}"
    assert button[2] > button[0] and button[2] > button[1], f"the blue button stays blue: {button}"
    assert _lightness(rgb) < 100 - _lightness(ui) + 3
    assert "dark_mode" in revised


async def test_dark_mode_darkens_a_colourful_gradient_that_was_light() -> None:
    hues = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((1024, 1024))
    full = Image.new("L", (1024, 1024), 255)
    gradient = Image.merge("HSV", (hues, full, full)).convert("RGB")  # every hue at full colour
    before = _lightness(gradient)
    assert before > 50, "the picture starts above the middle"
    edited, _ = await _run("改成夜间模式", _encoded(gradient))
    after = _lightness(edited)
    assert after < 50 and after < before - 10, (before, after)
