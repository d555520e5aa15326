"""Attacks on what the server reads: nothing large before the request is authorised, bodies bounded by
size and by time, slow and vanishing clients, forged Host headers (issue: hostile traffic)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from imagegate.config import Limits, load_config
from tests.conftest import LOOPBACK_ALLOW, Api, create_key, free_port, invoke_cli, make_image, open_api, start_serve
from tests.test_accounts import DATA_URL

MB = 1024 * 1024
PNG = make_image(64, 64)


@dataclass
class Body:
    """A request body that counts how much of it the server pulled."""

    chunks: int
    chunk: bytes = b"x" * MB
    pulled: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += len(self.chunk)
            yield self.chunk


async def test_provider_callbacks_are_404_before_a_byte_without_a_callback_channel(api: Api) -> None:
    body = Body(chunks=600)
    r = await api.client.post("/relay/callbacks/cb.anything~9999999999~" + "0" * 32, content=body)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert body.pulled <= MB, f"read {body.pulled:,} bytes of a request nobody waits for"


async def test_provider_callbacks_check_the_token_first_and_have_a_small_limit(tmp_path: Path) -> None:
    channel = {"name": "p", "base_url": "http://127.0.0.1:9/v1", "callback": True}
    config = load_config(data_dir=tmp_path / "d", public_url="http://127.0.0.1:8000", channels=[channel])
    config.limits.max_callback_bytes = 4 * MB
    async with open_api(config) as api:
        forged = Body(chunks=600)
        r = await api.client.post("/relay/callbacks/cb.forged~9999999999~" + "0" * 32, content=forged)
        assert r.status_code == 404 and forged.pulled <= MB
        slot = api.client._transport.app.state.runtime.inbox.expect()  # type: ignore[attr-defined]
        token = slot.url.rsplit("/", 1)[1]
        big = Body(chunks=600)
        r = await api.client.post(f"/relay/callbacks/{token}", content=big)
        assert r.status_code == 413 and big.pulled <= 5 * MB, big.pulled
        declared = await api.client.post(
            f"/relay/callbacks/{token}", content=b"{}", headers={"content-length": str(600 * MB)}
        )
        assert declared.status_code == 413
        ok = await api.client.post(f"/relay/callbacks/{token}", json={"success": True, "data": {"data": []}})
        assert ok.status_code == 200 and await slot.wait() == {"success": True, "data": {"data": []}}


async def test_idempotent_posts_authenticate_before_spooling(api: Api) -> None:
    body = Body(chunks=600)
    headers = {"Authorization": "Bearer ig-made-up", "Idempotency-Key": "k1", "content-type": "multipart/form-data"}
    r = await api.client.post("/v1/images/edits", content=body, headers=headers)
    assert r.status_code == 401 and body.pulled <= MB, body.pulled


async def test_a_revoked_or_expired_key_gets_no_replay(api: Api) -> None:
    admin = {"Authorization": f"Bearer {await create_key(api.config, admin=True)}"}
    made = (await api.client.post("/admin/keys", headers=admin, json={"credits": "100"})).json()
    headers = {"Authorization": f"Bearer {made['key']}", "Idempotency-Key": "once"}
    body = {"prompt": "sepia", "image": DATA_URL}
    first = await api.client.post("/v1/images/edits", headers=headers, json=body)
    assert first.status_code == 200
    assert (await api.client.post("/v1/images/edits", headers=headers, json=body)).headers["idempotent-replayed"]
    assert (await api.client.delete(f"/admin/keys/{made['id']}", headers=admin)).status_code == 200
    revoked = await api.client.post("/v1/images/edits", headers=headers, json=body)
    assert revoked.status_code == 401 and "idempotent-replayed" not in revoked.headers
    expiring = (await api.client.post("/admin/keys", headers=admin, json={"credits": "100"})).json()
    headers = {"Authorization": f"Bearer {expiring['key']}", "Idempotency-Key": "once"}
    assert (await api.client.post("/v1/images/edits", headers=headers, json=body)).status_code == 200
    past = int(time.time()) - 10
    patched = await api.client.patch(f"/admin/keys/{expiring['id']}", headers=admin, json={"expires_at": past})
    assert patched.status_code == 200
    expired = await api.client.post("/v1/images/edits", headers=headers, json=body)
    assert expired.status_code == 401 and "idempotent-replayed" not in expired.headers


def test_the_default_body_limits_follow_the_image_limits() -> None:
    limits = Limits(max_image_bytes=10 * MB, max_input_images=4)
    assert limits.body_bytes == 4 * 10 * MB + MB
    assert limits.json_bytes == (10 * MB + 2) // 3 * 4 + MB, "one data URL of a full-size image"
    assert Limits(max_body_bytes=123, max_json_bytes=456).json_bytes == 123, "JSON never above the body limit"
    assert Limits().body_bytes < 1024 * MB


@pytest.mark.parametrize(("content_type", "limit"), [("application/json", "json_bytes"), ("", "json_bytes")])
async def test_json_bodies_stop_at_their_limit(api: Api, content_type: str, limit: str) -> None:
    allowed = getattr(api.config.limits, limit)
    body = Body(chunks=allowed // MB + 50)
    headers = {**api.auth, "content-type": content_type} if content_type else api.auth
    r = await api.client.post("/v1/images/edits", content=body, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert body.pulled <= allowed + MB, f"read {body.pulled:,} of a body limited to {allowed:,}"


async def test_an_urlencoded_body_parsed_in_memory_gets_the_json_limit(api: Api) -> None:
    limits = api.config.limits
    declared = (limits.json_bytes + limits.body_bytes) // 2
    headers = {**api.auth, "content-type": "application/x-www-form-urlencoded", "content-length": str(declared)}
    r = await api.client.post("/v1/images/edits", headers=headers, content=b"prompt=x")
    assert r.status_code == 413 and f"exceeds {limits.json_bytes:,} bytes" in r.json()["error"]["message"], r.text


async def test_a_declared_length_past_the_limit_is_refused_unread(api: Api) -> None:
    for path in ("/v1/images/edits", "/v1/images/edit", "/api/v1/jobs/createTask"):
        r = await api.client.post(
            path, headers={**api.auth, "content-length": str(2 * api.config.limits.body_bytes)}, content=b"{}"
        )
        assert r.status_code in (413, 400), (path, r.text)  # jobs answers its codes (400 for 413)
        assert "exceeds" in r.text


async def test_a_forged_host_header_never_reaches_result_urls(api: Api, tmp_path: Path) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    r = await api.client.post(
        "/v1/images/edits",
        headers={**api.auth, "host": "evil.example"},
        data={"prompt": "x", "response_format": "url"},
        files=files,
    )
    assert r.status_code == 200 and r.json()["data"][0]["url"].startswith("http://testserver/files/")
    config = load_config(
        data_dir=tmp_path / "t", fetch_allow=LOOPBACK_ALLOW, trusted_hosts="images.example,*.cdn.example"
    )
    async with open_api(config) as trusting:
        evil = await trusting.client.post(
            "/v1/images/edits", headers={**trusting.auth, "host": "evil.example"}, data={"prompt": "x"}, files=files
        )
        assert evil.status_code == 400 and evil.json()["error"]["code"] == "untrusted_host"
        jobs = await trusting.client.post("/api/v1/jobs/createTask", headers={**trusting.auth, "host": "evil.example"})
        assert jobs.status_code == 400 and jobs.json()["code"] == 400, "refused in the dialect's own shape"
        for host in ("images.example", "a.cdn.example:8443"):
            good = await trusting.client.post(
                "/v1/images/edits",
                headers={**trusting.auth, "host": host},
                data={"prompt": "x", "response_format": "url"},
                files=files,
            )
            assert good.status_code == 200 and good.json()["data"][0]["url"].startswith(f"http://{host}/files/")


# --- against the real server: slow clients, too many connections, clients that vanish -------------------


@dataclass
class Guarded:
    base: str
    port: int
    key: str
    log: Path
    pid: int


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """`imagegate serve` with short timeouts and a small per-address connection cap."""
    data_dir = tmp_path_factory.mktemp("guarded")
    port = free_port()
    env = {
        **os.environ,
        "IMAGEGATE_DATA_DIR": str(data_dir),
        "IMAGEGATE_LIMITS__HEADER_TIMEOUT_S": "1.5",
        "IMAGEGATE_LIMITS__BODY_IDLE_TIMEOUT_S": "2",
        "IMAGEGATE_LIMITS__MAX_CONNECTIONS_PER_CLIENT": "6",
    }
    log_path = data_dir / "serve.log"
    with log_path.open("w") as log:
        proc = start_serve(port, env, log)
    key = invoke_cli("keys", "create", "--credits", "100", env=env).stdout.strip().splitlines()[-1]
    try:
        yield Guarded(f"http://127.0.0.1:{port}", port, key, log_path, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    return sock


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes) -> float:
    """Send `trickle` a byte every 0.25 s until the server closes; how long that took."""
    started = time.monotonic()
    try:
        for byte in trickle:
            sock.sendall(bytes([byte]))
            time.sleep(0.25)
            if time.monotonic() - started > seconds:
                break
        sock.settimeout(seconds)
        if sock.recv(1) == b"":
            return time.monotonic() - started
    except OSError:
        return time.monotonic() - started
    return float("inf")


@pytest.mark.e2e
def test_headers_sent_a_byte_at_a_time_are_cut_off(guarded: Guarded) -> None:
    with _connect(guarded.port) as sock:
        took = _closed_within(sock, 10, b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100)
    assert took < 5, f"the connection stayed open {took:.1f} s"
    with _connect(guarded.port) as silent:
        silent.settimeout(8)
        assert silent.recv(1) == b"", "a connection that never sends a request is closed too"


@pytest.mark.e2e
def test_a_trickling_body_gets_408(guarded: Guarded) -> None:
    head = (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {guarded.key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    with _connect(guarded.port) as sock:
        sock.sendall(head.encode())
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.3)
        while time.monotonic() - started < 15 and not answer:
            try:
                sock.sendall(b" ")
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 8


@pytest.mark.e2e
def test_one_address_may_hold_only_so_many_connections(guarded: Guarded) -> None:
    time.sleep(0.5)  # connections of earlier tests are gone
    held = [_connect(guarded.port) for _ in range(6)]
    try:
        with _connect(guarded.port) as extra:
            extra.settimeout(5)
            assert extra.recv(100).startswith(b"HTTP/1.1 429")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{guarded.base}/healthz").status_code == 200, "and may connect again once they close"


@pytest.mark.e2e
def test_a_client_that_vanishes_mid_body_is_one_info_line_and_a_499(guarded: Guarded) -> None:
    head = (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {guarded.key}\r\n"
        "Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: 10000000\r\n\r\n"
        '--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    )
    before = guarded.log.read_text()
    with _connect(guarded.port) as sock:
        sock.sendall(head.encode() + b"x" * 200_000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "went away" not in guarded.log.read_text()[len(before) :]:
        time.sleep(0.1)
    added = guarded.log.read_text()[len(before) :]
    assert added.count("went away") == 1 and "Traceback" not in added and "ERROR" not in added, added
    assert len(added.strip().splitlines()) == 1, added
    metrics = httpx.get(f"{guarded.base}/metrics").text
    assert 'route="/v1/images/edits",status="499"} 1.0' in metrics
    assert 'status="500"' not in metrics


@pytest.mark.e2e
def test_600_mb_to_a_callback_url_costs_no_memory(guarded: Guarded) -> None:
    server = psutil.Process(guarded.pid)
    before = server.memory_info().rss
    code = (
        "import httpx, sys\n"
        "def body():\n"
        "    for _ in range(600):\n"
        "        yield b'x' * 1048576\n"
        "try:\n"
        "    r = httpx.post(sys.argv[1], content=body(), timeout=60)\n"
        "    print(r.status_code)\n"
        "except httpx.HTTPError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    url = f"{guarded.base}/relay/callbacks/cb.x~9999999999~{'0' * 32}"
    clients = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [client.communicate(timeout=120)[0].strip() for client in clients]
    grown = server.memory_info().rss - before
    assert all(out in ("404", "RemoteProtocolError", "WriteError", "ReadError") for out in outputs), outputs
    assert grown < 30 * MB, f"the server grew by {grown / MB:.0f} MB"
    assert json.loads(httpx.get(f"{guarded.base}/healthz").text)["status"] == "ok"
