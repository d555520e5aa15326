"""The upstream clients' responses are freed by reference counting as soon as nothing refers to them,
not left (with their megabytes of body) for Python's cyclic collector, as plain httpx leaves them;
against a real HTTP server on loopback, through the aiohttp transport the channels use."""

from __future__ import annotations

import gc
import gzip
import os
import time
import tracemalloc
import weakref
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from imagegate.net.acyclic_client import AcyclicClient, AnswerTooLarge
from imagegate.net.aiohttp_transport import AiohttpTransport
from tests.loopback import loopback_server

BODY = os.urandom(1_200_000)


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def no_cyclic_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def freed_after_read(client: httpx.AsyncClient) -> bool:
    response = await client.get("/")
    assert response.content == BODY
    gone = weakref.ref(response)
    del response
    return gone() is None


@pytest.mark.usefixtures("no_cyclic_collector")
async def test_a_read_answer_is_freed_when_let_go_where_plain_httpx_keeps_it_for_the_collector() -> None:
    with loopback_server(Answer) as base:
        async with httpx.AsyncClient(base_url=base, transport=AiohttpTransport(1)) as plain:
            assert not await freed_after_read(plain), "httpx's own client: a cycle the collector must break"
        async with AcyclicClient(base_url=base, transport=AiohttpTransport(1)) as client:
            assert await freed_after_read(client)


@pytest.mark.usefixtures("no_cyclic_collector")
async def test_a_streamed_answer_reads_whole_and_is_freed_once_closed() -> None:
    with loopback_server(Answer) as base:
        async with AcyclicClient(base_url=base, transport=AiohttpTransport(1)) as client:
            async with client.stream("GET", "/") as response:
                assert b"".join([chunk async for chunk in response.aiter_raw()]) == BODY
            assert response.is_closed
            gone = weakref.ref(response)
            del response
            assert gone() is None


def answering(status: int, headers: dict[str, str], pieces: list[bytes]) -> type[BaseHTTPRequestHandler]:
    """A handler that answers GET with `status`, `headers` and the body `pieces`, each flushed apart."""

    class Pieces(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(status)
            for name, value in {"content-length": str(sum(map(len, pieces))), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(0.05 if len(pieces) < 10 else 0)

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Pieces


async def capped_get(handler: type[BaseHTTPRequestHandler], limit: int = 10_000_000) -> httpx.Response:
    with loopback_server(handler) as base:
        async with AcyclicClient(transport=AiohttpTransport(4), max_answer_bytes=limit) as client:
            return await client.get(base)


@pytest.mark.parametrize(
    ("encoding", "packed"),
    [
        ("deflate", zlib.compress(BODY)),
        ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some servers send it
        ("gzip", gzip.compress(BODY)),
        ("GZIP", gzip.compress(BODY)),
        ("utf-8", BODY),  # not an encoding at all: ignored, as httpx ignores it
    ],
    ids=["zlib", "raw-deflate", "gzip", "upper-case", "not-an-encoding"],
)
async def test_an_answer_inflates_whatever_its_first_piece(encoding: str, packed: bytes) -> None:
    response = await capped_get(answering(200, {"content-encoding": encoding}, [packed[:1], packed[1:]]))
    assert response.content == BODY


async def test_an_answer_in_a_coding_not_taken_keeps_its_status_and_headers() -> None:
    """An error's body is dropped; a success's refused when read, so a status-only caller (a webhook's
    delivery) still gets its status."""
    handler = answering(429, {"content-encoding": "br", "retry-after": "7"}, [b"\x1b\x00\x00"])
    response = await capped_get(handler)
    assert response.status_code == 429 and response.headers["retry-after"] == "7" and response.content == b""
    brotli = answering(200, {"content-encoding": "br"}, [b"\x1b\x00\x00"])
    with pytest.raises(httpx.DecodingError):
        await capped_get(brotli)
    with loopback_server(brotli) as base:
        async with AcyclicClient(transport=AiohttpTransport(4), max_answer_bytes=1000) as client:
            streamed = await client.send(client.build_request("GET", base), stream=True)
            assert streamed.status_code == 200
            with pytest.raises(httpx.DecodingError):
                await streamed.aread()
            await streamed.aclose()


async def test_stacked_codings_inflate_and_a_limit_sized_image_fits_its_gzip() -> None:
    packed = gzip.compress(gzip.compress(BODY))
    for encoding, sent in (("gzip", gzip.compress(BODY)), ("gzip, gzip", packed)):
        assert len(sent) > len(BODY), "incompressible: its gzip is a little longer than the limit"
        answer = await capped_get(answering(200, {"content-encoding": encoding}, [sent]), limit=len(BODY))
        assert answer.content == BODY


TRAILING = [gzip.compress(b"small"), *[b"\0" * 65536] * 128]
"""A gzip stream and 8 MiB after its end (built here, so that tracing sees only what the client makes)."""


async def test_bytes_after_a_compressed_end_are_read_and_left_alone() -> None:
    tracemalloc.start()
    try:
        answer = await capped_get(answering(200, {"content-encoding": "gzip"}, TRAILING))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer.content == b"small"
    assert peak < 4 * 1024 * 1024, f"not gathered for zlib to look at ({peak:,} bytes)"


async def test_an_answer_that_inflates_past_the_limit_is_cut_off_a_piece_at_a_time() -> None:
    bomb = gzip.compress(bytes(50 * 1024 * 1024))
    with pytest.raises(AnswerTooLarge):
        await capped_get(answering(200, {"content-encoding": "gzip"}, [bomb]), limit=2 * 1024 * 1024)
