"""Secrets never leave: a provider that echoes the channel's key gets it scrubbed from everything it
says (error message, code and param, streamed errors, usage, revised prompts, async failures, logs),
and the data dir that holds webhook secrets is the owner's alone."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from imagegate.config import Config, load_config
from tests.conftest import LOOPBACK_ALLOW, LiveServer, make_image, open_api
from tests.loopback import loopback_server
from tests.test_accounts import DATA_URL, UNLIMITED
from tests.upstreams import png
from tests.waiting import record_info, wait_for_task_async

SECRET = "sk-upstream-very-secret-0123456789"  # noqa: S105 - a made-up key the fake provider echoes


@contextmanager
def echoing_provider(status: int) -> Iterator[str]:
    """An OpenAI-compatible provider that puts the bearer key it received into every string it answers:
    an error (`status` >= 400), a stream's error event, or a success's usage and revised prompt."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            key = self.headers.get("authorization", "").removeprefix("Bearer ")
            streamed = b'"stream"' in body or b'name="stream"' in body
            if streamed:
                event = {"type": "error", "error": {"message": f"bad key {key}", "code": key, "param": key}}
                self._send(200, f"event: error\ndata: {json.dumps(event)}\n\n".encode(), "text/event-stream")
            elif status >= 400:
                error = {"error": {"message": f"key {key} refused", "type": "x", "code": f"c-{key}", "param": key}}
                self._send(status, json.dumps(error).encode(), "application/json")
            else:
                item = {"b64_json": base64.b64encode(png(64, 64)).decode(), "revised_prompt": f"drawn for {key}"}
                answer = {"created": 1, "data": [item], "usage": {"note": key, "total_tokens": 3}}
                self._send(200, json.dumps(answer).encode(), "application/json")

        def _send(self, code: int, data: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return None

    with loopback_server(Handler) as base:
        yield f"{base}/v1"


def config_for(tmp_path: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("ECHO_KEY", SECRET)
    channel = {"name": "echo", "base_url": base_url, "api_key_env": "ECHO_KEY", "max_retries": 0}
    return load_config(data_dir=tmp_path / "d", fetch_allow=LOOPBACK_ALLOW, accounts=UNLIMITED, channels=[channel])


@pytest.mark.parametrize("status", [400, 422, 500, 200])
async def test_a_provider_echoing_the_key_never_gets_it_to_the_client_the_task_or_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    with echoing_provider(status) as base:
        config = config_for(tmp_path, base, monkeypatch)
        async with open_api(config) as api:
            answers = [
                await api.client.post("/v1/images/edits", headers=api.auth, json={"prompt": "x", "image": DATA_URL}),
                await api.client.post(
                    "/v1/images/edits",
                    headers=api.auth,
                    json={"prompt": "x", "image": DATA_URL, "stream": True, "partial_images": 1},
                ),
                await api.client.post(
                    "/api/v1/jobs/createTask",
                    headers=api.auth,
                    json={"model": "gpt-image-2-text-to-image", "input": {"prompt": "x"}},
                ),
            ]
            task_id = answers[2].json()["data"]["taskId"]
            answers.append(await wait_for_task_async(api.client, record_info(task_id), headers=api.auth))
    said = " ".join(answer.text for answer in answers)
    assert answers[0].status_code == (200 if status == 200 else 400 if status < 500 else 502), answers[0].text
    assert SECRET not in said and "***" in said, said[:2000]
    assert SECRET not in caplog.text
    with sqlite3.connect(tmp_path / "d" / "imagegate.db") as db:
        stored = " ".join(str(row) for row in db.execute("SELECT result, error_code, error_message FROM tasks"))
    assert SECRET not in stored


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_and_its_files_are_the_owners_alone(live_server: LiveServer) -> None:
    r = httpx.post(
        f"{live_server.base}/v1/images/edits",
        headers={"Authorization": f"Bearer {live_server.key}"},
        data={"prompt": "x", "response_format": "url"},
        files={"image": ("a.png", make_image(64, 64), "image/png")},
    )
    assert r.status_code == 200
    data_dir = live_server.data_dir
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "imagegate.db") == 0o600
    for extra in ("imagegate.db-wal", "imagegate.db-shm", "imagegate.db-journal", "signing.key"):
        if (data_dir / extra).exists():
            assert _mode(data_dir / extra) == 0o600, extra
    files = [path for path in (data_dir / "files").rglob("*") if path.is_file()]
    assert files and all(_mode(path) == 0o600 for path in files)
    assert all(_mode(path) == 0o700 for path in (data_dir / "files").rglob("*") if path.is_dir())


async def test_an_existing_world_readable_data_dir_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    (data_dir / "imagegate.db").touch(mode=0o644)
    os.chmod(data_dir / "imagegate.db", 0o644)
    async with open_api(load_config(data_dir=data_dir)):
        pass
    assert _mode(data_dir) == 0o700 and _mode(data_dir / "imagegate.db") == 0o600
