"""What a key may ask about its own account: `GET /v1/pricing` and `GET /v1/usage` (OpenAI error shape)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from imagegate import openapi
from imagegate.core.pricing import price_table
from imagegate.errors import BadRequest, NotFound
from imagegate.responses import json_response
from imagegate.runtime import runtime_of
from imagegate.service import accounts
from imagegate.stores import ledger
from imagegate.wire.fields import as_int

MAX_LIMIT = 100


def page_size(request: Request, default: int = 20) -> int:
    """`?limit=` between 1 and MAX_LIMIT; BadRequest naming `limit` otherwise."""
    raw = request.query_params.get("limit")
    limit = default if raw is None else as_int(raw, "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"Invalid 'limit': {limit}; use 1 to {MAX_LIMIT}.", param="limit")
    return limit


async def pricing(request: Request) -> Response:
    """GET /v1/pricing: every model the key may use, with its price per image (quality × tier) or per call."""
    rt = runtime_of(request)
    key = await rt.authenticate(request)
    data = [
        {"model": spec.id, "object": "model.pricing", **price_table(spec)}
        for spec in rt.catalog
        if key.models is None or spec.id in key.models
    ]
    return json_response(
        {
            "object": "list",
            "currency": "credits",
            "notes": "auto quality prices as medium; per-image prices are charged for images delivered",
            "data": data,
        }
    )


async def usage(request: Request) -> Response:
    """GET /v1/usage: the calling key's balance, open holds and recent tasks with their cost."""
    rt = runtime_of(request)
    key = await rt.authenticate(request)
    limit = page_size(request)
    async with rt.db.session() as session:
        body = await accounts.usage(session, key, rt.config.accounts, limit=limit)
    return json_response(body)


async def own_task(request: Request, task_id: str) -> Response:
    """GET /v1/tasks/{task_id}: one of the calling key's tasks, with its request, times, engine calls,
    result files and callback deliveries (404 for another key's)."""
    rt = runtime_of(request)
    key = await rt.authenticate(request)
    async with rt.db.session() as session:
        found = await accounts.task_detail(session, key.id, task_id)
    if found is None:
        raise NotFound(f"No task '{task_id}'.")
    return json_response(found)


async def ledger_page(request: Request, key_id: str) -> Response:
    """`key_id`'s ledger rows, newest first, `limit` of them older than row `before` when given."""
    raw_before = request.query_params.get("before")
    before = None if raw_before is None else as_int(raw_before, "before")
    if before is not None:  # past a 64-bit row id means every row (or none): the database takes no more
        before = max(-(2**63), min(before, 2**63 - 1))
    async with runtime_of(request).db.session() as session:
        rows = await ledger.entries(session, key_id, limit=page_size(request, 100), before=before)
    return json_response({"object": "list", "data": [accounts.entry_view(row) for row in rows]})


async def own_ledger(request: Request) -> Response:
    """GET /v1/ledger?limit=&before=: the calling key's ledger rows, newest first (`before` a row id)."""
    key = await runtime_of(request).authenticate(request)
    return await ledger_page(request, key.id)


def router() -> APIRouter:
    api = APIRouter()
    reads = openapi.responses(openapi.OPENAI_ERROR, openapi.READ_STATUSES)
    api.add_api_route("/v1/pricing", pricing, methods=["GET"], responses=reads)
    api.add_api_route(
        "/v1/usage", usage, methods=["GET"], responses=reads, openapi_extra={"parameters": openapi.query(openapi.LIMIT)}
    )
    api.add_api_route("/v1/tasks/{task_id}", own_task, methods=["GET"], responses=reads)
    api.add_api_route(
        "/v1/ledger",
        own_ledger,
        methods=["GET"],
        responses=reads,
        openapi_extra={"parameters": openapi.query(openapi.LIMIT, openapi.LEDGER_BEFORE)},
    )
    return api
