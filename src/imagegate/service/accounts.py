"""Accounts as operators and clients see them: keys, balances, tasks, ledgers and usage.

Shared by the admin HTTP API, `/v1/usage` and the CLI, so all three say the same thing. Views never
contain a raw key or its hash; times are Unix seconds; credits are decimal strings.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.config import AccountDefaults
from imagegate.core.pricing import credits_text
from imagegate.stores import ledger
from imagegate.stores.db import ApiKey, Credits, LedgerEntry, Task, WebhookDelivery, now_ms
from imagegate.stores.keys import limits_of

DAY_MS = 86_400_000


def seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


def credits(value: Decimal | None) -> str | None:
    return None if value is None else credits_text(value)


def key_view(key: ApiKey, defaults: AccountDefaults) -> dict[str, Any]:
    """A key without its secret: identity, balance, limits (its own and in effect), times."""
    effective = limits_of(key, defaults)
    return {
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix + "…",
        "admin": key.is_admin,
        "state": "revoked" if key.revoked_at else "expired" if _expired(key) else "active",
        "balance": credits(key.credits),
        "held": credits(key.held),
        "available": credits(key.credits - key.held),
        "models": key.models,
        "limits": {"rpm": key.rpm, "max_active": key.max_active, "max_images": key.max_images},
        "effective_limits": {
            "rpm": effective.rpm,
            "max_active": effective.max_active,
            "max_images": effective.max_output_images,
        },
        "created_at": seconds(key.created_at),
        "last_used_at": seconds(key.last_used_at),
        "expires_at": seconds(key.expires_at),
        "revoked_at": seconds(key.revoked_at),
    }


def _expired(key: ApiKey) -> bool:
    return key.expires_at is not None and key.expires_at <= now_ms()


REQUEST_SHOWN = ("prompt", "size", "quality", "n", "output_format", "background", "images")
"""What a task view repeats of its request (the inputs as references, never their bytes)."""


def task_view(task: Task) -> dict[str, Any]:
    """A task's bookkeeping: what it was, how it ended, what it held and cost, and what each engine
    call reported (the channel, and a local model's seed, steps and native size)."""
    result = task.result or {}
    return {
        "object": "task",
        "id": task.id,
        "model": task.model,
        "kind": task.kind,
        "dialect": task.dialect,
        "mode": task.mode,
        "state": task.state,
        "images": task.images,
        "held": credits(task.held),
        "cost": credits(task.cost),
        "error": {"code": task.error_code, "message": task.error_message} if task.state == "fail" else None,
        "engine": task.engine,
        "files": [f"/files/{name}" for name in result.get("files") or []],
        "calls": result.get("upstream") or [],
        "resampled_from": result.get("resampled_from"),
        "request": {name: (task.request or {}).get(name) for name in REQUEST_SHOWN},
        "created_at": seconds(task.created_at),
        "started_at": seconds(task.started_at),
        "finished_at": seconds(task.finished_at),
    }


def entry_view(entry: LedgerEntry) -> dict[str, Any]:
    """One ledger row: `amount` moved the balance, `held` the reserved part."""
    return {
        "object": "ledger_entry",
        "id": entry.id,
        "kind": entry.kind,
        "task_id": entry.task_id,
        "amount": credits(entry.amount),
        "held": credits(entry.held),
        "note": entry.note,
        "created_at": seconds(entry.created_at),
    }


async def recent_tasks(session: AsyncSession, key_id: str, *, limit: int, state: str | None = None) -> list[Task]:
    """The key's newest tasks (optionally in one state), newest first."""
    query = select(Task).where(Task.key_id == key_id)
    if state is not None:
        query = query.where(Task.state == state)
    return list(await session.scalars(query.order_by(Task.created_at.desc(), Task.id).limit(limit)))


async def task_detail(session: AsyncSession, key_id: str, task_id: str) -> dict[str, Any] | None:
    """One of `key_id`'s tasks (None for another key's or an unknown one) with its callback deliveries:
    where each went, its state, attempts and last answer (never the signed body)."""
    task = await session.get(Task, task_id)
    if task is None or task.key_id != key_id:
        return None
    deliveries = await session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.task_id == task_id).order_by(WebhookDelivery.created_at)
    )
    return {
        **task_view(task),
        "deliveries": [
            {
                "id": delivery.id,
                "url": delivery.url,
                "state": delivery.state,
                "attempts": delivery.attempts,
                "last_status": delivery.last_status,
                "last_error": delivery.last_error,
                "created_at": seconds(delivery.created_at),
                "finished_at": seconds(delivery.finished_at),
            }
            for delivery in deliveries
        ],
    }


async def usage(session: AsyncSession, key: ApiKey, defaults: AccountDefaults, *, limit: int) -> dict[str, Any]:
    """`GET /v1/usage` for `key`: balance, open holds and its `limit` most recent tasks with their cost."""
    fresh = await session.get(ApiKey, key.id, populate_existing=True) or key
    view = key_view(fresh, defaults)
    holds = await ledger.open_holds(session, key.id)
    tasks = await recent_tasks(session, key.id, limit=limit)
    return {
        "object": "usage",
        "key_id": key.id,
        "balance": view["balance"],
        "held": view["held"],
        "available": view["available"],
        "limits": view["effective_limits"],
        "holds": [{"task_id": t.id, "amount": credits(t.held), "state": t.state} for t in holds],
        "tasks": [task_view(task) for task in tasks],
    }


async def usage_by_day(session: AsyncSession, *, since_ms: int, key_id: str | None = None) -> list[dict[str, Any]]:
    """Finished tasks since `since_ms` grouped by UTC day and model: counts, images and credits charged."""
    day = Task.created_at // DAY_MS
    succeeded = func.sum(case((Task.state == "success", 1), else_=0))
    query = (
        select(
            day,
            Task.model,
            func.count(),
            succeeded,
            func.coalesce(func.sum(Task.images), 0),
            type_coerce(func.coalesce(func.sum(Task.cost), 0), Credits()),
        )
        .where(Task.created_at >= since_ms, Task.state.in_(("success", "fail")))
        .group_by(day, Task.model)
        .order_by(day, Task.model)
    )
    if key_id is not None:
        query = query.where(Task.key_id == key_id)
    rows = (await session.execute(query)).all()
    return [
        {
            "day": _date(int(number)),
            "model": model,
            "tasks": int(count),
            "succeeded": int(ok or 0),
            "failed": int(count) - int(ok or 0),
            "images": int(images),
            "credits": credits(spent),
        }
        for number, model, count, ok, images, spent in rows
    ]


def _date(day_number: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day_number)).isoformat()
