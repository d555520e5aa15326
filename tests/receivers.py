"""A webhook receiver on loopback for tests: records every delivery and answers a scripted status."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.loopback import loopback_server


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    """Statuses to answer in turn; 200 once they run out."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(
        self, count: int, timeout: float = 20.0, where: Callable[[Delivery], bool] | None = None
    ) -> list[Delivery]:
        """Block until `count` deliveries (matching `where`) arrived; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [d for d in self.deliveries if where is None or where(d)]
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {len(found)} in {timeout} s")


@contextmanager
def webhook_receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    """A ThreadingHTTPServer on 127.0.0.1 collecting POSTed callbacks."""
    receiver = Receiver(url="")
    receiver.statuses = list(statuses or [])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.deliveries.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    with loopback_server(Handler) as base:
        receiver.url = f"{base}/hook"
        yield receiver
