"""End to end: the real server process on a loopback port, driven by the official `openai` SDK,
curl and the seeds' own examples (host, key and image URLs replaced, nothing else)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import FileServer, LiveServer, make_image, run_cli
from tests.shapes import assert_like

pytestmark = pytest.mark.e2e
SEEDS = Path(__file__).with_name("seeds")
HOSTS = ("https://api.apiyi.com", "https://api.xhuoapi.ai", "{BASE_URL}")
KEYS = ("sk-your-api-key", "{token}", "sk-***")
IMAGE_URLS = (
    "https://platform.cdn.xhuoapi.ai/gpt-image/5c9fa635-8794-4c6d-88f8-584d7f4716c6_0.png",
    "https://platform.cdn.xhuoapi.ai/nanobanana/6870b330-65c4-436c-bb80-819fdae7a7a4.png",
    "https://example.com/input.png",
)


@pytest.fixture
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.base}/v1", api_key=live_server.key, max_retries=0)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    for name in ("photo.png", "ref1.png", "ref2.png", "ref3.png", "test.png", "apple.png"):
        (tmp_path / name).write_bytes(make_image(800, 600))
    return tmp_path


def open_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_sdk_one_file(client: openai.OpenAI, work: Path) -> None:
    with (work / "photo.png").open("rb") as f:
        result = client.images.edit(model="gpt-image-2", image=f, prompt="sepia", size="1536x1024")
    assert result.data and result.data[0].b64_json
    assert open_png(base64.b64decode(result.data[0].b64_json)).size == (1536, 1024)
    assert result.size == "1536x1024" and result.output_format == "png"


def test_sdk_list_of_files_is_sent_as_image_brackets(client: openai.OpenAI, work: Path) -> None:
    with (work / "ref1.png").open("rb") as a, (work / "ref2.png").open("rb") as b:
        result = client.images.edit(model="gpt-image-2", image=[a, b], prompt="grayscale")
    assert result.data and "composed 2 images" in (result.data[0].revised_prompt or "")


@pytest.mark.parametrize(("fmt", "size"), [("jpeg", "1024x768"), ("webp", "2048x1152"), ("png", "1254x1254")])
def test_sdk_b64_decodes_to_the_requested_size_and_format(
    client: openai.OpenAI, work: Path, fmt: str, size: str
) -> None:
    with (work / "photo.png").open("rb") as f:
        result = client.images.edit(  # type: ignore[call-overload]
            model="gpt-image-2", image=f, prompt="cartoon", size=size, output_format=fmt, response_format="b64_json"
        )
    assert result.data and result.data[0].b64_json
    img = open_png(base64.b64decode(result.data[0].b64_json))
    assert (img.format, f"{img.width}x{img.height}") == (fmt.upper(), size)


def test_sdk_url_delivery_downloads(client: openai.OpenAI, work: Path) -> None:
    with (work / "photo.png").open("rb") as f:
        result = client.images.edit(model="gpt-image-2", image=f, prompt="invert", response_format="url")
    assert result.data and result.data[0].url
    got = httpx.get(result.data[0].url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert open_png(got.content).size == (1184, 880)


def test_sdk_bad_size_raises_bad_request_naming_size(client: openai.OpenAI, work: Path) -> None:
    with (work / "photo.png").open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="gpt-image-2", image=f, prompt="x", size="1000x1000")
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "size"
    assert info.value.code == "invalid_value"


def test_sdk_stream_yields_partials_then_completed(client: openai.OpenAI, work: Path) -> None:
    with (work / "photo.png").open("rb") as f:
        stream = client.images.edit(
            model="gpt-image-2", image=f, prompt="pencil sketch", stream=True, partial_images=2, size="1024x1024"
        )
        events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [getattr(e, "partial_image_index", None) for e in events[:2]] == [0, 1]
    final = events[-1]
    assert final.type == "image_edit.completed" and final.usage.total_tokens > 0
    assert open_png(base64.b64decode(final.b64_json)).size == (1024, 1024)


def test_sdk_bad_key_raises_authentication_error(live_server: LiveServer, work: Path) -> None:
    bad = openai.OpenAI(base_url=f"{live_server.base}/v1", api_key="ig-not-a-key", max_retries=0)
    with (work / "photo.png").open("rb") as f, pytest.raises(openai.AuthenticationError):
        bad.images.edit(model="gpt-image-2", image=f, prompt="x")


def _seed(name: str, live: LiveServer, files: FileServer, prefix: str | None = None) -> str:
    """A seed's example with host, key and image URLs replaced (and seed 003's prefix, with `prefix`)."""
    text = (SEEDS / name).read_text(encoding="utf-8")
    image_url = files.put("input.png", make_image(900, 700))
    for host in HOSTS:
        text = text.replace(host, live.base)
    for key in KEYS:
        text = text.replace(key, live.key)
    for url in IMAGE_URLS:
        text = text.replace(url, image_url)
    if prefix is not None:
        text = text.replace("/v1/openai/", f"{prefix}/").replace("/v1/v1/", f"{prefix}/")
    return text


def _example(name: str) -> Any:
    return json.loads((SEEDS / "responses" / name).read_text(encoding="utf-8"))


def _run(command: list[str], work: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_seed001_python_single_returns_a_url(live_server: LiveServer, file_server: FileServer, work: Path) -> None:
    url = _run([sys.executable, "-c", _seed("seed001_single.py", live_server, file_server)], work).strip()
    assert url.startswith(f"{live_server.base}/files/")
    assert httpx.get(url).status_code == 200


def test_seed001_python_multi_returns_a_data_url(live_server: LiveServer, file_server: FileServer, work: Path) -> None:
    out = _run([sys.executable, "-c", _seed("seed001_multi.py", live_server, file_server)], work)
    assert out.startswith("data:image/png;base64,")


def test_seed001_curl_multi(live_server: LiveServer, file_server: FileServer, work: Path) -> None:
    out = _run(["bash", "-c", _seed("seed001_curl.sh", live_server, file_server)], work)
    body = httpx.Response(200, content=out).json()
    assert body["data"][0]["b64_json"].startswith("data:image/png;base64,")


SEED003_PREFIXES = ("/v1/openai", "/v1/v1")


@pytest.mark.parametrize("prefix", SEED003_PREFIXES)
def test_seed003_json_url_python_and_curl_match_its_answer(
    live_server: LiveServer, file_server: FileServer, work: Path, prefix: str
) -> None:
    for command in (
        [sys.executable, "-c", _seed("seed003_json_url.py", live_server, file_server, prefix)],
        ["bash", "-c", _seed("seed003_json_url.sh", live_server, file_server, prefix)],
    ):
        body = httpx.Response(200, content=_run(command, work)).json()
        assert_like(body, _example("seed003_edit_url_success.json"))
        assert body["success"] is True and body["size"] == "1024x1536"
        assert "dark_mode" in body["data"][0]["revised_prompt"]
        assert open_png(httpx.get(body["data"][0]["url"]).content).size == (1024, 1536)


@pytest.mark.parametrize("prefix", SEED003_PREFIXES)
def test_seed003_error_matches_its_error_example(
    live_server: LiveServer, file_server: FileServer, work: Path, prefix: str
) -> None:
    script = _seed("seed003_json_url.py", live_server, file_server, prefix).replace("input.png", "missing.png")
    body = httpx.Response(200, content=_run([sys.executable, "-c", script], work)).json()
    assert_like(body, _example("seed003_error.json"))
    assert body["success"] is False and body["error"]["code"] == "invalid_image_url"


@pytest.mark.parametrize("prefix", SEED003_PREFIXES)
def test_seed003_sdk_with_env_vars(live_server: LiveServer, work: Path, prefix: str) -> None:
    env = {
        "OPENAI_BASE_URL": f"{live_server.base}{prefix}",
        "OPENAI_API_KEY": live_server.key,
        "PATH": "/usr/bin:/bin",
    }
    _run([sys.executable, str(SEEDS / "seed003_sdk.py")], work, env=env)
    assert open_png((work / "edited.png").read_bytes()).format == "PNG"


@pytest.mark.parametrize("prefix", SEED003_PREFIXES)
def test_seed003_nano_banana_form_url_and_file_match_its_answer(
    live_server: LiveServer, file_server: FileServer, work: Path, prefix: str
) -> None:
    for command in (
        ["bash", "-c", _seed("seed003_nano_form_url.sh", live_server, file_server, prefix)],
        [sys.executable, "-c", _seed("seed003_nano_file.py", live_server, file_server, prefix)],
    ):
        body = httpx.Response(200, content=_run(command, work)).json()
        assert_like(body, _example("seed003_nano_success.json"))
        (item,) = body["data"]
        assert body["created"] == 0 and item["revised_prompt"] == "add a green leaf on top of the apple"
        assert item["url"].startswith(live_server.base) and item["url"].endswith(".jpeg")
        assert open_png(httpx.get(item["url"]).content).format == "JPEG"


@pytest.mark.skipif(
    shutil.which("jq") is None, reason="the seed's curl example pipes through jq, which is not installed"
)
@pytest.mark.parametrize("prefix", SEED003_PREFIXES)
def test_seed003_gift_basket_curl(live_server: LiveServer, file_server: FileServer, work: Path, prefix: str) -> None:
    done = subprocess.run(
        ["bash", "-c", _seed("seed003_gift_curl.sh", live_server, file_server, prefix) + "\nsleep 1"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "x-request-id" in done.stderr.lower()
    assert open_png((work / "gift-basket.png").read_bytes()).size == (1536, 1024)


def test_seed004_json_edit(live_server: LiveServer, file_server: FileServer, work: Path) -> None:
    body = httpx.Response(
        200, content=_run(["bash", "-c", _seed("seed004_edit.sh", live_server, file_server)], work)
    ).json()
    assert body["size"] == "1024x1024" and body["data"][0]["url"].endswith(".png")


def test_sdk_sees_402_and_429_as_its_own_errors(live_server: LiveServer, work: Path) -> None:
    def key_with(*options: str) -> str:
        made = run_cli("keys", "create", "--json", *options, env=live_server.env)
        key: str = json.loads(made.stdout.strip().splitlines()[-1])["key"]
        return key

    base = f"{live_server.base}/v1"
    with (
        openai.OpenAI(base_url=base, api_key=key_with("--credits", "5"), max_retries=0) as poor,
        (work / "photo.png").open("rb") as f,
        pytest.raises(openai.APIStatusError) as broke,
    ):
        poor.images.edit(model="gpt-image-2", image=f, prompt="sepia")
    assert broke.value.status_code == 402 and broke.value.code == "insufficient_credits"

    with openai.OpenAI(base_url=base, api_key=key_with("--credits", "100", "--rpm", "1"), max_retries=0) as limited:
        with (work / "photo.png").open("rb") as f:
            limited.images.edit(model="gpt-image-2", image=f, prompt="sepia", size="1024x1024")
        with (work / "photo.png").open("rb") as f, pytest.raises(openai.RateLimitError) as refused:
            limited.images.edit(model="gpt-image-2", image=f, prompt="sepia", size="1024x1024")
    headers = refused.value.response.headers
    assert refused.value.code == "rate_limit_exceeded" and int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
