"""An SSRF corpus: every spelling of loopback, private, link-local, metadata, CGNAT, multicast and
special-purpose addresses, IPv4 inside IPv6, redirects to them and names that resolve to them, at
every place a client can put a URL. Each must be refused before any connection: a canary listening
on the loopback target must receive nothing."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagegate.config import load_config
from imagegate.errors import InvalidImageUrl
from imagegate.net.fetch import FetchPolicy, address_refusal
from tests.conftest import Api, make_image, open_api
from tests.test_fetch import fetching

REFUSED = [
    # IPv4: loopback, private, link-local and metadata, CGNAT (and Alibaba's metadata in it), "this network",
    # benchmarking, documentation, IETF, 6to4 relay, multicast, reserved, broadcast
    *("127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.0.1"),
    *("169.254.169.254", "169.254.170.2", "100.64.0.1", "100.100.100.200", "0.0.0.0", "0.1.2.3"),
    *("198.18.0.1", "198.51.100.7", "203.0.113.9", "192.0.2.1", "192.0.0.8", "192.88.99.1"),
    *("224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255"),
    # IPv6: loopback, unspecified, link-local, site-local (deprecated), unique-local (AWS metadata too),
    # multicast, documentation (both), Teredo/ORCHID (2001::/23), SRv6, discard, NAT64, IPv4-mapped,
    # IPv4-compatible, 6to4 of loopback and private
    *("::1", "::", "fe80::1", "fec0::1", "fc00::1", "fd00:ec2::254", "ff02::1", "ff0e::1"),
    *("2001:db8::1", "3fff::1", "2001::1", "2001:20::1", "5f00::1", "100::1", "64:ff9b::7f00:1"),
    *("::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "2002:7f00:1::1"),
    "2002:a00:1::1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_every_non_public_address_is_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), ()) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), ()) is None


@dataclass
class Canary:
    """A listener on a loopback address that counts every connection it receives."""

    port: int
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def canary() -> Iterator[Canary]:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Canary(server.server_address[1], hits)
    finally:
        server.shutdown()
        server.server_close()


def spellings(port: int) -> list[str]:
    """URLs that all reach this machine's canary (or a private or metadata address) if not refused."""
    hosts = [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "0177.0000.0000.0001",
        "127.000.000.001",
        "0",
        "0.0.0.0",
        "localhost",
        "LOCALHOST",
        "localhost.",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[2002:7f00:1::1]",
        "[64:ff9b::7f00:1]",
        "[fec0::1]",
        "[::]",
    ]
    urls = [f"http://{host}:{port}/canary.png" for host in hosts]
    urls += [f"http://user:pass@127.0.0.1:{port}/canary.png", f"https://127.0.0.1:{port}/canary.png"]
    urls += ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/meta-data/"]
    urls += ["http://100.100.100.200/latest/meta-data/", "http://metadata.google.internal/computeMetadata/v1/"]
    return urls


async def test_no_spelling_reaches_the_canary(canary: Canary) -> None:
    async with fetching(FetchPolicy(timeout_s=5)) as fetcher:
        for url in spellings(canary.port):
            with pytest.raises(InvalidImageUrl) as info:
                await fetcher.fetch(url, "image")
            assert info.value.param == "image", url
    assert canary.hits == []


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under `.rebind.test` that resolve to loopback, to a private address, or to a public
    address and loopback at once (a resolver an attacker controls)."""
    real = socket.getaddrinfo
    answers = {
        "loop.rebind.test": ["127.0.0.1"],
        "private.rebind.test": ["10.0.0.7"],
        "mixed.rebind.test": ["93.184.216.34", "127.0.0.1"],
        "six.rebind.test": ["::1"],
    }

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in answers:
            infos = []
            for address in answers[host]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                infos.append((family, socket.SOCK_STREAM, 6, "", (address, port)))
            return infos
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.usefixtures("rebinding")
async def test_names_that_resolve_to_refused_addresses_are_refused(canary: Canary) -> None:
    async with fetching(FetchPolicy(timeout_s=5)) as fetcher:
        for name in ("loop", "private", "mixed", "six"):
            with pytest.raises(InvalidImageUrl, match="only public addresses"):
                await fetcher.fetch(f"http://{name}.rebind.test:{canary.port}/x.png", "image")
    assert canary.hits == []


@pytest.fixture
def redirector(canary: Canary) -> Iterator[str]:
    """An origin on 127.0.0.2 (the only address the test allows) that redirects wherever `/to/` says."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/to/"))
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_redirects_to_any_spelling_are_refused(canary: Canary, redirector: str) -> None:
    policy = FetchPolicy(allow=(ipaddress.ip_network("127.0.0.2/32"),), timeout_s=5)
    async with fetching(policy) as fetcher:
        for url in spellings(canary.port):
            with pytest.raises(InvalidImageUrl):
                await fetcher.fetch(f"{redirector}/to/{url}", "image")
    assert canary.hits == []


