"""The web console (`/`): static HTML, CSS and JavaScript modules shipped in the package
(`imagegate/web`), which use only the public HTTP API. Nothing is loaded from elsewhere."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from imagegate.errors import NotFound

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob: http: https:; style-src 'self'",
    "x-content-type-options": "nosniff",
}


def _asset(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in TYPES:
        raise NotFound("No such console file.")
    found = resources.files("imagegate").joinpath("web", name)
    if not found.is_file():
        raise NotFound("No such console file.")
    return Response(found.read_bytes(), media_type=TYPES[suffix], headers=HEADERS)


async def index() -> Response:
    """GET /: the console's page."""
    return _asset("index.html")


async def asset(name: str) -> Response:
    """GET /console/{name}: one of the console's files."""
    return _asset(name)


def router() -> APIRouter:
    api = APIRouter(include_in_schema=False)
    api.add_api_route("/", index, methods=["GET"])
    api.add_api_route("/console/{name}", asset, methods=["GET"])
    return api
