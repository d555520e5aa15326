"""`Idempotency-Key` on every POST (SPEC §6), as ASGI middleware in front of every dialect.

A POST with the header is authenticated first (an unknown, revoked or expired key gets its 401 before
a byte of the body is read, and never a replay), then fingerprinted (method, path, query and body; a multipart body without
its random boundary, so a client library's retry matches) while its body is spooled. The first
request runs and its 2xx answer is stored; a repeat with the same fingerprint within 24 hours gets
that answer again (header `idempotent-replayed: true`) without running or charging; the same key
with another request is a 422; a repeat while the first still runs is a 409. Answers other than
2xx are not stored, so a corrected retry may run, nor is a stream ended by an error event
(`failed_after_2xx`) or cut off before its task was settled. A 2xx answer that is not kept — over
MAX_STORED_BYTES, showing a secret once (`keep_out_of_replays`), or a stream cut off after its task
was settled (`settled_before_sent`) — still uses up its key: a repeat gets a 409 saying so, and
nothing runs or is charged twice.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from typing import IO

import anyio
from starlette.requests import ClientDisconnect, Request

from imagegate.asgi import ASGIApp, Message, Receive, Scope, Send, header
from imagegate.edge import ErrorRenderer
from imagegate.errors import (
    BadRequest,
    IdempotencyAnswerNotKept,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    ImagegateError,
    PayloadTooLarge,
    RequestTimeout,
)
from imagegate.stores.idempotency import IdempotencyStore, Stored, Verdict

MAX_KEY_CHARS = 255
MAX_STORED_BYTES = 64 * 1024 * 1024
_BOUNDARY = re.compile(rb"boundary=\"?([^\";]+)\"?", re.IGNORECASE)
_REPLAYED_HEADERS = ("content-type", "x-imagegate-engine", "x-imagegate-task", "cache-control")
_CHUNK = 1024 * 1024
_NOT_KEPT = "x-imagegate-not-kept"
"""Stored in place of an answer that was not kept, naming why (one of _NOT_KEPT_BECAUSE)."""
_NOT_KEPT_BECAUSE = {
    "too-large": f"it was larger than the {MAX_STORED_BYTES // (1024 * 1024)} MiB kept for replays",
    "secret": "it showed a secret that is shown only once",
    "cut-off": "its stream was cut off before its end",
}
_SHOWS_ONCE = "imagegate.answer_shows_once"


_FAILED = "imagegate.answer_failed"
_SETTLED = "imagegate.settled_before_sent"


def _why_not_kept(scope: Scope, *, whole: bool, overflow: bool) -> str | None:
    """Which of _NOT_KEPT_BECAUSE keeps a 2xx answer from being stored, if one does."""
    if not whole:
        return "cut-off"
    if scope.get(_SHOWS_ONCE):
        return "secret"
    return "too-large" if overflow else None


def keep_out_of_replays(scope: Scope) -> None:
    """Mark the answer to this request as one no replay may keep (it shows a secret once)."""
    scope[_SHOWS_ONCE] = True


def settled_before_sent(scope: Scope) -> None:
    """Mark this request's task as settled (charged) before its answer was all sent (a stream): if the
    client leaves before the end, its key stays used (a repeat gets 409), so nothing runs twice."""
    scope[_SETTLED] = True


def failed_after_2xx(scope: Scope) -> None:
    """Mark the answer to this request as a failure though it began as a 2xx (a stream that ended
    with an error event): like any failed answer it is not kept, so a retry runs."""
    scope[_FAILED] = True


class _Fingerprint:
    """SHA-256 over a streamed body with every occurrence of the multipart boundary removed."""

    def __init__(self, scope: Scope, boundary: bytes | None) -> None:
        self._hash = hashlib.sha256()
        for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1")):
            self._hash.update(part.encode() + b"\0")
        self._marker = b"--" + boundary if boundary else b""
        self._carry = b""

    def update(self, chunk: bytes) -> None:
        if not self._marker:
            self._hash.update(chunk)
            return
        data = (self._carry + chunk).replace(self._marker, b"--")
        keep = len(self._marker) - 1
        self._carry = data[-keep:] if keep else b""
        self._hash.update(data[: len(data) - len(self._carry)])

    def hexdigest(self) -> str:
        self._hash.update(self._carry)
        self._carry = b""
        return self._hash.hexdigest()


class IdempotencyMiddleware:
    """Replays stored answers for repeated POSTs with the same `Idempotency-Key`."""

    def __init__(self, app: ASGIApp, render_error: ErrorRenderer) -> None:
        self.app = app
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_key = header(scope, b"idempotency-key") if scope["type"] == "http" else None
        if raw_key is None or scope["method"] != "POST" or not header(scope, b"authorization"):
            await self.app(scope, receive, send)
            return
        try:
            # Nothing is read or replayed for a key that is unknown, revoked or expired.
            owner = (await scope["app"].state.runtime.authenticate(Request(scope))).id
        except ImagegateError as exc:
            await self.render_error(exc, scope)(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY_CHARS:
            invalid = BadRequest(
                f"The Idempotency-Key header must be 1–{MAX_KEY_CHARS} characters.", param="Idempotency-Key"
            )
            await self.render_error(invalid, scope)(scope, receive, send)
            return
        boundary = _BOUNDARY.search(header(scope, b"content-type") or b"")
        fingerprint = _Fingerprint(scope, boundary.group(1) if boundary else None)
        with tempfile.SpooledTemporaryFile(max_size=_CHUNK) as spool:
            try:
                size = await self._spool(receive, spool, fingerprint)
            except (PayloadTooLarge, RequestTimeout) as exc:
                await self.render_error(exc, scope)(scope, receive, send)
                return
            store = IdempotencyStore(scope["app"].state.runtime.db)
            verdict, stored = await store.begin(owner, key, fingerprint.hexdigest())
            if verdict is Verdict.REPLAY and stored is not None and _NOT_KEPT in stored.headers:
                because = _NOT_KEPT_BECAUSE.get(stored.headers[_NOT_KEPT], "it was not kept")
                gone = IdempotencyAnswerNotKept(
                    f"A request with this Idempotency-Key already succeeded; its answer cannot be replayed "
                    f"because {because}, and the request is not run twice.",
                    param="Idempotency-Key",
                )
                await self.render_error(gone, scope)(scope, receive, send)
            elif verdict is Verdict.REPLAY and stored is not None:
                await self._replay(stored, send)
            elif verdict is Verdict.MISMATCH:
                error: ImagegateError = IdempotencyKeyReused(
                    "This Idempotency-Key was already used with a different request.", param="Idempotency-Key"
                )
                await self.render_error(error, scope)(scope, receive, send)
            elif verdict is Verdict.IN_PROGRESS:
                error = IdempotencyInProgress(
                    "A request with this Idempotency-Key is still running; retry when it has finished.",
                    param="Idempotency-Key",
                )
                await self.render_error(error, scope)(scope, receive, send)
            else:
                await self._run_and_store(scope, spool, size, receive, send, store, owner, key)

    @staticmethod
    async def _spool(receive: Receive, spool: IO[bytes], fingerprint: _Fingerprint) -> int:
        """Copy the request body into `spool` (rewound after) while fingerprinting it; its size.
        (The edge middleware bounds the body's size and time.)"""
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            total += len(chunk)
            fingerprint.update(chunk)
            spool.write(chunk)
            if not message.get("more_body", False):
                break
        spool.seek(0)
        return total

    async def _run_and_store(
        self,
        scope: Scope,
        spool: IO[bytes],
        size: int,
        receive: Receive,
        send: Send,
        store: IdempotencyStore,
        owner: str,
        key: str,
    ) -> None:
        done = False

        async def replay_body() -> Message:
            nonlocal done
            if done:  # the body was all handed over: what comes next is the client leaving, if it does
                return await receive()
            chunk = spool.read(_CHUNK)
            more = bool(chunk) and spool.tell() < size
            done = not more
            return {"type": "http.request", "body": chunk, "more_body": more}

        status = 0
        headers: dict[str, str] = {}
        body = bytearray()
        overflow = False
        whole = False

        async def capture(message: Message) -> None:
            nonlocal status, overflow, whole
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    text = bytes(name).decode("latin-1").lower()
                    if text in _REPLAYED_HEADERS:
                        headers[text] = bytes(value).decode("latin-1")
            elif message["type"] == "http.response.body":
                if not overflow:
                    body.extend(message.get("body", b""))
                    overflow = len(body) > MAX_STORED_BYTES
                whole = not message.get("more_body", False)
            await send(message)

        try:
            # whole: the app handed over its last body message; that answer (captured before it was sent)
            # is complete whether or not its send, or the app after it, raised
            await self.app(scope, replay_body, capture)
        finally:
            # a stream that ended in an error, or that the client left before its end and before its
            # task was settled, is no answer: the key is let go and a retry runs
            kept = None
            if 200 <= status < 300 and not scope.get(_FAILED) and (whole or scope.get(_SETTLED)):
                reason = _why_not_kept(scope, whole=whole, overflow=overflow)
                kept = Stored(status, {_NOT_KEPT: reason}, b"") if reason else Stored(status, headers, bytes(body))
            with anyio.CancelScope(shield=True):
                await self._end(store, owner, key, kept)

    @staticmethod
    async def _end(store: IdempotencyStore, owner: str, key: str, kept: Stored | None) -> None:
        """Store `kept` as the key's answer, or let the key go when there is none (or storing fails)."""
        if kept is None:
            await store.abandon(owner, key)
            return
        try:
            await store.complete(owner, key, kept)
        except BaseException:
            await store.abandon(owner, key)
            raise

    @staticmethod
    async def _replay(stored: Stored, send: Send) -> None:
        headers = [(name.encode(), value.encode()) for name, value in stored.headers.items()]
        headers.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": stored.status, "headers": headers})
        await send({"type": "http.response.body", "body": stored.body})
