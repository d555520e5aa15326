"""A provider's ImagesResponse read with its base64 images kept as views of the answer's bytes."""

from __future__ import annotations

import os

import orjson
import pybase64
import pytest

from imagegate.dialects.openai.upstream import parse_images
from imagegate.wire.b64_answer import LIFT_ABOVE, loads_lifting_b64

BIG = os.urandom(LIFT_ABOVE)
SMALL = os.urandom(100)


def answer(*images: bytes, **extra: object) -> bytes:
    items = [
        {"b64_json": pybase64.b64encode(image).decode(), "revised_prompt": f"p{i}"} for i, image in enumerate(images)
    ]
    return orjson.dumps({"created": 1, "data": items, **extra})


def test_each_b64_json_value_stays_a_view_of_the_answer_and_decodes_to_its_image() -> None:
    body = answer(BIG, SMALL, usage={"total_tokens": 3})
    document, lifted = loads_lifting_b64(body)
    assert len(lifted) == 2 and all(isinstance(view.obj, bytes) and view.obj is body for view in lifted.values())
    parsed = parse_images(document, lifted)
    assert [image.data for image in parsed.images] == [BIG, SMALL]
    assert [bytes(image.b64 or b"") for image in parsed.images] == [pybase64.b64encode(BIG), pybase64.b64encode(SMALL)]
    assert [image.revised_prompt for image in parsed.images] == ["p0", "p1"] and parsed.usage == {"total_tokens": 3}


@pytest.mark.parametrize(
    "body",
    [
        answer(SMALL),
        answer(BIG).replace(b"/", b"\\/"),
        answer(BIG, usage={"b64_json": "QUJD"}),
        answer(BIG).replace(b'"b64_json":', b'"b64_json" : 1, "x":'),
        orjson.dumps({"data": {"b64_json": pybase64.b64encode(BIG).decode()}}),
    ],
    ids=["short", "escaped", "key-elsewhere", "not-a-string", "data-not-a-list"],
)
def test_anything_but_plain_values_in_place_is_parsed_whole(body: bytes) -> None:
    document, lifted = loads_lifting_b64(body)
    assert lifted == {} and document == orjson.loads(body)


def test_an_escaped_value_still_decodes_to_the_same_image() -> None:
    parsed = parse_images(*loads_lifting_b64(answer(BIG).replace(b"/", b"\\/")))
    assert parsed.images[0].data == BIG and parsed.images[0].b64 is None


def test_a_body_that_is_not_json_raises_as_orjson_does() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_lifting_b64(answer(BIG)[:-1])


def test_a_data_url_value_is_lifted_and_passed_on_without_its_prefix() -> None:
    """Seed 001's resellers answer `gpt-image-2-all` with `data:` URLs in `b64_json`."""
    body = answer(BIG).replace(b'"b64_json":"', b'"b64_json":"data:image/png;base64,')
    document, lifted = loads_lifting_b64(body)
    parsed = parse_images(document, lifted)
    assert lifted and parsed.images[0].data == BIG
    assert bytes(parsed.images[0].b64 or b"") == pybase64.b64encode(BIG)
