"""End to end with clients nobody here wrote, against a fresh `imagegate serve`: seed 004's generation
example, the official `openai` SDK for Python and for Node.js, and `litellm` — text-to-image works
out of the box on the classic engine, and so do edits at seed 004's listed sizes."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import LiveServer, make_image
from tests.shapes import assert_like

pytestmark = pytest.mark.e2e
SEEDS = Path(__file__).with_name("seeds")
NODE_CLIENTS = Path(__file__).with_name("node")


def image_of(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.base}/v1", api_key=live_server.key, max_retries=0)


def test_seed004_generation_example(live_server: LiveServer, tmp_path: Path) -> None:
    script = (SEEDS / "seed004_generate.sh").read_text(encoding="utf-8")
    script = script.replace("{BASE_URL}", live_server.base).replace("sk-***", live_server.key)
    body = json.loads(run(["bash", "-c", script], tmp_path))
    assert_like(body, json.loads((SEEDS / "responses" / "seed004_generation_success.json").read_text()))
    got = httpx.get(body["data"][0]["url"])
    assert got.headers["content-type"] == "image/webp"
    assert (image_of(got.content).format, image_of(got.content).size) == ("WEBP", (1024, 768))
    assert "a blue circle (for “sphere”)" in body["data"][0]["revised_prompt"]


def test_python_sdk_generates(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="gpt-image-2", prompt='a banner saying "imagegate" on a gradient from navy to teal', size="1536x1024"
    )
    assert result.data and result.data[0].b64_json and result.usage is not None
    assert image_of(base64.b64decode(result.data[0].b64_json)).size == (1536, 1024)
    assert "the text “imagegate” on a banner" in (result.data[0].revised_prompt or "")
    as_url = client.images.generate(model="gpt-image-2", prompt="a red square", response_format="url", n=2)
    assert as_url.data and len({item.url for item in as_url.data}) == 2


@pytest.mark.parametrize("size", ["1920x1080", "1080x1920"])
def test_seed004_listed_sizes_come_out_exact(client: openai.OpenAI, size: str) -> None:
    result = client.images.edit(
        model="gpt-image-2",
        image=("photo.png", make_image(800, 600), "image/png"),
        prompt="sepia",
        size=size,
        output_format="jpeg",
    )
    assert result.data and result.data[0].b64_json and result.size == size
    decoded = image_of(base64.b64decode(result.data[0].b64_json))
    assert (decoded.format, f"{decoded.width}x{decoded.height}") == ("JPEG", size)


def _node_skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed, so Node's openai package cannot be tried"
    if not (NODE_CLIENTS / "node_modules" / "openai").is_dir():
        return "tests/node/node_modules is missing: `make test` installs Node's openai package there"
    return None


@pytest.mark.skipif(_node_skip_reason() is not None, reason=_node_skip_reason() or "")
def test_node_sdk_generates_and_edits(live_server: LiveServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(800, 600))
    out = tmp_path / "out"
    out.mkdir()
    script = str(NODE_CLIENTS / "clients.mjs")
    summary: dict[str, Any] = json.loads(
        run(["node", script, live_server.base, live_server.key, str(photo), str(out)], tmp_path)
    )
    assert image_of((out / "generated.png").read_bytes()).size == (1024, 1536)
    assert "the text “NODE” as a poster's title" in summary["generated.png"]["revised_prompt"]
    assert image_of((out / "edited.png").read_bytes()).size == (1536, 1024)
    assert image_of((out / "seed003.png").read_bytes()).format == "PNG", "seed 003's prefix answers b64 to the SDK"
    assert summary["bad_key"] == {"status": 401, "name": "AuthenticationError", "code": "invalid_api_key"}


LITELLM_CLIENT = """
import base64, json, sys
import litellm

base, key, photo = sys.argv[1:4]
made = litellm.image_generation(
    model="openai/gpt-image-2", prompt='a green circle, "LITELLM"', api_base=base + "/v1", api_key=key, size="1024x768"
)
with open(photo, "rb") as f:
    edited = litellm.image_edit(
        model="openai/gpt-image-2", image=f, prompt="pencil sketch", api_base=base + "/v1", api_key=key, size="1024x1024"
    )
with open("generated.png", "wb") as f:
    f.write(base64.b64decode(made.data[0].b64_json))
with open("edited.png", "wb") as f:
    f.write(base64.b64decode(edited.data[0].b64_json))
print(json.dumps({"generated": made.data[0].revised_prompt, "edited": edited.data[0].revised_prompt}))
"""


def test_litellm_image_generation_and_edit(live_server: LiveServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(640, 480))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no fetch of its price list from the internet
    out = json.loads(
        run([sys.executable, "-c", LITELLM_CLIENT, live_server.base, live_server.key, str(photo)], tmp_path, env)
    )
    assert image_of((tmp_path / "generated.png").read_bytes()).size == (1024, 768)
    assert "a green circle" in out["generated"] and "LITELLM" in out["generated"]
    assert image_of((tmp_path / "edited.png").read_bytes()).size == (1024, 1024)
    assert "sketch" in out["edited"]
