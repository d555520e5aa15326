"""Result files are kept `[storage] results_ttl`, then their bytes are deleted; each task keeps its
record, and each file its row, marked expired, so its URL can say so (410) rather than not found.

Safe with several processes sweeping one database: a file is marked by a conditional update after
its bytes are gone, and deleting bytes already gone is no error. A file whose bytes the store refuses
to delete is left for the next sweep without stopping this one; until a file is marked, its URL
already answers 410 once its time has run out.

Files no task will read (a result without a row, an input published for a provider whose withdrawal
a crash skipped) are deleted too once older than the retention: the store's directory or bucket
prefix belongs to one imagegate database.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
from sqlalchemy import and_, or_, select, update

from imagegate.errors import Gone
from imagegate.service.published import PREFIX as PUBLISHED
from imagegate.service.records import RESULT_FILE
from imagegate.stores.blobs import BlobStore, deleted
from imagegate.stores.db import Clock, Database, StoredFile, now_ms

log = logging.getLogger("imagegate.retention")
BATCH = 500
RESULT_ID_CHARS = 32
"""The length of the ids results are stored under now (`secrets.token_urlsafe(24)`): only such names
are taken for unrecorded results, not a foreign file that happens to look like one."""
LEFTOVERS_KEPT_S = 86_400
"""Files no row records are deleted only once older than this (and the retention): a result's row is
committed a little after its file is written, and a published input is fetched while its attempt runs."""


class ResultSweeper:
    """Deletes the bytes of result files older than `ttl_s` (0: keeps them forever)."""

    def __init__(self, db: Database, blobs: BlobStore, ttl_s: float, interval_s: float, clock: Clock = now_ms) -> None:
        self.db = db
        self.blobs = blobs
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.clock = clock

    async def sweep(self) -> int:
        """Expire every file past its time now; returns how many. A file whose bytes cannot be deleted
        (the store refuses) stays as it is for the next sweep, and the others go on."""
        if self.ttl_ms <= 0:
            return 0
        now = self.clock()
        expired = 0
        after = (-1, "")
        while True:
            created, last_id = after
            async with self.db.session() as session:
                rows = (
                    await session.execute(
                        select(StoredFile.id, StoredFile.ext, StoredFile.created_at)
                        .where(
                            StoredFile.expired_at.is_(None),
                            StoredFile.created_at < now - self.ttl_ms,
                            or_(
                                StoredFile.created_at > created,
                                and_(StoredFile.created_at == created, StoredFile.id > last_id),
                            ),
                        )
                        .order_by(StoredFile.created_at, StoredFile.id)
                        .limit(BATCH)
                    )
                ).all()
            gone = [file_id for file_id, ext, _ in rows if await deleted(self.blobs, f"{file_id}.{ext}")]
            if gone:
                async with self.db.session() as session, session.begin():
                    await session.execute(
                        update(StoredFile)
                        .where(StoredFile.id.in_(gone), StoredFile.expired_at.is_(None))
                        .values(expired_at=now)
                    )
            expired += len(gone)
            if len(rows) < BATCH:
                return expired
            after = (rows[-1].created_at, rows[-1].id)

    async def sweep_unrecorded(self) -> int:
        """Delete what the store holds that no task will ever read, once older than the retention and
        LEFTOVERS_KEPT_S: result files without a row (their run was taken over, or its final write
        failed or never came) and inputs published for a provider (withdrawn when their attempt ends,
        unless the process died first). A file the store refuses to delete is left for the next sweep.
        Returns how many."""
        if self.ttl_ms <= 0:
            return 0
        now_s = self.clock() / 1000
        before = now_s - max(self.ttl_ms / 1000, LEFTOVERS_KEPT_S)
        removed = 0
        async for listed in self.blobs.written_before(before):
            results = {
                found.group(1): name
                for name, _ in listed
                if (found := RESULT_FILE.match(name)) and len(found.group(1)) == RESULT_ID_CHARS
            }
            recorded: set[str] = set()
            if results:
                async with self.db.session() as session:
                    rows = await session.scalars(select(StoredFile.id).where(StoredFile.id.in_(list(results))))
                    recorded = set(rows.all())
            stale = [name for file_id, name in results.items() if file_id not in recorded]
            stale += [name for name, _ in listed if name.startswith(PUBLISHED)]
            removed += sum([await deleted(self.blobs, name) for name in stale])
        return removed

    async def run(self) -> None:
        """Sweep at start and every `interval_s` until cancelled."""
        while True:
            for sweep, done in (
                (self.sweep, "result files expired"),
                (self.sweep_unrecorded, "unrecorded files deleted"),
            ):
                try:
                    if swept := await sweep():
                        log.info("%d %s", swept, done)
                except Exception:  # the next round tries again
                    log.exception("the result sweep failed")
            await anyio.sleep(self.interval_s)

    async def why_missing(self, file_id: str) -> Gone | None:
        """Gone (410) when `file_id` was a result whose time ran out (marked by a sweep, or past its
        time and not yet marked), else None."""
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(StoredFile.expired_at, StoredFile.created_at).where(StoredFile.id == file_id)
                )
            ).first()
        if row is None:
            return None
        expired_at, created_at = row
        if expired_at is None:
            if self.ttl_ms <= 0 or created_at >= self.clock() - self.ttl_ms:
                return None
            expired_at = created_at + self.ttl_ms
        when = datetime.fromtimestamp(expired_at / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        kept = f": results are kept {_duration(self.ttl_ms // 1000)}" if self.ttl_ms > 0 else ""
        return Gone(f"This result expired on {when}{kept}. Make the request again for a new one.")


def _duration(seconds: int) -> str:
    """`seconds` in the largest whole unit: "7 days", "12 hours", "90 minutes", "45 seconds"."""
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"
