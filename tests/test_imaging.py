"""Opening inputs: sniffed formats, EXIF orientation, and no pixel decoding before it is needed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imagegate.core.request import Size
from imagegate.errors import ImageTooLarge, UnsupportedMimetype
from imagegate.imaging import SourceImage, open_image
from tests.conftest import make_image


def oriented(fmt: str, orientation: int) -> bytes:
    """A 300x200 picture, red on its left third, stored with an EXIF orientation tag."""
    img = Image.new("RGB", (300, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


def opened(data: bytes) -> SourceImage:
    return open_image(io.BytesIO(data), max_pixels=10**7, param="image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_orientation_6_swaps_sides_and_rotates_pixels(fmt: str) -> None:
    source = opened(oriented(fmt, 6))
    assert (source.width, source.height) == (200, 300)
    img = source.decode()
    assert img.size == (200, 300)
    top = img.getpixel((100, 20))
    assert isinstance(top, tuple) and top[0] > 200 and top[2] < 60


def test_orientation_3_turns_the_picture_upside_down() -> None:
    img = opened(oriented("PNG", 3)).decode()
    assert img.size == (300, 200)
    right = img.getpixel((290, 100))
    assert isinstance(right, tuple) and right[0] > 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_opening_reads_only_the_header(fmt: str) -> None:
    source = opened(make_image(800, 600, fmt))
    assert source.image._im is None, "pixels were decoded while opening"
    assert source.decode().size == (800, 600)
    assert source.image._im is None, "decode must use its own copy, not load the header image"


def test_decode_is_repeatable_and_jpeg_draft_keeps_at_least_the_target() -> None:
    source = opened(make_image(1600, 1200, "JPEG"))
    small = source.decode(at_least=Size(400, 300))
    assert small.width >= 400 and small.height >= 300 and small.width < 1600
    assert source.decode().size == (1600, 1200)


def test_pixel_bound_applies_before_decoding() -> None:
    with pytest.raises(ImageTooLarge) as info:
        open_image(io.BytesIO(make_image(400, 400)), max_pixels=100_000, param="image[2]")
    assert info.value.param == "image[2]" and "400x400" in info.value.message


def test_format_is_sniffed_not_trusted() -> None:
    with pytest.raises(UnsupportedMimetype):
        opened(b"GIF89a" + b"\0" * 64)
