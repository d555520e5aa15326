"""The registry: an outside dialect and engine kind plug in the way the built-ins do."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from starlette.responses import Response

from imagegate.app import create_app
from imagegate.asgi import Scope
from imagegate.builtins import builtin_registry
from imagegate.config import load_config
from imagegate.core.job import Job, Made
from imagegate.engines.base import EngineContext, EngineKind
from imagegate.engines.mock import MockEngine, plain_image
from imagegate.errors import BadRequest, ImagegateError
from imagegate.registry import Dialect, Registry
from imagegate.responses import json_response
from tests.conftest import create_key, lifespan
from tests.test_accounts import DATA_URL


def teapot_router() -> APIRouter:
    router = APIRouter()

    @router.get("/teapot/brew")
    async def brew() -> Response:
        raise BadRequest("No coffee here.", param="drink")

    return router


def teapot_error(exc: ImagegateError, scope: Scope) -> Response:
    return json_response({"teapot": {"status": exc.status, "says": exc.message}}, exc.status)


TEAPOT = Dialect("teapot", prefixes=("/teapot",), router=teapot_router, error_response=teapot_error)


async def red(job: Job) -> Made:
    return Made([plain_image(job, (255, 0, 0), "red from the plug-in") for _ in range(job.request.n)])


def test_a_name_registers_once() -> None:
    registry = builtin_registry()
    with pytest.raises(ValueError, match="dialect 'openai' is already registered"):
        registry.add_dialect(registry.dialects["openai"])
    with pytest.raises(ValueError, match="engine 'classic' is already registered"):
        registry.add_engine(registry.engines["classic"])
    assert set(registry.engines) == {"openai", "envelope", "jobs", "classic", "diffusers"}, (
        "a dialect with a client relays"
    )


async def test_an_outside_dialect_and_engine_kind_serve_like_built_ins(tmp_path: Path) -> None:
    registry: Registry = builtin_registry()
    registry.add_dialect(TEAPOT)

    def open_red(context: EngineContext) -> MockEngine:
        return MockEngine(red, name="red")

    registry.add_engine(EngineKind("red", open_red))
    config = load_config(data_dir=tmp_path, channels=[{"name": "plug", "engine": "red"}])
    key = await create_key(config)
    app = create_app(config, registry=registry)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            refused = await client.get("/teapot/brew")
            unknown = await client.get("/teapot/pour")
            wrong_method = await client.post("/teapot/brew")
            edited = await client.post(
                "/v1/images/edits", headers={"Authorization": f"Bearer {key}"}, json={"image": DATA_URL, "prompt": "x"}
            )
            openai_error = await client.get("/v1/images/tasks/task_nope", headers={"Authorization": f"Bearer {key}"})
    assert (refused.status_code, refused.json()) == (400, {"teapot": {"status": 400, "says": "No coffee here."}})
    assert unknown.status_code == 404 and "teapot" in unknown.json(), "its path space answers in its shape"
    assert wrong_method.status_code == 405 and "teapot" in wrong_method.json()
    assert edited.status_code == 200, edited.text
    assert edited.headers["x-imagegate-engine"] == "red"
    assert edited.json()["data"][0]["revised_prompt"] == "red from the plug-in"
    assert openai_error.json()["error"]["code"] == "not_found", "the built-ins keep their own shapes"
