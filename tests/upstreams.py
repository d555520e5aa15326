"""A fault-injecting OpenAI-compatible provider on loopback: it answers image requests with a real
image, or — for a scripted share of them — with 429, 500, a stall past the client's timeout, or a
dropped connection."""

from __future__ import annotations

import base64
import io
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from PIL import Image

from tests.loopback import loopback_server

FAULTS = ("429", "500", "drop", "stall")


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class FaultyProvider:
    base_url: str
    """As the OpenAI SDK takes it (ends in /v1)."""
    fault_rate: float
    stall_s: float
    image: bytes
    seen: list[str] = field(default_factory=list)
    """What each request got: `ok` or the fault's name."""
    keys: list[str] = field(default_factory=list)
    """The bearer key of each request."""
    bodies: list[bytes] = field(default_factory=list)
    """The body of each request."""
    follow_size: bool = False
    """Answer JSON requests at the size they ask for (else always at the provider's own size)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> int:
        with self.lock:
            return self.seen.count(what)


@contextmanager
def faulty_provider(
    fault_rate: float,
    *,
    stall_s: float = 2.0,
    size: int = 256,
    seed: int = 7,
    follow_size: bool = False,
    image: bytes | None = None,
) -> Iterator[FaultyProvider]:
    """A provider whose answers fail at `fault_rate` (0–1), cycling through FAULTS; it answers `image`
    when given, else a plain PNG of `size`²."""
    provider = FaultyProvider("", fault_rate, stall_s, image or png(size, size), follow_size=follow_size)
    rng = random.Random(seed)
    faults = itertools.cycle(FAULTS)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with provider.lock:
                provider.bodies.append(body)
                fault = next(faults) if rng.random() < provider.fault_rate else "ok"
                provider.seen.append(fault)
                provider.keys.append(self.headers.get("authorization", ""))
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault == "stall":
                time.sleep(provider.stall_s)
            if fault in ("429", "500"):
                self._json(
                    int(fault),
                    {"error": {"message": f"injected {fault}", "type": "server_error", "code": None}},
                    {"retry-after": "0"} if fault == "429" else {},
                )
                return
            image = provider.image
            if provider.follow_size and self.headers.get("content-type", "").startswith("application/json"):
                width, height = (int(v) for v in json.loads(body).get("size", "256x256").split("x"))
                image = png(width, height)
            b64 = base64.b64encode(image).decode()
            self._json(200, {"created": int(time.time()), "data": [{"b64_json": b64}], "usage": {"total_tokens": 7}})

        def do_GET(self) -> None:
            self._json(200, {"object": "list", "data": [{"id": "gpt-image-2", "object": "model"}]})

        def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return None

    with loopback_server(Handler) as base:
        provider.base_url = f"{base}/v1"
        yield provider
