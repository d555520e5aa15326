"""Result files are kept `[storage] results_ttl`, then their bytes are deleted; each task keeps its
record, and each file its row, marked expired, so its URL can say so (410) rather than not found.

Safe with several processes sweeping one database: a file is marked by a conditional update after
its bytes are gone, and deleting bytes already gone is no error.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
from sqlalchemy import select, update

from imagegate.errors import Gone
from imagegate.stores.blobs import BlobStore
from imagegate.stores.db import Clock, Database, StoredFile, now_ms

log = logging.getLogger("imagegate.retention")
BATCH = 500


class ResultSweeper:
    """Deletes the bytes of result files older than `ttl_s` (0: keeps them forever)."""

    def __init__(self, db: Database, blobs: BlobStore, ttl_s: float, interval_s: float, clock: Clock = now_ms) -> None:
        self.db = db
        self.blobs = blobs
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.clock = clock

    async def sweep(self) -> int:
        """Expire every file past its time now; returns how many."""
        if self.ttl_ms <= 0:
            return 0
        expired = 0
        while True:
            now = self.clock()
            async with self.db.session() as session:
                rows = (
                    await session.execute(
                        select(StoredFile.id, StoredFile.ext)
                        .where(StoredFile.expired_at.is_(None), StoredFile.created_at < now - self.ttl_ms)
                        .limit(BATCH)
                    )
                ).all()
            for file_id, ext in rows:
                await self.blobs.delete(f"{file_id}.{ext}")
            if rows:
                async with self.db.session() as session, session.begin():
                    await session.execute(
                        update(StoredFile)
                        .where(StoredFile.id.in_([file_id for file_id, _ in rows]), StoredFile.expired_at.is_(None))
                        .values(expired_at=now)
                    )
            expired += len(rows)
            if len(rows) < BATCH:
                return expired

    async def run(self) -> None:
        """Sweep at start and every `interval_s` until cancelled."""
        while True:
            try:
                if swept := await self.sweep():
                    log.info("%d result files expired", swept)
            except Exception:  # the next round tries again
                log.exception("the result sweep failed")
            await anyio.sleep(self.interval_s)

    async def why_missing(self, file_id: str) -> Gone | None:
        """Gone (410) when `file_id` was a result whose time ran out, else None."""
        async with self.db.session() as session:
            expired_at = await session.scalar(select(StoredFile.expired_at).where(StoredFile.id == file_id))
        if expired_at is None:
            return None
        when = datetime.fromtimestamp(expired_at / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        days = self.ttl_ms / 86_400_000
        return Gone(
            f"This result expired on {when}: results are kept {days:g} days. Make the request again for a new one."
        )
