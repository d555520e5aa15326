"""SPEC §8 fetch rules: refused ranges under every spelling, redirects, limits, the allow-list."""

from __future__ import annotations

import gzip
import ipaddress
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler
from typing import IO

import pybase64
import pytest

from imagegate.errors import ImageTooLarge, InvalidImage, InvalidImageUrl
from imagegate.net.fetch import FetchPolicy, SafeFetcher, address_refusal, decode_inline
from tests.conftest import make_image
from tests.loopback import loopback_server


def drain(spool: IO[bytes]) -> bytes:
    with spool:
        return spool.read()


@asynccontextmanager
async def fetching(policy: FetchPolicy) -> AsyncIterator[SafeFetcher]:
    fetcher = SafeFetcher(policy)
    try:
        yield fetcher
    finally:
        await fetcher.aclose()


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "ff02::1",
        "::",
    ],
)
def test_refused_addresses(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), ()) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), ()) is None


def test_allow_list_admits_its_networks_only() -> None:
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), LOOPBACK) is None
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), LOOPBACK) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://2130706433/x.png",
        "http://0x7f000001/x.png",
        "http://0x7f.0.0.1/x.png",
        "http://0177.0.0.1/x.png",
        "http://127.1/x.png",
    ],
)
async def test_loopback_spellings_are_refused_before_connecting(url: str) -> None:
    async with fetching(FetchPolicy()) as fetcher:
        with pytest.raises(InvalidImageUrl, match="only public addresses") as info:
            await fetcher.fetch(url, "image[0]")
        assert info.value.param == "image[0]"


@pytest.mark.parametrize("url", ["ftp://example.com/x.png", "file:///etc/passwd", "gopher://x/", "http:///x"])
async def test_only_http_schemes(url: str) -> None:
    async with fetching(FetchPolicy()) as fetcher:
        with pytest.raises(InvalidImageUrl):
            await fetcher.fetch(url, "image")


BOMB = gzip.compress(bytes(64 * 1024 * 1024))
"""64 MiB of zeros in 64 KB of gzip."""


class _Handler(BaseHTTPRequestHandler):
    body = make_image(64, 64)

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        if self.path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect-to/"))
            self.end_headers()
        elif self.path == "/huge":
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        elif self.path == "/bomb":
            bomb = BOMB
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)
        elif self.path == "/lying-length":
            self.send_response(200)
            self.send_header("Content-Length", "999999999")
            self.end_headers()
        elif self.path == "/host":
            payload = self.headers.get("Host", "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)


@pytest.fixture
def origin() -> Iterator[str]:
    with loopback_server(_Handler) as base:
        yield base


async def test_allowed_fetch_streams_the_body_and_sends_the_original_host(origin: str) -> None:
    async with fetching(FetchPolicy(allow=LOOPBACK)) as fetcher:
        assert drain(await fetcher.fetch(f"{origin}/x.png", "image")) == _Handler.body
        port = origin.rsplit(":", 1)[1]
        host = await fetcher.fetch(f"http://localhost:{port}/host", "image")
        assert drain(host) == f"localhost:{port}".encode()


async def test_redirect_into_a_refused_address_is_refused(origin: str) -> None:
    only_origin = (ipaddress.ip_network("127.0.0.1/32"),)
    async with fetching(FetchPolicy(allow=only_origin)) as fetcher:
        assert drain(await fetcher.fetch(f"{origin}/redirect-to/{origin}/ok.png", "image")) == _Handler.body
        with pytest.raises(InvalidImageUrl, match=r"private|non-global"):
            await fetcher.fetch(f"{origin}/redirect-to/http://10.0.0.1/x.png", "image")
        with pytest.raises(InvalidImageUrl, match="loopback"):
            await fetcher.fetch(f"{origin}/redirect-to/http://127.0.0.2:1/x.png", "image")


async def test_too_many_redirects(origin: str) -> None:
    async with fetching(FetchPolicy(allow=LOOPBACK, max_redirects=1)) as fetcher:
        url = f"{origin}/redirect-to/{origin}/redirect-to/{origin}/x.png"
        with pytest.raises(InvalidImageUrl, match="more than 1 redirects"):
            await fetcher.fetch(url, "image")


async def test_oversized_bodies_stop_while_streaming(origin: str) -> None:
    async with fetching(FetchPolicy(allow=LOOPBACK, max_bytes=1024 * 1024)) as fetcher:
        with pytest.raises(InvalidImageUrl, match="larger than 1,048,576 bytes"):
            await fetcher.fetch(f"{origin}/huge", "image")
        with pytest.raises(InvalidImageUrl, match="larger than"):
            await fetcher.fetch(f"{origin}/lying-length", "image")
        tracemalloc.start()
        try:
            with pytest.raises(InvalidImageUrl, match="larger than 1,048,576 bytes"):
                await fetcher.fetch(f"{origin}/bomb", "image")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 1024 * 1024, f"inflated a piece at a time, not 64 MiB at once ({peak:,} bytes)"


async def test_http_errors_and_dead_ports_answer_at_once(origin: str) -> None:
    async with fetching(FetchPolicy(allow=LOOPBACK, timeout_s=5)) as fetcher:
        with pytest.raises(InvalidImageUrl, match="ConnectError"):
            await fetcher.fetch("http://127.0.0.1:1/x.png", "image")


def test_inline_images() -> None:
    png = make_image(8, 8)

    b64 = pybase64.b64encode(png).decode()
    assert drain(decode_inline(f"data:image/png;base64,{b64}", param="image", max_bytes=10**6)) == png
    assert drain(decode_inline(b64, param="image", max_bytes=10**6)) == png
    assert drain(decode_inline(b64[:40] + "\n" + b64[40:], param="image", max_bytes=10**6)) == png
    with pytest.raises(InvalidImage):
        decode_inline("not base64 at all!", param="image", max_bytes=10**6)
    with pytest.raises(InvalidImage):
        decode_inline("data:image/png,abc", param="image", max_bytes=10**6)
    with pytest.raises(ImageTooLarge):
        decode_inline(b64, param="image", max_bytes=16)
