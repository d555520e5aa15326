"""Generation by the classic engine (SPEC §5): it draws the colours, gradients, shapes and quoted text a
prompt names, at exactly the requested size and format, and says what it drew and what it could not."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops

from imagegate.config import ImagingSettings
from imagegate.core.catalog import Catalog
from imagegate.core.job import Job
from imagegate.core.request import Background, EditRequest, OutputFormat, Size
from imagegate.engines.classic.draw import read
from imagegate.engines.classic.engine import ClassicEngine
from imagegate.engines.classic.palette import colours_in
from tests.conftest import decode

RGB = tuple[int, int, int]
SQUARE = Size(1024, 1024)


async def generate(prompt: str, size: Size = SQUARE, **fields: object) -> tuple[Image.Image, str]:
    engine = ClassicEngine(ImagingSettings())
    req = EditRequest(prompt=prompt, size=str(size), **fields)  # type: ignore[arg-type]
    (out,) = (await engine.run(Job(req, Catalog.from_config({}).get("gpt-image-2"), size))).images
    image = decode(out.data)
    assert image.size == (size.width, size.height)
    return image, out.revised_prompt


def pixel(image: Image.Image, x: int, y: int) -> RGB:
    value = (image if image.mode == "RGB" else image.convert("RGB")).getpixel((x, y))
    assert isinstance(value, tuple)
    return value[0], value[1], value[2]


def near(got: RGB, want: RGB, tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got, want, strict=True))


def test_colour_words_in_english_and_chinese() -> None:
    assert [c.rgb for c in colours_in("a red circle on a light blue background")] == [
        (220, 30, 40),
        (154, 181, 239),
    ]
    assert [c.name for c in colours_in("红色的圆，深蓝背景，天蓝边框")] == ["红", "深蓝", "天蓝"]
    assert colours_in("a hundred shredded tangerines") == [], "colour words are whole words"


@pytest.mark.parametrize(
    ("prompt", "colour"),
    [("a plain red background", (220, 30, 40)), ("纯黑色背景", (0, 0, 0)), ("dark green", (19, 88, 33))],
)
async def test_a_background_in_the_colour_named(prompt: str, colour: RGB) -> None:
    image, revised = await generate(prompt, Size(640, 480))
    assert near(pixel(image, 5, 5), colour) and near(pixel(image, 320, 240), colour)
    assert "background" in revised


@pytest.mark.parametrize(
    ("prompt", "first", "last", "axis"),
    [
        ("a gradient from orange to purple", (255, 140, 0), (128, 50, 170), "vertical"),
        ("从蓝色到白色渐变", (30, 90, 220), (255, 255, 255), "vertical"),
        ("a horizontal gradient from black to yellow, left to right", (0, 0, 0), (255, 215, 0), "horizontal"),
    ],
)
async def test_gradients_from_x_to_y(prompt: str, first: RGB, last: RGB, axis: str) -> None:
    image, revised = await generate(prompt, Size(800, 600))
    start, end = ((400, 0), (400, 599)) if axis == "vertical" else ((0, 300), (799, 300))
    assert near(pixel(image, *start), first, 16) and near(pixel(image, *end), last, 16)
    assert f"{axis} gradient" in revised


async def test_shapes_in_their_colours() -> None:
    image, revised = await generate("a red circle and a blue square on a white background", Size(1200, 600))
    assert near(pixel(image, 300, 300), (220, 30, 40)), "the circle, left half"
    assert near(pixel(image, 900, 300), (30, 90, 220)), "the square, right half"
    assert near(pixel(image, 600, 20), (255, 255, 255)), "the background between and around them"
    assert "a red circle" in revised and "a blue square" in revised
    stripes, _ = await generate("yellow stripes with a black border", Size(512, 512))
    assert near(pixel(stripes, 2, 256), (0, 0, 0)), "the border"
    row = {pixel(stripes, x, 256) for x in range(40, 470)}
    assert any(near(c, (255, 215, 0)) for c in row) and len(row) >= 2, "stripes alternate with the background"
    grid, revised = await generate("a white grid on navy", Size(512, 512))
    assert near(pixel(grid, 64, 200), (255, 255, 255), 40) and near(pixel(grid, 32, 32), (20, 33, 80))


async def test_quoted_text_is_laid_out_large_and_legibly() -> None:
    image, revised = await generate('a poster with the title "GRAND OPENING" on a white background', Size(1024, 1536))
    ink = ImageChops.difference(image.convert("RGB"), Image.new("RGB", image.size, (255, 255, 255))).getbbox()
    assert ink is not None
    left, top, right, bottom = ink
    assert right - left > 0.6 * 1024, f"the title spans most of the width: {ink}"
    assert bottom - top > 1536 // 12, "and is tall enough to read across a room"
    dark = sum(1 for x in range(left, right, 4) for y in range(top, bottom, 4) if sum(pixel(image, x, y)) < 150)
    assert dark > 200, "dark ink on the light background"
    assert "the text “GRAND OPENING” as a poster's title" in revised


async def test_text_on_a_dark_background_is_light_and_a_banner_keeps_it_on_one_band() -> None:
    image, revised = await generate('a banner saying "Welcome" with a dark navy background', Size(1536, 512))
    band = [pixel(image, x, 256) for x in range(300, 1236, 3)]
    assert any(min(c) > 200 for c in band), "light letters where the banner is"
    assert "on a banner" in revised


async def test_exact_size_format_and_transparency() -> None:
    for size, fmt in ((Size(1920, 1080), OutputFormat.JPEG), (Size(1080, 1920), OutputFormat.WEBP)):
        image, _ = await generate("a blue circle", size, output_format=fmt)
        assert (image.format, image.size) == (fmt.value.upper(), (size.width, size.height))
    clear, revised = await generate("a red triangle", Size(512, 512), background=Background.TRANSPARENT)
    assert clear.mode == "RGBA" and clear.getchannel("A").getpixel((3, 3)) == 0
    assert clear.getchannel("A").getpixel((256, 300)) == 255 and "transparent background" in revised


async def test_it_says_what_it_drew_and_what_it_could_not() -> None:
    _, revised = await generate(
        "A small blue glass sphere on a clean white desk, minimal product photo, soft daylight", Size(1024, 768)
    )
    assert revised.startswith("classic engine (draws flat colours, shapes and text; not a picture model)")
    assert "a blue circle (for “sphere”)" in revised and "a white background" in revised
    assert "only colours, shapes and text taken from: A small blue glass sphere on a clean white desk" in revised
    assert revised.endswith("not drawn (outside the classic vocabulary): minimal product photo; soft daylight")
    _, nothing = await generate("a cat riding a bicycle", Size(512, 512))
    assert "not drawn (outside the classic vocabulary): a cat riding a bicycle" in nothing


def test_reading_chinese_prompts() -> None:
    drawing = read("一张海报，从蓝色到白色渐变，红色的圆形，写着“新品上市”")
    assert drawing.layout == "poster" and drawing.texts == ["新品上市"]
    assert drawing.background == [(30, 90, 220), (255, 255, 255)]
    assert drawing.shapes == [("circle", (220, 30, 40))]
    assert drawing.unperformed == []


async def test_generation_is_deterministic() -> None:
    first, _ = await generate('stripes, "A", a diagonal gradient from pink to cyan', Size(640, 640))
    second, _ = await generate('stripes, "A", a diagonal gradient from pink to cyan', Size(640, 640))
    assert first.tobytes() == second.tobytes()
