"""The aiohttp transport under the upstream clients, against real HTTP servers on loopback: what it
sends is what httpx would send, answers come back whole, connections are reused and bounded, and its
failures are httpx's own errors (which the upstream engine maps, tests/test_outbound_clients.py)."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler

import anyio
import httpx
import pytest

from imagegate.net.aiohttp_transport import AiohttpTransport
from tests.loopback import loopback_server

BIG = os.urandom(3 * 1024 * 1024)


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[bytes] = []
        self.heads: list[dict[str, str]] = []
        self.peers: set[int] = set()
        self.now = 0
        self.most = 0


def handler_for(seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with seen.lock:
                seen.bodies.append(body)
                seen.heads.append({name.lower(): value for name, value in self.headers.items()} | {"path": self.path})
                seen.peers.add(self.client_address[1])
                seen.now += 1
                seen.most = max(seen.most, seen.now)
            try:
                self._answer()
            finally:
                with seen.lock:
                    seen.now -= 1

        def _answer(self) -> None:
            if self.path.startswith("/slow"):
                time.sleep(0.3)
            if self.path.startswith("/stall"):
                time.sleep(2)
            if self.path.startswith("/cut"):
                self.send_response(200)
                self.send_header("content-length", "1000")
                self.end_headers()
                self.wfile.write(b"0123456789")
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            gzipped = self.path.startswith("/gzip")
            body = gzip.compress(b"squeezed " * 1000) if gzipped else BIG
            self.send_response(201, "Made It")
            self.send_header("x-answer", hashlib.sha256(seen.bodies[-1]).hexdigest())
            if gzipped:
                self.send_header("content-encoding", "gzip")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


async def test_a_request_goes_out_as_httpx_builds_it_and_its_answer_comes_back_whole() -> None:
    seen = Seen()
    with loopback_server(handler_for(seen)) as base:
        async with httpx.AsyncClient(
            base_url=base, headers={"authorization": "Bearer k-1"}, transport=AiohttpTransport(4)
        ) as client:
            files = [("image", ("a.png", BIG[:1_000_000], "image/png"))]
            request = client.build_request("POST", "/edits?x=1", data={"prompt": "p"}, files=files)
            answer = await client.send(request)
    expected = await request.aread()
    assert seen.bodies == [expected]
    head = seen.heads[0]
    assert head["path"] == "/edits?x=1" and head["authorization"] == "Bearer k-1"
    assert head["content-type"].startswith("multipart/form-data; boundary=")
    assert head["content-length"] == str(len(expected))
    assert answer.status_code == 201 and answer.reason_phrase == "Made It"
    assert answer.headers["x-answer"] == hashlib.sha256(expected).hexdigest()
    assert answer.content == BIG


async def test_a_compressed_answer_is_decompressed_once() -> None:
    with loopback_server(handler_for(Seen())) as base:
        async with httpx.AsyncClient(base_url=base, transport=AiohttpTransport(4)) as client:
            answer = await client.post("/gzip", content=b"{}")
    assert answer.content == b"squeezed " * 1000


async def test_connections_are_kept_alive_and_never_more_than_the_limit() -> None:
    seen = Seen()
    with loopback_server(handler_for(seen)) as base:
        async with httpx.AsyncClient(base_url=base, transport=AiohttpTransport(2)) as client:
            for _ in range(4):
                assert (await client.post("/", content=b"one at a time")).status_code == 201
            assert len(seen.peers) == 1, "one connection, reused"

            async def slow() -> None:
                assert (await client.post("/slow", content=b"many at once")).status_code == 201

            async with anyio.create_task_group() as group:
                for _ in range(6):
                    group.start_soon(slow)
    assert seen.most == 2


async def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with httpx.AsyncClient(transport=AiohttpTransport(1)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_a_provider_that_stops_answering_is_a_read_timeout() -> None:
    with loopback_server(handler_for(Seen())) as base:
        async with httpx.AsyncClient(base_url=base, transport=AiohttpTransport(1), timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/stall", content=b"x")


async def test_an_answer_cut_short_is_a_transport_error() -> None:
    with loopback_server(handler_for(Seen())) as base:
        async with httpx.AsyncClient(base_url=base, transport=AiohttpTransport(1)) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/cut", content=b"x")


async def test_a_streamed_body_goes_with_the_length_it_names_not_chunked() -> None:
    seen = Seen()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(BIG), 100_000):
            yield BIG[start : start + 100_000]

    with loopback_server(handler_for(seen)) as base:
        async with httpx.AsyncClient(base_url=base, transport=AiohttpTransport(1)) as client:
            answer = await client.post("/", content=pieces(), headers={"content-length": str(len(BIG))})
    assert answer.status_code == 201
    assert seen.bodies == [BIG] and "transfer-encoding" not in seen.heads[0]
