"""One registry of dialects and engine kinds, looked up by name, duplicates refused (DESIGN principle 5).

The app mounts every dialect's router and renders each error in the shape of the dialect that owns the
request; the runtime teaches the task records every dialect's callback body and opens channels by the
engine kind they name. Built-ins register in `builtins.py` through the same calls an embedding
application uses to add its own (`create_app(config, registry=...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import APIRouter
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from imagegate.asgi import Scope
from imagegate.config import ChannelSettings
from imagegate.core.catalog import Catalog
from imagegate.core.upstream import ClientFactory
from imagegate.engines.base import EngineKind, never
from imagegate.engines.upstream import relaying
from imagegate.errors import ImagegateError
from imagegate.service.records import CallbackRenderer, ResultLinks

ErrorResponse = Callable[[ImagegateError, Scope], Response]
"""A dialect's one way of turning our error into its response (the request's scope at hand)."""


@dataclass(frozen=True)
class Dialect:
    """One wire format, both directions: its inbound routes and error shape, the callback body of the
    async tasks it records, and (when providers speak it) the outbound client of its channels."""

    name: str
    prefixes: tuple[str, ...]
    """The path space it owns: errors on paths that no route matched (404) render in its shape."""
    router: Callable[[], APIRouter]
    error_response: ErrorResponse
    callbacks: Callable[[Catalog, ResultLinks], CallbackRenderer] | None = None
    client: ClientFactory | None = None
    """With a client, channels may name the dialect as their engine and relay through it."""
    calls_back: Callable[[ChannelSettings], bool] = never
    """Whether a channel's provider fetches from or posts to this server (public_url needed)."""


@dataclass
class Registry:
    """The dialects and engine kinds of one application."""

    dialects: dict[str, Dialect] = field(default_factory=dict)
    engines: dict[str, EngineKind] = field(default_factory=dict)
    default_dialect: str = "openai"
    """Whose error shape a request no dialect owns gets (the operator routes, unknown paths)."""
    default_engine: str = "classic"
    """The engine kind that serves every model when no channel is configured."""
    _routes: list[tuple[BaseRoute, Dialect]] = field(default_factory=list)

    def add_dialect(self, dialect: Dialect) -> None:
        """Register `dialect` (and, when it has an outbound client, the engine kind of its name)."""
        if dialect.name in self.dialects:
            raise ValueError(f"dialect '{dialect.name}' is already registered")
        self.dialects[dialect.name] = dialect
        if dialect.client is not None:
            self.add_engine(relaying(dialect.name, dialect.client, dialect.calls_back))

    def add_engine(self, kind: EngineKind) -> None:
        """Register an engine kind channels may name; a second registration of a name is an error."""
        if kind.name in self.engines:
            raise ValueError(f"engine '{kind.name}' is already registered")
        self.engines[kind.name] = kind

    def routers(self) -> list[APIRouter]:
        """Every dialect's router, made afresh, its routes remembered as that dialect's. Raises
        ValueError when the default dialect is not registered."""
        if self.default_dialect not in self.dialects:
            raise ValueError(f"the default dialect '{self.default_dialect}' is not registered")
        made = [(dialect, dialect.router()) for dialect in self.dialects.values()]
        self._routes = [(route, dialect) for dialect, router in made for route in router.routes]
        return [router for _, router in made]

    def owner(self, scope: Scope) -> Dialect:
        """The dialect whose route matches the request (a full match before a partial one, as the
        router picks; also for an error raised before routing); for a request no route matches, the
        one whose path space holds it; else the default."""
        if scope.get("type") == "http":
            partial: Dialect | None = None
            for route, dialect in self._routes:
                match = route.matches(scope)[0]
                if match is Match.FULL:
                    return dialect
                if match is Match.PARTIAL and partial is None:
                    partial = dialect
            if partial is not None:
                return partial
        path = str(scope.get("path", ""))
        holding = [
            (len(prefix), dialect)
            for dialect in self.dialects.values()
            for prefix in dialect.prefixes
            if path.startswith(prefix + "/")
        ]
        if holding:
            return max(holding, key=lambda pair: pair[0])[1]
        return self.dialects[self.default_dialect]

    def error_response(self, exc: ImagegateError, scope: Scope) -> Response:
        """`exc` in the error shape of the dialect that owns the request."""
        return self.owner(scope).error_response(exc, scope)
