"""The admin HTTP API under `/admin/` (SPEC §7), behind admin keys (403 for any other key).

Keys (create — the raw key shown once —, list, show, change limits, revoke), credits (grant,
deduct), any key's tasks and ledger, and usage by day and model. JSON in and out, OpenAI's error
shape; no response or log line ever carries a raw key.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from imagegate import openapi
from imagegate.api.account import ledger_page, page_size
from imagegate.errors import BadRequest, excerpt
from imagegate.idempotency import keep_out_of_replays
from imagegate.responses import json_response
from imagegate.runtime import Runtime, runtime_of
from imagegate.service import accounts
from imagegate.stores import keys, ledger
from imagegate.stores.db import ApiKey, now_ms
from imagegate.wire.fields import as_bool, as_int, as_str, json_object

PREFIX = "/admin"
MAX_USAGE_DAYS = 366


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest("Invalid 'amount': expected a number of credits (a string keeps it exact).", param="amount")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BadRequest(f"Invalid 'amount': {excerpt(value)} is not a number.", param="amount") from None


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The EDITABLE key fields present in `body`, as the store takes them (expiry in ms)."""
    settings: dict[str, Any] = {}
    if "name" in body:
        settings["name"] = as_str(body["name"], "name")
    for name in ("rpm", "max_active", "max_images"):
        if name in body:
            settings[name] = None if body[name] is None else as_int(body[name], name)
    if "models" in body:
        settings["models"] = body["models"]
    if "expires_at" in body:
        expires = body["expires_at"]
        settings["expires_at"] = None if expires is None else as_int(expires, "expires_at") * 1000
    return settings


async def _admin(request: Request) -> Runtime:
    rt = runtime_of(request)
    await rt.is_admin(request)
    return rt


async def _key_or_404(rt: Runtime, key_id: str) -> ApiKey:
    async with rt.db.session() as session:
        return await ledger.key(session, key_id)


