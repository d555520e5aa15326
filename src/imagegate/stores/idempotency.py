"""Stored first answers to POSTs that carry an `Idempotency-Key` (SPEC §6).

A key is scoped to the API key that sent it (by the key's id) and lives 24 hours.
`begin` reserves it atomically (the primary key makes two concurrent first requests impossible);
`complete` stores the answer to replay; `abandon` frees the key when there is nothing to replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from imagegate.stores.db import Clock, Database, IdempotentResponse, now_ms

LIFETIME_MS = 24 * 3600 * 1000
STALE_PENDING_MS = 15 * 60 * 1000
"""A reservation older than this belongs to a request whose process died; it is released."""


class Verdict(StrEnum):
    RUN = "run"
    """First use: run the request, then `complete` or `abandon`."""
    REPLAY = "replay"
    MISMATCH = "mismatch"
    """The key was used with a different request."""
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class Stored:
    status: int
    headers: dict[str, str]
    body: bytes


class IdempotencyStore:
    def __init__(self, db: Database, clock: Clock = now_ms) -> None:
        self.db = db
        self.clock = clock

    async def begin(self, scope: str, key: str, fingerprint: str) -> tuple[Verdict, Stored | None]:
        """Reserve `key` for a request with `fingerprint`, or say why not (with the answer to replay)."""
        for _ in range(3):
            try:
                return await self._begin_once(scope, key, fingerprint)
            except IntegrityError:
                continue
        return Verdict.IN_PROGRESS, None

    async def _begin_once(self, scope: str, key: str, fingerprint: str) -> tuple[Verdict, Stored | None]:
        now = self.clock()
        async with self.db.session() as session, session.begin():
            row = await session.get(IdempotentResponse, (scope, key))
            if row is not None:
                expired = row.created_at < now - LIFETIME_MS
                stale = row.state == "pending" and row.created_at < now - STALE_PENDING_MS
                if not (expired or stale):
                    if row.fingerprint != fingerprint:
                        return Verdict.MISMATCH, None
                    if row.state == "pending" or row.body is None or row.status is None:
                        return Verdict.IN_PROGRESS, None
                    return Verdict.REPLAY, Stored(row.status, dict(row.headers or {}), row.body)
                await session.delete(row)
                await session.flush()
            session.add(
                IdempotentResponse(scope=scope, key=key, fingerprint=fingerprint, state="pending", created_at=now)
            )
        return Verdict.RUN, None

    async def complete(self, scope: str, key: str, stored: Stored) -> None:
        async with self.db.session() as session, session.begin():
            row = await session.get(IdempotentResponse, (scope, key))
            if row is not None:
                row.state, row.status, row.headers, row.body = "done", stored.status, stored.headers, stored.body
                row.content_type = stored.headers.get("content-type")

    async def abandon(self, scope: str, key: str) -> None:
        async with self.db.session() as session, session.begin():
            await session.execute(
                delete(IdempotentResponse).where(
                    IdempotentResponse.scope == scope,
                    IdempotentResponse.key == key,
                    IdempotentResponse.state == "pending",
                )
            )
