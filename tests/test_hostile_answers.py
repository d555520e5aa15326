"""A provider's odd or hostile answers, relayed: the client gets a usable image, or a 502 that charges
nothing and lets another channel answer. Never a 500 after the charge, a stream cut off without an
error, a header no proxy passes, or memory without bound. Each case was found by an attack on the relay."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from imagegate.config import Config
from imagegate.dialects.openai.inbound import APPLIED_HEADER_MAX
from imagegate.wire import outbound
from tests.conftest import Api, audit_ledgers, decode, open_api
from tests.loopback import loopback_server
from tests.test_accounts import balance
from tests.test_channels import relay_config, upload_edit

Answer = tuple[int, dict[str, str], bytes]


def noisy_png(side: int) -> bytes:
    """A PNG of `side`² noise: its base64 is long enough (over 64 KiB) to be lifted, not parsed."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


IMAGE = noisy_png(1024)


def images_json(*items: dict[str, Any], **extra: object) -> Answer:
    return 200, {"content-type": "application/json"}, json.dumps({"created": 1, "data": list(items), **extra}).encode()


def b64_item(image: bytes = IMAGE, **extra: object) -> dict[str, Any]:
    return {"b64_json": base64.b64encode(image).decode(), **extra}


@contextmanager
def provider(answer: Callable[[], Answer]) -> Iterator[str]:
    """An OpenAI-style provider on loopback that answers every POST with `answer()`; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            status, headers, body = answer()
            self.send_response(status)
            for name, value in {"content-length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    with loopback_server(Handler) as base:
        yield f"{base}/v1"


def channel(name: str, base_url: str, priority: int = 0) -> dict[str, object]:
    return {"name": name, "base_url": base_url, "priority": priority, "max_retries": 0, "breaker_rest_s": 0.1}


def charged_nothing(config: Config, api: Api) -> None:
    assert balance(config, api.key) == ("1000", "0")
    audit_ledgers(config.data_dir / "imagegate.db")


def upstream_error(r: httpx.Response) -> None:
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_error" and "Traceback" not in r.text


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-2-all"])
async def test_a_data_url_in_a_large_b64_json_answer_is_the_image(tmp_path: Path, model: str) -> None:
    """Seed 001's resellers answer `gpt-image-2-all` with `data:` URLs in `b64_json`."""
    item = {"b64_json": "data:image/png;base64," + base64.b64encode(IMAGE).decode()}
    with provider(lambda: images_json(item)) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            r = await upload_edit(
                api, {"model": model, "prompt": "x", "size": "1024x1024", "response_format": "b64_json"}
            )
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["b64_json"].split(",")[-1] == base64.b64encode(IMAGE).decode()


@pytest.mark.parametrize("revised", [5, {"a": 1}, ["x"], True])
async def test_a_revised_prompt_that_is_not_text_is_dropped(tmp_path: Path, revised: object) -> None:
    with provider(lambda: images_json(b64_item(revised_prompt=revised))) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            banana = await upload_edit(api, {"model": "nano-banana", "prompt": "x"})
            plain = await upload_edit(api, {"prompt": "x", "size": "1024x1024"})
    assert banana.status_code == 200, banana.text
    assert plain.status_code == 200 and plain.json()["data"][0].get("revised_prompt", "") == ""


async def test_a_long_revised_prompt_makes_a_header_proxies_pass(tmp_path: Path) -> None:
    said = "把苹果变成绿色" * 4000
    with provider(lambda: images_json(b64_item(revised_prompt=said))) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            r = await upload_edit(api, {"model": "nano-banana", "prompt": "x"})
    assert r.status_code == 200, r.text
    applied = r.headers["x-imagegate-applied"]
    assert len(applied) <= APPLIED_HEADER_MAX and unquote(applied).endswith("…")
    assert said.startswith(unquote(applied).removesuffix("…"))


async def test_a_streamed_partial_without_a_numeric_index_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    partial = {"type": "image_edit.partial_image", "partial_image_index": "abc", "b64_json": "QUJD"}
    events = f"data: {json.dumps(partial)}\n\n".encode()
    with provider(lambda: (200, {"content-type": "text/event-stream"}, events)) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024", "stream": "true", "partial_images": "1"})
            charged_nothing(config, api)
    sent = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert sent[-1]["type"] == "error" and sent[-1]["error"]["code"] == "upstream_error", sent


