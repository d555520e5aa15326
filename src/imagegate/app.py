"""create_app(config) -> the ASGI application. Wiring only: routes, middleware, error rendering."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import IO

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from imagegate import __version__, openapi
from imagegate.api import account, admin, console
from imagegate.builtins import builtin_registry
from imagegate.config import Config
from imagegate.edge import CLIENT_GONE, EdgeMiddleware
from imagegate.engines.base import Engine
from imagegate.errors import BadRequest, DatabaseUnavailable, ImagegateError, NotFound, PayloadTooLarge
from imagegate.idempotency import IdempotencyMiddleware
from imagegate.metrics import Metrics
from imagegate.registry import Registry
from imagegate.responses import OpenedFileResponse, json_response
from imagegate.runtime import Runtime, open_runtime, runtime_of
from imagegate.service import readiness
from imagegate.service.records import RESULT_FILE
from imagegate.stores.blobs import content_type
from imagegate.stores.faults import explain
from imagegate.wire.fields import json_object

log = logging.getLogger("imagegate")
_STATUS_ERRORS: dict[int, type[ImagegateError]] = {404: NotFound, 413: PayloadTooLarge}


class ErrorRendering:
    """The app's exception handlers: every error in the shape of the dialect that owns the request."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def on_domain_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ImagegateError)
        return self.registry.error_response(exc, request.scope)

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _STATUS_ERRORS.get(exc.status_code, BadRequest)
        error = kind(str(exc.detail))
        error.status = exc.status_code
        error.headers = dict(exc.headers or {})  # a 405 keeps its Allow header
        if exc.status_code == 405:
            error.code = "method_not_allowed"
        return self.registry.error_response(error, request.scope)

    async def on_validation_error(self, request: Request, exc: Exception) -> Response:
        return self.registry.error_response(BadRequest(f"Invalid request: {exc}"), request.scope)

    async def on_database_fault(self, request: Request, exc: Exception) -> Response:
        """A database that is down or refuses us: one log line and a 503 that says so; any other
        driver error is a bug, answered as `on_unexpected` does."""
        outage = explain(exc)
        if outage is None:
            return await self.on_unexpected(request, exc)
        request_id = getattr(request.state, "request_id", "")
        log.error("%s %s (%s): %s", request.method, request.url.path, request_id, outage)
        error = DatabaseUnavailable(f"The server's database is unavailable ({request_id}); please try again later.")
        response = self.registry.error_response(error, request.scope)
        response.headers["x-request-id"] = request_id
        return response

    async def on_unexpected(self, request: Request, exc: Exception) -> Response:
        request_id = getattr(request.state, "request_id", "")
        log.exception("unhandled error in %s %s (%s)", request.method, request.url.path, request_id)
        error = ImagegateError(f"The server had an error processing your request ({request_id}).")
        response = self.registry.error_response(error, request.scope)
        response.headers["x-request-id"] = request_id
        response.headers["x-imagegate-engine"] = "none"
        return response


async def _on_disconnect(request: Request, exc: Exception) -> Response:
    """A client that went away mid-request: one INFO line, counted as 499, nothing sent to anybody."""
    log.info("%s %s: the client went away before the answer", request.method, request.url.path)
    return Response(status_code=CLIENT_GONE)


async def blob_response(rt: Runtime, name: str, headers: dict[str, str], missing: str) -> Response:
    """Blob `name`: sent from its file, redirected to a presigned object-store URL (`[storage]
    result_urls = "presigned"`), or streamed from the store; NotFound(`missing`) when there is none."""
    media_type = content_type(name)
    path = rt.blobs.local_path(name)
    if path is not None:
        try:
            file = await anyio.to_thread.run_sync(path.open, "rb")
        except FileNotFoundError:  # gone since it was looked up (the result sweeper)
            raise NotFound(missing) from None
        return OpenedFileResponse(file, path, media_type, headers)
    if rt.config.storage.result_urls == "presigned":
        url = rt.blobs.presigned_url(name, rt.config.storage.presigned_url_ttl_s)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    fp = await rt.blobs.open(name)
    if fp is None:
        raise NotFound(missing)
    return StreamingResponse(_chunks(fp), media_type=media_type, headers=headers)


