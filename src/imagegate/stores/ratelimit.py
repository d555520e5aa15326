"""Requests-per-minute limits shared by every process on the database (SPEC §7).

A sliding minute counted in one-second buckets, each with the time of its last request: a request
counts until a minute after the last request of its bucket, so no 60 seconds ever admit more than the
limit, and a refused client is told when the oldest counted request leaves (to the millisecond, for
the bucket that must leave). A refused request is not counted, so a client that backs off recovers.
Counted in memory by the one embedded process, or in the database (one upsert and one read per
request) where several processes share the keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.stores.db import Database, RateBucket

WINDOW_MS = 60_000
BUCKET_MS = 1_000


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


Bucket = tuple[int, int]
"""(requests, time of the last of them in ms) of one second of a key's counted requests."""


def _decide(buckets: list[Bucket], limit: int, now_ms: int) -> RateState:
    """The verdict on a request, given the key's buckets oldest first with this request already counted
    in the last one."""
    live = [(count, last) for count, last in buckets if count > 0 and last + WINDOW_MS > now_ms]
    total = sum(count for count, _ in live)
    if total <= limit:
        return RateState(True, limit, limit - total, (max(last for _, last in live) + WINDOW_MS - now_ms) / 1000)
    # Refused: the others stay counted; one more fits once `total - limit` of them have left.
    must_leave, left = total - limit, 0
    for count, last in live:
        left += count
        if left >= must_leave:
            return RateState(False, limit, 0, (last + WINDOW_MS - now_ms) / 1000)
    return RateState(False, limit, 0, WINDOW_MS / 1000)


class MemoryRateLimiter:
    """Counts in this process: for the embedded mode, where one process serves every request."""

    def __init__(self) -> None:
        self._buckets: dict[str, dict[int, Bucket]] = {}

    async def hit(self, key_id: str, limit: int, now_ms: int) -> RateState:
        second = now_ms // BUCKET_MS
        buckets = self._buckets.setdefault(key_id, {})
        for old in [s for s, (_, last) in buckets.items() if last + WINDOW_MS <= now_ms]:
            del buckets[old]
        count, last = buckets.get(second, (0, now_ms))
        mine = {**buckets, second: (count + 1, max(last, now_ms))}
        verdict = _decide([mine[s] for s in sorted(mine)], limit, now_ms)
        if verdict.allowed:
            buckets[second] = mine[second]
        return verdict


class DatabaseRateLimiter:
    """Counts in the database, shared by every process on it (the distributed mode).

    A refused request is counted and taken back in one transaction; the time of its bucket's last
    request may stay up to a second later than the last admitted one (which only ever delays, never
    admits more)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def hit(self, key_id: str, limit: int, now_ms: int) -> RateState:
        second = now_ms // BUCKET_MS
        async with self.db.session() as session, session.begin():
            count = await _increment(session, key_id, second, now_ms)
            if count == 1:
                await session.execute(
                    delete(RateBucket).where(
                        RateBucket.key_id == key_id, RateBucket.second < (now_ms - WINDOW_MS) // BUCKET_MS
                    )
                )
            rows = await session.execute(
                select(RateBucket.count, RateBucket.last_ms)
                .where(RateBucket.key_id == key_id, RateBucket.last_ms > now_ms - WINDOW_MS)
                .order_by(RateBucket.second)
            )
            verdict = _decide([(count, last) for count, last in rows], limit, now_ms)
            if not verdict.allowed:
                await session.execute(
                    update(RateBucket)
                    .where(RateBucket.key_id == key_id, RateBucket.second == second)
                    .values(count=RateBucket.count - 1)
                )
        return verdict


def limiter_for(db: Database) -> RateLimiter:
    """In memory on SQLite (one embedded process); in the database otherwise, where processes share it."""
    return MemoryRateLimiter() if db.url.startswith("sqlite") else DatabaseRateLimiter(db)


async def _increment(session: AsyncSession, key_id: str, second: int, now_ms: int) -> int:
    on_postgresql = session.get_bind().dialect.name == "postgresql"
    if on_postgresql:  # imported where used: the PostgreSQL dialect holds 2 MB a SQLite server need not
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    later = func.greatest if on_postgresql else func.max  # SQLite's two-argument max() is scalar
    statement = insert(RateBucket).values(key_id=key_id, second=second, count=1, last_ms=now_ms)
    statement = statement.on_conflict_do_update(
        index_elements=[RateBucket.key_id, RateBucket.second],
        set_={"count": RateBucket.count + 1, "last_ms": later(RateBucket.last_ms, now_ms)},
    )
    count = await session.scalar(statement.returning(RateBucket.count))
    return int(count or 0)
