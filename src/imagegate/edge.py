"""The outermost middleware: what every HTTP request meets before any route.

It names the request (`x-request-id`), refuses a `Host` outside `trusted_hosts`, bounds the body by
size (413 as soon as a declared or received length passes the limit — JSON bodies, held in memory,
have a lower one) and by time (408 when a body stalls or trickles), tags every response, counts it
in the metrics by route template and status, and turns a client that went away mid-request into one
INFO line and status 499 instead of a server error.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from imagegate.asgi import ASGIApp, Message, Receive, Scope, Send, header
from imagegate.config import Limits
from imagegate.errors import BadRequest, ImagegateError, PayloadTooLarge, RequestTimeout, excerpt
from imagegate.metrics import UNMATCHED_ROUTE, Metrics
from imagegate.net import hosts

log = logging.getLogger("imagegate.edge")
CLIENT_GONE = 499
"""The status counted for a request whose client disconnected before it was answered (nginx's)."""
ErrorRenderer = Callable[[ImagegateError, Scope], Response]


def body_limit(scope: Scope, limits: Limits) -> int:
    """The most bytes the request's body may carry: a multipart body's files are spooled, while JSON
    and urlencoded forms are parsed in memory and get the lower limit."""
    content_type = (header(scope, b"content-type") or b"").decode("latin-1").lower()
    return limits.body_bytes if content_type.startswith("multipart/form-data") else limits.json_bytes


class _BodyClock:
    """Raises RequestTimeout when a body stalls for `idle_s` or, after that, averages below `min_rate`."""

    def __init__(self, limits: Limits) -> None:
        self.idle_s = limits.body_idle_timeout_s
        self.min_rate = limits.body_min_bytes_per_s
        self.started = time.monotonic()

    async def receive(self, receive: Receive, received: int) -> Message:
        try:
            with anyio.fail_after(self.idle_s):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(f"The request body stalled: no data for {self.idle_s:g} s.") from None
        elapsed = time.monotonic() - self.started
        if message.get("more_body") and elapsed > self.idle_s and received < self.min_rate * elapsed:
            raise RequestTimeout(
                f"The request body arrives too slowly: {received:,} bytes in {elapsed:.0f} s, under "
                f"{self.min_rate:,} bytes per second."
            )
        return message


class EdgeMiddleware:
    """See the module docstring. `render_error` answers a refusal in the shape of the route's dialect."""

    def __init__(
        self, app: ASGIApp, *, limits: Limits, trusted_hosts: list[str], metrics: Metrics, render_error: ErrorRenderer
    ) -> None:
        self.app = app
        self.limits = limits
        self.trusted_hosts = trusted_hosts
        self.metrics = metrics
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers.append((b"x-request-id", request_id.encode()))
                for name, value in scope["state"].get("response_headers", {}).items():
                    if name.encode() not in names:
                        headers.append((name.encode(), value.encode()))
                if b"x-imagegate-engine" not in names:
                    headers.append((b"x-imagegate-engine", b"none"))
                message["headers"] = headers
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await self.render_error(refusal, scope)(scope, receive, tagged_send)
                return
            await self.app(scope, self._bounded(scope, receive), tagged_send)
        except ClientDisconnect:
            status = CLIENT_GONE
            log.info("%s %s: the client went away before the answer (%s)", scope["method"], scope["path"], request_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.http_requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.http_seconds.labels(template).observe(time.perf_counter() - started)

    def _refusal(self, scope: Scope) -> ImagegateError | None:
        """Why the request is refused before a byte of its body is read, if it is."""
        host = hosts.host_header(scope)
        if self.trusted_hosts and not hosts.is_trusted(host, self.trusted_hosts):
            return BadRequest(f"This server does not answer to the host '{excerpt(host)}'.", code="untrusted_host")
        limit = body_limit(scope, self.limits)
        declared = (header(scope, b"content-length") or b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > limit:
            return PayloadTooLarge(f"The request body of {int(declared):,} bytes exceeds {limit:,} bytes.")
        return None

    def _bounded(self, scope: Scope, receive: Receive) -> Receive:
        """`receive`, stopping with 413 past the body limit and with 408 when the body stalls."""
        limit = body_limit(scope, self.limits)
        clock = _BodyClock(self.limits)
        received = 0
        complete = False

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come, whenever it comes
                return await receive()
            message = await clock.receive(receive, received)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"The request body exceeds {limit:,} bytes.")
                complete = not message.get("more_body", False)
            return message

        return bounded_receive
