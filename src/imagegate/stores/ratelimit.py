"""Requests-per-minute limits shared by every process on the database (SPEC §7).

A sliding minute, estimated from two fixed one-minute windows: the previous window's count weighted
by how much of it still overlaps the last 60 seconds, plus the current window's count. A refused
request is not counted, so a client that backs off recovers. Counted in memory by the one embedded
process, or in the database (one upsert per request) where several processes share the keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.stores.db import Database, RateWindow

WINDOW_MS = 60_000


@dataclass(frozen=True)
class RateState:
    """The outcome of one request against a key's limit."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    """Seconds until the limit is whole again (when allowed) or until one request is admitted (when not)."""

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*-requests` headers, plus `retry-after` when refused."""
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": duration(self.reset_s),
        }
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.reset_s)))
        return headers


def duration(seconds: float) -> str:
    """OpenAI's duration spelling: `250ms`, `7s`, `1m30s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class RateLimiter(Protocol):
    """Counts requests per key in a sliding minute."""

    async def hit(self, key_id: str, limit: int, now_ms: int) -> RateState:
        """Count one request of `key_id` against `limit` (> 0) per minute; a refused one is not counted."""
        ...


def _decide(previous: int, count: int, limit: int, into_ms: int) -> RateState:
    """The verdict on the `count`-th request of this window, after `previous` in the window before."""
    weighted = previous * (1 - into_ms / WINDOW_MS)
    if weighted + count <= limit:
        remaining = max(0, math.floor(limit - weighted - count))
        return RateState(True, limit, remaining, (WINDOW_MS - into_ms) / 1000 + 60)
    return RateState(False, limit, 0, _wait_s(previous, count - 1, limit, into_ms))


class MemoryRateLimiter:
    """Counts in this process: for the embedded mode, where one process serves every request."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[int, int]] = {}

    async def hit(self, key_id: str, limit: int, now_ms: int) -> RateState:
        window, into = divmod(now_ms, WINDOW_MS)
        counts = self._counts.setdefault(key_id, {})
        for old in [w for w in counts if w < window - 1]:
            del counts[old]
        count = counts.get(window, 0) + 1
        verdict = _decide(counts.get(window - 1, 0), count, limit, into)
        if verdict.allowed:
            counts[window] = count
        return verdict


class DatabaseRateLimiter:
    """Counts in the database, shared by every process on it (the distributed mode)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def hit(self, key_id: str, limit: int, now_ms: int) -> RateState:
        window, into = divmod(now_ms, WINDOW_MS)
        async with self.db.session() as session, session.begin():
            count = await _increment(session, key_id, window)
            if count == 1:
                await session.execute(
                    delete(RateWindow).where(RateWindow.key_id == key_id, RateWindow.minute < window - 1)
                )
            previous = await session.scalar(
                select(RateWindow.count).where(RateWindow.key_id == key_id, RateWindow.minute == window - 1)
            )
            verdict = _decide(previous or 0, count, limit, into)
            if not verdict.allowed:
                await session.execute(
                    update(RateWindow)
                    .where(RateWindow.key_id == key_id, RateWindow.minute == window)
                    .values(count=RateWindow.count - 1)
                )
        return verdict


def limiter_for(db: Database) -> RateLimiter:
    """In memory on SQLite (one embedded process); in the database otherwise, where processes share it."""
    return MemoryRateLimiter() if db.url.startswith("sqlite") else DatabaseRateLimiter(db)


async def _increment(session: AsyncSession, key_id: str, window: int) -> int:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(RateWindow).values(key_id=key_id, minute=window, count=1)
    statement = statement.on_conflict_do_update(
        index_elements=[RateWindow.key_id, RateWindow.minute], set_={"count": RateWindow.count + 1}
    )
    count = await session.scalar(statement.returning(RateWindow.count))
    return int(count or 0)


def _wait_s(previous: int, current: int, limit: int, into_ms: int) -> float:
    """Seconds until `previous * overlap + current + 1 <= limit` holds, if no one else asks meanwhile."""
    left_ms = WINDOW_MS - into_ms
    if current + 1 <= limit and previous > 0:
        at = (1 - (limit - current - 1) / previous) * WINDOW_MS
        return max(0.0, (at - into_ms) / 1000)
    if current + 1 > limit and current > 0:
        at = max(0.0, 1 - (limit - 1) / current) * WINDOW_MS
        return (left_ms + at) / 1000
    return left_ms / 1000