async def create_key(request: Request) -> Response:
    """POST /admin/keys {name, credits, admin, rpm, max_active, max_images, models, expires_at}"""
    rt = await _admin(request)
    body = json_object(await request.body())
    unknown = set(body) - {"name", "credits", "admin", "rpm", "max_active", "max_images", "models", "expires_at"}
    if unknown:
        raise BadRequest(f"Unknown fields: {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
    credits = Decimal(0) if body.get("credits") is None else _amount(body["credits"])
    admin = as_bool(body.get("admin", False), "admin")
    async with rt.db.session() as session, session.begin():
        new = await keys.create_key(session, credits=credits, admin=admin, **_settings(body))
        row = await ledger.key(session, new.id)
    view = accounts.key_view(row, rt.config.accounts)
    keep_out_of_replays(request.scope)
    return json_response({**view, "key": new.raw, "webhook_secret": new.webhook_secret}, 201)


async def list_keys(request: Request) -> Response:
    """GET /admin/keys"""
    rt = await _admin(request)
    async with rt.db.session() as session:
        rows = await keys.list_keys(session)
    return json_response({"object": "list", "data": [accounts.key_view(row, rt.config.accounts) for row in rows]})


async def show_key(request: Request, key_id: str) -> Response:
    """GET /admin/keys/{key_id}: the key, with its ledger's sums beside the cached balance."""
    rt = await _admin(request)
    async with rt.db.session() as session:
        row = await ledger.key(session, key_id)
        sums = await ledger.totals(session, key_id)
    view = accounts.key_view(row, rt.config.accounts)
    return json_response(
        {**view, "ledger": {"balance": accounts.credits(sums.balance), "held": accounts.credits(sums.held)}}
    )


async def update_key(request: Request, key_id: str) -> Response:
    """PATCH /admin/keys/{key_id} {name, rpm, max_active, max_images, models, expires_at}: null restores a default."""
    rt = await _admin(request)
    settings = _settings(json_object(await request.body()))
    async with rt.db.session() as session, session.begin():
        row = await keys.update_key(session, key_id, settings)
    return json_response(accounts.key_view(row, rt.config.accounts))


async def revoke_key(request: Request, key_id: str) -> Response:
    """DELETE /admin/keys/{key_id}: revoke it (it stops authenticating at once; its history stays)."""
    rt = await _admin(request)
    async with rt.db.session() as session, session.begin():
        row = await keys.revoke_key(session, key_id)
    return json_response(accounts.key_view(row, rt.config.accounts))


async def _move(request: Request, key_id: str, deduct: bool) -> Response:
    rt = await _admin(request)
    body = json_object(await request.body())
    amount = _amount(body.get("amount"))
    note = as_str(body.get("note") or "", "note")
    async with rt.db.session() as session, session.begin():
        move = ledger.deduct if deduct else ledger.grant
        row = await move(session, key_id, amount, note)
    return json_response(accounts.key_view(row, rt.config.accounts))


async def grant(request: Request, key_id: str) -> Response:
    """POST /admin/keys/{key_id}/grant {amount, note}"""
    return await _move(request, key_id, deduct=False)


async def deduct(request: Request, key_id: str) -> Response:
    """POST /admin/keys/{key_id}/deduct {amount, note}: 402 when the key has less available."""
    return await _move(request, key_id, deduct=True)


async def key_tasks(request: Request, key_id: str) -> Response:
    """GET /admin/keys/{key_id}/tasks?state=&limit="""
    rt = await _admin(request)
    await _key_or_404(rt, key_id)
    state = request.query_params.get("state")
    async with rt.db.session() as session:
        rows = await accounts.recent_tasks(session, key_id, limit=page_size(request), state=state)
    return json_response({"object": "list", "data": [accounts.task_view(row) for row in rows]})


async def key_ledger(request: Request, key_id: str) -> Response:
    """GET /admin/keys/{key_id}/ledger?limit=&before= (newest first; `before` is a row id)"""
    rt = await _admin(request)
    await _key_or_404(rt, key_id)
    return await ledger_page(request, key_id)


async def usage(request: Request) -> Response:
    """GET /admin/usage?days=30&key_id=: finished tasks by UTC day and model."""
    rt = await _admin(request)
    days = as_int(request.query_params.get("days", "30"), "days")
    if not 1 <= days <= MAX_USAGE_DAYS:
        raise BadRequest(f"Invalid 'days': {days}; use 1 to {MAX_USAGE_DAYS}.", param="days")
    key_id = request.query_params.get("key_id")
    since = (now_ms() // accounts.DAY_MS - days + 1) * accounts.DAY_MS
    async with rt.db.session() as session:
        rows = await accounts.usage_by_day(session, since_ms=since, key_id=key_id)
    return json_response({"object": "list", "days": days, "key_id": key_id, "data": rows})


async def channels(request: Request) -> Response:
    """GET /admin/channels: each channel's engine, models, order, circuit state, model health (local
    channels) and its attempts by result since the process started (from the metrics)."""
    rt = await _admin(request)
    attempts: dict[str, dict[str, int]] = {}
    for metric in rt.metrics.upstream_attempts.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                counts = attempts.setdefault(sample.labels["channel"], {})
                counts[sample.labels["result"]] = int(sample.value)
    data = []
    for channel in rt.channels:
        settings = channel.settings
        health = getattr(channel.engine, "health", None)
        data.append(
            {
                "name": settings.name,
                "engine": channel.engine.name,
                "models": settings.models or "all",
                "priority": settings.priority,
                "weight": settings.weight,
                "circuit": channel.breaker.state,
                "health": health() if health is not None else None,
                "attempts": attempts.get(settings.name, {}),
            }
        )
    return json_response({"object": "list", "data": data})


def router() -> APIRouter:
    api = APIRouter(prefix=PREFIX, include_in_schema=True)
    done = openapi.responses(openapi.OPENAI_ERROR, openapi.ADMIN_STATUSES)
    created = openapi.responses(openapi.OPENAI_ERROR, (201, *openapi.ADMIN_STATUSES[1:]))
    moved = openapi.responses(openapi.OPENAI_ERROR, (*openapi.ADMIN_STATUSES, 402))
    api.add_api_route(
        "/keys", create_key, methods=["POST"], responses=created, openapi_extra=openapi.body(json=openapi.NEW_KEY)
    )
    api.add_api_route("/keys", list_keys, methods=["GET"], responses=done)
    api.add_api_route("/channels", channels, methods=["GET"], responses=done)
    api.add_api_route("/keys/{key_id}", show_key, methods=["GET"], responses=done)
    api.add_api_route(
        "/keys/{key_id}",
        update_key,
        methods=["PATCH"],
        responses=done,
        openapi_extra=openapi.body(json=openapi.KEY_SETTINGS),
    )
    api.add_api_route("/keys/{key_id}", revoke_key, methods=["DELETE"], responses=done)
    for path, endpoint in (("grant", grant), ("deduct", deduct)):
        api.add_api_route(
            f"/keys/{{key_id}}/{path}",
            endpoint,
            methods=["POST"],
            responses=moved,
            openapi_extra=openapi.body(json=openapi.MOVE),
        )
    state = (
        "state",
        {"type": "string", "enum": ["waiting", "running", "success", "fail"]},
        "Only tasks in this state.",
    )
    api.add_api_route(
        "/keys/{key_id}/tasks",
        key_tasks,
        methods=["GET"],
        responses=done,
        openapi_extra={"parameters": openapi.query(openapi.LIMIT, state)},
    )
    api.add_api_route(
        "/keys/{key_id}/ledger",
        key_ledger,
        methods=["GET"],
        responses=done,
        openapi_extra={"parameters": openapi.query(openapi.LIMIT, openapi.LEDGER_BEFORE)},
    )
    days = ("days", {"type": "integer", "minimum": 1, "maximum": MAX_USAGE_DAYS}, "How many UTC days back.")
    key_id = ("key_id", {"type": "string"}, "Only this key's tasks.")
    api.add_api_route(
        "/usage", usage, methods=["GET"], responses=done, openapi_extra={"parameters": openapi.query(days, key_id)}
    )
    return api