async def _chunks(fp: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(fp.read, 256 * 1024):
            yield chunk
    finally:
        fp.close()


async def read_at_most(request: Request, limit: int) -> bytes:
    """The request's body, or PayloadTooLarge (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body of {int(declared):,} bytes exceeds {limit:,} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit:,} bytes.")
    return bytes(body)


def create_app(config: Config, engines: dict[str, Engine] | None = None, registry: Registry | None = None) -> FastAPI:
    """The imagegate ASGI application for `config`; stores, engines, the task runner and the webhook
    sender run in its lifespan. `engines` replaces the built-in engine (embedding and tests);
    `registry` replaces the built-in dialects and engine kinds (start from `builtin_registry()`)."""
    metrics = Metrics()
    registry = registry or builtin_registry()
    errors = ErrorRendering(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.runtime = await open_runtime(config, stack, metrics, registry, engines)
            yield

    app = FastAPI(title="imagegate", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_exception_handler(ImagegateError, errors.on_domain_error)
    app.add_exception_handler(HTTPException, errors.on_http_error)
    app.add_exception_handler(RequestValidationError, errors.on_validation_error)
    app.add_exception_handler(ClientDisconnect, _on_disconnect)
    app.add_exception_handler(OperationalError, errors.on_database_fault)
    app.add_exception_handler(InterfaceError, errors.on_database_fault)
    app.add_exception_handler(Exception, errors.on_unexpected)
    for router in registry.routers():
        app.include_router(router)
    app.include_router(account.router())
    app.include_router(admin.router())
    app.include_router(console.router())

    @app.get("/healthz", responses={200: {"description": "The process answers"}})
    async def healthz() -> JSONResponse:
        """Liveness: the process answers (it touches nothing else; `/readyz` checks what it needs)."""
        return JSONResponse(readiness.alive())

    @app.get("/readyz", responses={200: {"description": "Ready"}, 503: {"description": "A check failed"}})
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the database reachable and migrated, the file storage writable, each named with
        its error (503 when one fails); each channel's circuit and, for local models, their state."""
        rt = runtime_of(request)
        status, body = readiness.answer(await readiness.essentials(rt.db, rt.blobs), rt.channels)
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
    async def metrics_page() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.get("/files/{name}", responses=openapi.responses(openapi.OPENAI_ERROR, (200, 307, 404, 410, 503), images=True))
    async def files(name: str, request: Request) -> Response:
        """A stored result under its unguessable id, cacheable forever."""
        found = RESULT_FILE.match(name)
        if found is None:
            raise NotFound("No such file.")
        rt = runtime_of(request)
        headers = {"cache-control": "public, max-age=31536000, immutable"}
        try:
            return await blob_response(rt, name, headers, "No such file.")
        except NotFound:
            raise (await rt.sweeper.why_missing(found.group(1))) or NotFound("No such file.") from None

    @app.get("/inputs/{token}", responses=openapi.responses(openapi.OPENAI_ERROR, (200, 307, 404, 503), images=True))
    async def inputs(token: str, request: Request) -> Response:
        """An input published for a provider, under a signed URL until it expires or is withdrawn."""
        rt = runtime_of(request)
        name = rt.inputs.resolve(token)
        if name is None:
            raise NotFound("No such input, or its URL has expired.")
        return await blob_response(rt, name, {"cache-control": "no-store"}, "No such input, or its URL has expired.")

    @app.post(
        "/relay/callbacks/{token}",
        responses=openapi.responses(openapi.OPENAI_ERROR, (200, 400, 404, 408, 413)),
        openapi_extra=openapi.body(json=openapi.CALLBACK_JSON),
    )
    async def relay_callback(token: str, request: Request) -> Response:
        """A provider's callback for a request this process relayed (seed 003's async mode). Its token
        is checked before a byte of the body is read, and the body has a small limit of its own."""
        rt = runtime_of(request)
        name = rt.inbox.accepts(token) if any(channel.callback for channel in config.channels) else None
        if name is None:
            raise NotFound("No request waits on this callback.")
        body = json_object(await read_at_most(request, config.limits.max_callback_bytes))
        if not await rt.inbox.deliver(name, body):
            raise NotFound("No request waits on this callback.")
        return json_response({"received": True})

    app.add_middleware(IdempotencyMiddleware, render_error=registry.error_response)
    app.add_middleware(
        EdgeMiddleware,
        limits=config.limits,
        trusted_hosts=config.trusted_hosts,
        metrics=metrics,
        render_error=registry.error_response,
    )
    return app
