"""The upstream clients' responses are freed by reference counting as soon as nothing refers to them,
not left (with their megabytes of body) for Python's cyclic collector, as plain httpx leaves them;
against a real HTTP server on loopback, through the aiohttp transport the channels use."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from imagegate.net.acyclic_client import AcyclicClient
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
