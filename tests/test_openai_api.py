"""The OpenAI dialect in-process: every body form, every validation error, delivery and task records."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import orjson
import pybase64
import pytest
from PIL import Image
from sqlalchemy import select

from imagegate.stores.db import Database, StoredFile, Task
from tests.conftest import Api, FileServer, decode, make_image

PNG = make_image(640, 480)


async def edit(
    api: Api,
    *,
    files: list[tuple[str, Any]] | None = None,
    data: dict[str, Any] | None = None,
    json: dict[str, Any] | None = None,
    path: str = "/v1/images/edits",
) -> Any:
    if json is not None:
        return await api.client.post(path, headers=api.auth, json=json)
    return await api.client.post(path, headers=api.auth, data=data or {}, files=files or [])


def b64_image(response: Any, index: int = 0) -> Image.Image:
    return decode(pybase64.b64decode(response.json()["data"][index]["b64_json"]))


@pytest.mark.parametrize("field", ["image", "image[]", "image[0]"])
async def test_multipart_image_field_spellings(api: Api, field: str) -> None:
    r = await edit(api, data={"prompt": "grayscale", "size": "1024x1024"}, files=[(field, ("a.png", PNG, "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == "1024x1024" and body["quality"] == "medium"
    assert body["output_format"] == "png" and body["background"] == "opaque"
    assert body["usage"]["total_tokens"] > 0
    assert "grayscale" in body["data"][0]["revised_prompt"]
    img = b64_image(r)
    assert img.size == (1024, 1024) and img.format == "PNG"
    assert r.headers["x-imagegate-engine"] == "classic" and r.headers["x-request-id"].startswith("req_")


async def test_repeated_image_parts_and_text_url_parts_keep_order(api: Api, file_server: FileServer) -> None:
    url = file_server.put("b.png", make_image(300, 300))
    files = [("image", ("a.png", PNG, "image/png")), ("image", (None, url)), ("image[]", ("c.png", PNG, "image/png"))]
    r = await edit(api, data={"prompt": "put them side by side"}, files=files)
    assert r.status_code == 200, r.text
    assert "composed 3 images side by side in the order 图1, 图2, 图3" in r.json()["data"][0]["revised_prompt"]


async def test_json_image_string_array_images_objects_data_urls_and_raw_base64(
    api: Api, file_server: FileServer
) -> None:
    url = file_server.put("a.png", PNG)
    raw = pybase64.b64encode(PNG).decode()
    for body in (
        {"image": url},
        {"image": [url, f"data:image/png;base64,{raw}"]},
        {"images": [{"image_url": url}, raw]},
        {"images": [url]},
    ):
        r = await edit(api, json={"prompt": "sepia", "size": "1536x1024", **body})
        assert r.status_code == 200, (body, r.text)
        assert b64_image(r).size == (1536, 1024)


async def test_aliases_under_v1_openai_and_v1_v1(api: Api) -> None:
    for path in ("/v1/openai/images/edits", "/v1/v1/images/edits"):
        r = await edit(api, path=path, data={"prompt": "blur"}, files=[("image[]", ("a.png", PNG, "image/png"))])
        assert r.status_code == 200, r.text


async def test_auto_size_keeps_the_first_images_ratio(api: Api) -> None:
    r = await edit(api, data={"prompt": "invert"}, files=[("image", ("a.png", make_image(1920, 1080), "image/png"))])
    assert r.json()["size"] == "1360x768"
    assert b64_image(r).size == (1360, 768)


@pytest.mark.parametrize(("fmt", "compression"), [("jpeg", 30), ("webp", 50), ("png", None)])
async def test_output_formats_and_compression(api: Api, fmt: str, compression: int | None) -> None:
    data = {"prompt": "warmer", "output_format": fmt, "size": "1024x1024"}
    if compression is not None:
        data["output_compression"] = str(compression)
    r = await edit(api, data=data, files=[("image", ("a.png", PNG, "image/png"))])
    assert r.status_code == 200, r.text
    assert b64_image(r).format == fmt.upper()
    assert r.json()["output_format"] == fmt


async def test_low_compression_makes_smaller_jpegs(api: Api) -> None:
    sizes = []
    for compression in ("20", "95"):
        r = await edit(
            api,
            data={"prompt": "x", "output_format": "jpeg", "output_compression": compression},
            files=[("image", ("a.png", PNG, "image/png"))],
        )
        sizes.append(len(pybase64.b64decode(r.json()["data"][0]["b64_json"])))
    assert sizes[0] < sizes[1] / 2


async def test_transparent_background(api: Api) -> None:
    r = await edit(
        api,
        data={"prompt": "remove the background", "background": "transparent"},
        files=[("image", ("a.png", PNG, "image/png"))],
    )
    assert r.status_code == 200, r.text
    assert r.json()["background"] == "transparent"
    img = b64_image(r)
    assert img.mode == "RGBA" and img.getchannel("A").getextrema()[0] == 0


async def test_url_delivery_serves_the_file_with_type_and_cache(api: Api) -> None:
    r = await edit(
        api,
        data={"prompt": "sketch", "response_format": "url", "output_format": "webp"},
        files=[("image", ("a.png", PNG, "image/png"))],
    )
    url = r.json()["data"][0]["url"]
    assert url.startswith("http://testserver/files/") and url.endswith(".webp")
    got = await api.client.get(url)
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/webp"
    assert "immutable" in got.headers["cache-control"]
    assert decode(got.content).format == "WEBP"
    missing = await api.client.get("/files/AAAAAAAAAAAAAAAAAAAAAAAA.png")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_models_default_delivery_and_data_url_quirk(api: Api) -> None:
    files = [("image[]", ("a.png", PNG, "image/png"))]
    r = await edit(api, data={"model": "gpt-image-2-all", "prompt": "x"}, files=files)
    assert "url" in r.json()["data"][0]
    r = await edit(api, data={"model": "gpt-image-2-all", "prompt": "x", "response_format": "b64_json"}, files=files)
    assert r.json()["data"][0]["b64_json"].startswith("data:image/png;base64,")
    r = await edit(api, data={"model": "dall-e-2", "prompt": "x", "size": "512x512"}, files=files)
    assert "url" in r.json()["data"][0]


async def test_n_images(api: Api) -> None:
    r = await edit(api, data={"prompt": "x", "n": "3"}, files=[("image", ("a.png", PNG, "image/png"))])
    assert len(r.json()["data"]) == 3


async def test_mask_confines_the_edit_to_its_transparent_area(api: Api) -> None:
    src = Image.new("RGB", (1024, 1024), (200, 30, 30))
    mask = Image.new("RGBA", (1024, 1024), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 512, 1024))
    files = [("image", ("a.png", _png(src), "image/png")), ("mask", ("m.png", _png(mask), "image/png"))]
    r = await edit(api, data={"prompt": "invert", "size": "1024x1024"}, files=files)
    assert r.status_code == 200, r.text
    img = b64_image(r).convert("RGB")
    assert img.getpixel((100, 500)) == (55, 225, 225)
    assert img.getpixel((900, 500)) == (200, 30, 30)
    rgb_mask = [("image", ("a.png", _png(src), "image/png")), ("mask", ("m.png", _png(src), "image/png"))]
    r = await edit(api, data={"prompt": "invert"}, files=rgb_mask)
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


BAD_REQUESTS: list[tuple[dict[str, str], str, str]] = [
    ({"size": "1000x1000"}, "size", "invalid_value"),
    ({"size": "4096x4096"}, "size", "invalid_value"),
    ({"quality": "ultra"}, "quality", "invalid_value"),
    ({"n": "11"}, "n", "invalid_value"),
    ({"n": "zero"}, "n", "invalid_value"),
    ({"output_format": "gif"}, "output_format", "invalid_value"),
    ({"output_format": "jpeg", "output_compression": "101"}, "output_compression", "invalid_value"),
    ({"output_compression": "50"}, "output_compression", "invalid_value"),
    ({"background": "transparent", "output_format": "jpeg"}, "background", "invalid_value"),
    ({"response_format": "file"}, "response_format", "invalid_value"),
    ({"partial_images": "4", "stream": "true"}, "partial_images", "invalid_value"),
    ({"stream": "maybe"}, "stream", "invalid_value"),
    ({"aspect_ratio": "16:9"}, "size", "invalid_value"),
    ({"prompt": ""}, "prompt", "missing_required_parameter"),
    ({"prompt": "x" * 32001}, "prompt", "invalid_value"),
    ({"model": "gpt-image-1", "size": "2048x2048"}, "size", "invalid_value"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_REQUESTS)
async def test_validation_errors_name_the_param(api: Api, fields: dict[str, str], param: str, code: str) -> None:
    r = await edit(api, data={"prompt": "x", **fields}, files=[("image", ("a.png", PNG, "image/png"))])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]


async def test_input_errors(api: Api) -> None:
    cases: list[tuple[list[tuple[str, Any]], str, str]] = [
        ([], "image", "missing_required_parameter"),
        ([("image", ("a.gif", b"GIF89a" + b"\0" * 100, "image/png"))], "image[0]", "unsupported_file_mimetype"),
        ([("image", ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "image/png"))], "image[0]", "invalid_image"),
        ([("image", ("bomb.png", _bomb_png(100_000, 100_000), "image/png"))], "image[0]", "image_too_large"),
        ([("image", ("a.png", PNG, "image/png"))] * 17, "image", "invalid_value"),
        ([("image", (None, "http://10.0.0.1/x.png"))], "image[0]", "invalid_image_url"),
        ([("image", (None, "not-base64!"))], "image[0]", "invalid_image"),
    ]
    for files, param, code in cases:
        r = await edit(api, data={"prompt": "x"}, files=files)
        assert r.status_code == 400, (code, r.text)
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)


async def test_a_decompression_bomb_in_json_is_a_400(api: Api) -> None:
    bomb = pybase64.b64encode(_bomb_png(60_000, 60_000)).decode()
    r = await edit(api, json={"prompt": "x", "image": f"data:image/png;base64,{bomb}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large"


async def test_auth_model_and_body_errors(api: Api) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    r = await api.client.post("/v1/images/edits", data={"prompt": "x"}, files=files)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = await api.client.post("/v1/images/edits", headers={"Authorization": "Bearer ig-wrong"}, json={"prompt": "x"})
    assert r.status_code == 401
    r = await edit(api, data={"prompt": "x", "model": "gpt-9"}, files=files)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await api.client.post(
        "/v1/images/edits", headers={**api.auth, "content-type": "application/json"}, content=b"{"
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = await api.client.get("/v1/nowhere", headers=api.auth)
    assert r.status_code == 404 and "error" in r.json()
    r = await api.client.get("/v1/images/edits", headers=api.auth)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_generation_works_out_of_the_box_on_the_classic_engine(api: Api) -> None:
    r = await api.client.post(
        "/v1/images/generations",
        headers=api.auth,
        json={"prompt": 'a poster saying "HELLO" on a blue background', "size": "1024x1536", "output_format": "webp"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-imagegate-engine"] == "classic"
    image = b64_image(r)
    assert (image.format, image.size) == ("WEBP", (1024, 1536))
    revised = r.json()["data"][0]["revised_prompt"]
    assert revised.startswith("classic engine") and "not a picture model" in revised and "HELLO" in revised


async def test_models_lists_the_catalog_with_engines(api: Api) -> None:
    r = await api.client.get("/v1/models", headers=api.auth)
    ids = {m["id"]: m["engine"] for m in r.json()["data"]}
    assert {"gpt-image-2", "gpt-image-2-all", "dall-e-2", "nano-banana-pro"} <= set(ids)
    assert set(ids.values()) == {"classic"}


async def test_every_request_is_a_task_row(api: Api) -> None:
    ok = await edit(
        api, data={"prompt": "invert", "response_format": "url"}, files=[("image", ("a.png", PNG, "image/png"))]
    )
    bad = await edit(api, data={"prompt": "x"}, files=[("image", (None, "http://10.0.0.1/x.png"))])
    assert ok.status_code == 200 and bad.status_code == 400
    db = Database(api.config.resolved_database_url)
    try:
        async with db.session() as session:
            tasks = {t.id: t for t in await session.scalars(select(Task))}
            files = list(await session.scalars(select(StoredFile)))
    finally:
        await db.aclose()
    done = tasks[ok.json()["task_id"]]
    assert done.state == "success" and done.result is not None and done.finished_at is not None
    assert done.request["prompt"] == "invert" and done.request["images"][0]["kind"] == "upload"
    assert [f.task_id for f in files] == [done.id]
    failed = [t for t in tasks.values() if t.state == "fail"]
    assert len(failed) == 1 and failed[0].error_code == "invalid_image_url"


async def test_nano_banana_ignores_everything_but_model_prompt_image(api: Api) -> None:
    r = await edit(
        api,
        data={"model": "nano-banana", "prompt": "invert", "size": "nonsense", "n": "4", "quality": "ultra"},
        files=[("image", ("a.png", PNG, "image/png"))],
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 1 and "url" in r.json()["data"][0]


def _events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def _with_alpha() -> bytes:
    img = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
    img.paste((200, 30, 30, 255), (100, 75, 300, 225))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("image", "fields", "background"),
    [
        (PNG, {}, "opaque"),
        (PNG, {"background": "transparent"}, "transparent"),
        (_with_alpha(), {}, "transparent"),
        (_with_alpha(), {"output_format": "jpeg"}, "opaque"),
    ],
)
async def test_streamed_partials_report_the_background_the_completed_event_reports(
    api: Api, image: bytes, fields: dict[str, str], background: str
) -> None:
    form = {"prompt": "sepia", "stream": "true", "partial_images": "2", "size": "1024x1024", **fields}
    r = await edit(api, data=form, files=[("image", ("a.png", image, "image/png"))])
    assert r.status_code == 200, r.text
    events = _events(r.text)
    assert [e["type"] for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [e["background"] for e in events] == [background] * 3
    assert all(e["background"] != "auto" for e in events)


async def test_dall_e_2_defaults_to_1024_square_and_gives_each_image_its_own_url(api: Api) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    r = await edit(api, data={"model": "dall-e-2", "prompt": "x", "n": "2", "response_format": "url"}, files=files)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "1024x1024"
    urls = [item["url"] for item in r.json()["data"]]
    assert len(urls) == 2 and len(set(urls)) == 2
    for url in urls:
        got = await api.client.get(url)
        assert got.status_code == 200 and decode(got.content).size == (1024, 1024)


@pytest.mark.parametrize(
    ("size", "price"), [("1792x1024", "6"), ("1024x1792", "6"), ("1920x1080", "9"), ("1536x1024", "6")]
)
async def test_seed_1k_sizes_cost_the_1k_price(api: Api, size: str, price: str) -> None:
    r = await api.client.post(
        "/v1/images/edits?dry_run=true",
        headers=api.auth,
        data={"prompt": "x", "size": size},
        files=[("image", ("a.png", PNG, "image/png"))],
    )
    assert r.status_code == 200, r.text
    assert (r.json()["price"], r.json()["size"]) == (price, size)
