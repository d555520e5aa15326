"""The HTTP server: uvicorn, with the connection guards it lacks (SPEC §8).

uvicorn bounds neither how long a client may take to send a request's headers nor how many
connections one address may hold. `GuardedHttpToolsProtocol` (uvicorn's protocol on httptools' C
parser, which takes in a request for a fraction of h11's CPU) closes a connection whose request
headers are not complete `header_timeout_s` after its first byte (or after it opened), and refuses a
client address past `max_connections_per_client` open connections. The body's pace is bounded later, by
the edge middleware.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import logging.config
import resource
import socket
from collections import Counter
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from imagegate.config import Limits

log = logging.getLogger("imagegate.server")
WANTED_DESCRIPTORS = 65_536
"""Open files a server process asks for at start: thousands of slow requests each hold a few."""
_REFUSAL = b'{"error": {"message": "Too many connections from this address.", "code": "too_many_connections"}}'
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_REFUSAL)}\r\n\r\n".encode()
    + _REFUSAL
)


def guarded_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol class enforcing `limits.header_timeout_s` and `limits.max_connections_per_client`
    (its own count of open connections by client address)."""
    open_by_address: Counter[str] = Counter()

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _address = ""
        _header_timer: asyncio.TimerHandle | None = None
        _counted = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = self.client[0] if self.client else ""
            most = limits.max_connections_per_client
            if most and open_by_address[self._address] >= most:
                log.info("%s: refused a connection past its %d open ones", self._address, most)
                transport.write(_TOO_MANY)
                transport.close()
                return
            open_by_address[self._address] += 1
            self._counted = True
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            if self._counted:
                self._counted = False
                open_by_address[self._address] -= 1
                if open_by_address[self._address] <= 0:
                    del open_by_address[self._address]
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._arm_header_timer()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm_header_timer()  # the keep-alive timeout watches an idle connection

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():  # the timer runs only until a request's headers end
                log.info(
                    "%s: closed a connection whose request headers took over %g s",
                    self._address,
                    limits.header_timeout_s,
                )
                self.transport.close()

    return GuardedHttpToolsProtocol


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with imagegate's own loggers at INFO beside uvicorn's."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["imagegate"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def raise_descriptor_limit(wanted: int = WANTED_DESCRIPTORS) -> int:
    """Raise this process's soft limit on open files toward `wanted`, as far as its hard limit allows
    (each client connection, upload spool, provider connection and stored file holds one); returns the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a platform that refuses keeps its limit
            log.warning("could not raise the open-files limit from %d", soft)
    return int(soft)


def listening_socket(host: str, port: int, what: str = "the port") -> socket.socket:
    """A socket bound to `host:port` and listening; OSError naming `what` and the address (one line,
    e.g. the address in use) before anything else is opened."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{what} {host}:{port}: {exc.strerror}") from exc
    return sock


def run(app: Any, *, host: str, port: int, limits: Limits) -> None:
    """Serve `app` on `host:port` until stopped, with the guards above and the open-files limit raised."""
    logging.config.dictConfig(log_config())
    log.info("open-files limit: %d", raise_descriptor_limit())
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=log_config(),
        access_log=False,
        http=guarded_protocol(limits),
    )