@pytest.fixture
async def strict(tmp_path: Path) -> Any:
    """The app with the default address rules (no allow-list)."""
    async with open_api(load_config(data_dir=tmp_path / "strict")) as api:
        yield api


def injections(url: str) -> list[tuple[str, dict[str, Any], str]]:
    """(path, request kwargs, the param the refusal must name) for each place a URL can go."""
    png = make_image(32, 32)
    return [
        ("/v1/images/edits", {"json": {"prompt": "x", "image": url}}, "image[0]"),
        ("/v1/images/edits", {"json": {"prompt": "x", "images": [{"image_url": url}]}}, "image[0]"),
        ("/v1/images/edits", {"data": {"prompt": "x"}, "files": [("image[]", (None, url))]}, "image[0]"),
        (
            "/v1/images/edits",
            {"data": {"prompt": "x", "mask": url}, "files": [("image", ("a.png", png, "image/png"))]},
            "mask",
        ),
        ("/v1/images/edit", {"json": {"prompt": "x", "image": url}}, "image[0]"),
        (
            "/api/v1/jobs/createTask",
            {"json": {"model": "gpt-image-2-image-to-image", "input": {"prompt": "x", "image_urls": [url]}}},
            "input.image_urls[0]",
        ),
        (
            "/v1/images/edits",
            {"json": {"prompt": "x", "image": "data:image/png;base64,AAAA", "callback_url": url}},
            "callback_url",
        ),
    ]


def _refusal(body: dict[str, Any]) -> tuple[str, Any]:
    if "error" in body:
        return str(body["error"]["code"]), body["error"]["param"]
    return "dialect", body.get("message") or body.get("msg")


async def test_every_injection_point_refuses_every_spelling_without_connecting(strict: Api, canary: Canary) -> None:
    for url in spellings(canary.port):
        for path, kwargs, param in injections(url):
            r = await strict.client.post(path, headers=strict.auth, **kwargs)
            assert r.status_code in (400, 422), (path, url, r.text)
            code, said = _refusal(r.json())
            if code != "dialect":
                expected = "invalid_callback_url" if param == "callback_url" else "invalid_image_url"
                assert (code, said) == (expected, param), (path, url, r.text)
            else:
                assert param in said, (path, url, r.text)
    assert canary.hits == []


async def test_refused_callback_urls_say_so(strict: Api) -> None:
    for host in ("[fec0::1]", "[3fff::1]", "127.0.0.1", "[::ffff:10.0.0.1]"):
        r = await strict.client.post(
            "/v1/images/edits",
            headers=strict.auth,
            json={"prompt": "x", "image": "data:image/png;base64,AAAA", "callback_url": f"http://{host}/hook"},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_callback_url", r.text


async def test_a_refused_url_is_not_echoed_whole(strict: Api) -> None:
    host = "a" * 5000 + ".example"
    r = await strict.client.post(
        "/v1/images/edits", headers=strict.auth, json={"prompt": "x", "image": f"http://{host}/x.png"}
    )
    assert r.status_code == 400 and len(r.text) < 600, len(r.text)
    n = await strict.client.post("/v1/images/edits", headers=strict.auth, json={"prompt": "x", "n": "9" * 5000})
    assert n.status_code == 400 and len(n.text) < 600