@pytest.mark.parametrize("form", [{}, {"output_format": "jpeg"}], ids=["passed-through", "converted"])
async def test_a_cut_off_image_is_the_providers_fault_and_the_next_channel_answers(
    tmp_path: Path, form: dict[str, str]
) -> None:
    cut = IMAGE[: len(IMAGE) // 2]
    with provider(lambda: images_json(b64_item(cut))) as bad, provider(lambda: images_json(b64_item())) as good:
        config = relay_config(tmp_path / "one", channel("bad", bad))
        async with open_api(config) as api:
            alone = await upload_edit(api, {"prompt": "x", "size": "1024x1024", **form})
            charged_nothing(config, api)
        config = relay_config(tmp_path / "two", channel("bad", bad), channel("good", good, priority=1))
        async with open_api(config) as api:
            failed_over = await upload_edit(api, {"prompt": "x", "size": "1024x1024", **form})
    upstream_error(alone)
    assert failed_over.status_code == 200, failed_over.text
    decode(base64.b64decode(failed_over.json()["data"][0]["b64_json"])).load()


@pytest.mark.parametrize("encoding", ["identity", "gzip", "gzip, gzip"])
async def test_an_answer_past_the_limit_is_refused_whole_or_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    monkeypatch.setattr(outbound, "MAX_ANSWER_BYTES", 4 * len(IMAGE))
    huge = images_json(b64_item(revised_prompt="x" * 8 * len(IMAGE)))[2]
    body = huge
    for _ in range(encoding.count("gzip")):
        body = gzip.compress(body)
    headers = {"content-encoding": encoding} if encoding != "identity" else {}
    with provider(lambda: (200, {"content-type": "application/json", **headers}, body)) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024"})
            charged_nothing(config, api)
    upstream_error(r)
    if encoding != "gzip, gzip":  # stacked encodings are not taken at all
        assert "answered too much" in r.json()["error"]["message"]


async def test_a_compressed_answer_inflates_a_piece_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx inflates each piece that arrives whole: 60 KB of gzip would be 64 MB at once."""
    monkeypatch.setattr(outbound, "MAX_ANSWER_BYTES", 4 * len(IMAGE))
    bomb = gzip.compress(b'{"data": [{"revised_prompt": "' + b"x" * (64 * 1024 * 1024) + b'"}]}')
    grown: list[int] = []
    inflate = zlib.decompressobj

    def watched(*args: Any) -> Any:
        made = inflate(*args)

        class Watched:
            unconsumed_tail = b""

            @property
            def eof(self) -> bool:
                return bool(made.eof)

            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                out = made.decompress(data, max_length)
                self.unconsumed_tail = made.unconsumed_tail
                grown.append(len(out))
                return out

        return Watched()

    monkeypatch.setattr(zlib, "decompressobj", watched)
    with provider(lambda: (200, {"content-type": "application/json", "content-encoding": "gzip"}, bomb)) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024"})
    upstream_error(r)
    assert grown and max(grown) <= 1024 * 1024 and sum(grown) <= 4 * len(IMAGE) + 1024 * 1024


async def test_a_data_url_without_a_comma_is_the_providers_fault(tmp_path: Path) -> None:
    broken = {"b64_json": "data:image/png;base64"}
    with provider(lambda: images_json(broken)) as bad, provider(lambda: images_json(b64_item())) as good:
        config = relay_config(tmp_path, channel("bad", bad), channel("good", good, priority=1))
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024"})
    assert r.status_code == 200, r.text


async def test_a_revised_prompt_with_a_lone_surrogate_is_stored_and_answered(tmp_path: Path) -> None:
    """JSON may carry one, and the envelope dialect's JSON reader takes it; our records cannot store it."""
    image = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    body = b'{"code": 0, "data": {"images": [{"url": "' + image.encode() + b'", "revised_prompt": "a\\ud800b"}]}}'
    with provider(lambda: (200, {"content-type": "application/json"}, body)) as base:
        config = relay_config(tmp_path, {**channel("p", base), "engine": "envelope"})
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024"})
            held = balance(config, api.key)[1]
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["revised_prompt"] == "a?b"
    assert held == "0"


async def test_a_providers_error_message_with_a_lone_surrogate_is_answered(tmp_path: Path) -> None:
    body = b'{"error": {"message": "a\\ud800b", "type": "invalid_request_error"}}'
    with provider(lambda: (400, {"content-type": "application/json"}, body)) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024"})
            charged_nothing(config, api)
    assert r.status_code == 400 and "a?b" in r.json()["error"]["message"], r.text


async def test_usages_of_other_shapes_across_calls_are_added_where_they_agree(tmp_path: Path) -> None:
    usages = iter(
        [
            {"total_tokens": 3, "input_tokens_details": {"image_tokens": 1}},
            {"total_tokens": 4, "input_tokens_details": 2},
        ]
    )
    with provider(lambda: images_json(b64_item(), usage=next(usages))) as base:
        config = relay_config(tmp_path, channel("p", base))
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024", "n": "2"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2 and r.json()["usage"]["total_tokens"] == 7
