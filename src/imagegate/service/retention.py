"""Result files are kept `[storage] results_ttl`, then their bytes are deleted; each task keeps its
record, and each file its row, marked expired, so its URL can say so (410) rather than not found.

Safe with several processes sweeping one database: a file is marked by a conditional update after
its bytes are gone, and deleting bytes already gone is no error. A file whose bytes the store refuses
to delete is left for the next sweep without stopping this one; until a file is marked, its URL
already answers 410 once its time has run out.

Files nothing will read (a result without a row; inputs and handover files a crash or a late worker
left behind) are deleted too once old enough (`sweep_leftovers`): the store's directory or bucket
prefix belongs to one imagegate database.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import anyio
from sqlalchemy import and_, or_, select, update

from imagegate.errors import Gone
from imagegate.service.published import PREFIX as PUBLISHED
from imagegate.service.queued_channels import HANDOVER_FILE
from imagegate.service.records import RESULT_FILE
from imagegate.stores.blobs import BlobStore, deleted
from imagegate.stores.db import Clock, Database, StoredFile, Task, now_ms
from imagegate.stores.ledger import ACTIVE_STATES

log = logging.getLogger("imagegate.retention")
BATCH = 500
RESULT_ID_CHARS = 32
"""The length of the ids results are stored under now (`secrets.token_urlsafe(24)`): only such names
are taken for unrecorded results, not a foreign file that happens to look like one."""
LEFTOVERS_KEPT_S = 86_400
"""Files no row records are deleted only once older than this (results: and the retention): a result's
row is committed a little after its file is written, a published input is fetched while its attempt
runs, a handover file is read while its call runs, and a task's inputs are stored before its row."""
TASK_INPUT = re.compile(r"^in_(task_[0-9a-f]{24})_(?:\d+|mask)$")
"""An async task's kept input (`TaskService.submit`), and the task's id."""


class ResultSweeper:
    """Deletes the bytes of result files older than `ttl_s` (0: keeps them forever), and leftovers."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        ttl_s: float,
        interval_s: float,
        clock: Clock = now_ms,
        longest_call_s: float = 0,
    ) -> None:
        """`longest_call_s`: the most a call to an engine may take (scratch is kept that much longer)."""
        self.db = db
        self.blobs = blobs
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.clock = clock
        self.scratch_kept_s = LEFTOVERS_KEPT_S + longest_call_s

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

    async def sweep_leftovers(self) -> int:
        """Delete what the store holds that nothing will ever read; returns how many. A file the store
        refuses to delete is left for the next sweep.

        - Result files without a row (their run was taken over, or its final write failed or never
          came), once older than the retention and LEFTOVERS_KEPT_S; kept for ever when results are.
        - Scratch, whatever the retention: inputs published for a provider (withdrawn when their
          attempt ends) and a queued channel's handover files (deleted when its call ends), once older
          than LEFTOVERS_KEPT_S and the longest call; an async task's kept inputs (deleted when it
          ends, or when its recording fails) once older than LEFTOVERS_KEPT_S and the task is over or
          unknown. Such files are left behind only by a process that died first, or by a worker
          finishing a call its node had given up on.
        """
        now_s = self.clock() / 1000
        results_before = now_s - max(self.ttl_ms / 1000, LEFTOVERS_KEPT_S) if self.ttl_ms > 0 else None
        removed = 0
        async for listed in self.blobs.written_before(now_s - LEFTOVERS_KEPT_S):
            calls_over = [name for name, written in listed if written < now_s - self.scratch_kept_s]
            stale = [name for name in calls_over if name.startswith(PUBLISHED) or HANDOVER_FILE.match(name)]
            if results_before is not None:
                stale += await self._unrecorded_results([name for name, written in listed if written < results_before])
            stale += await self._inputs_of_ended_tasks([name for name, _ in listed])
            removed += sum([await deleted(self.blobs, name) for name in stale])
        return removed

    async def _unrecorded_results(self, names: list[str]) -> list[str]:
        """Those of `names` that are result files (current ids) no row records."""
        results = {
            found.group(1): name
            for name in names
            if (found := RESULT_FILE.match(name)) and len(found.group(1)) == RESULT_ID_CHARS
        }
        if not results:
            return []
        async with self.db.session() as session:
            recorded = set((await session.scalars(select(StoredFile.id).where(StoredFile.id.in_(list(results))))).all())
        return [name for file_id, name in results.items() if file_id not in recorded]

    async def _inputs_of_ended_tasks(self, names: list[str]) -> list[str]:
        """Those of `names` that are an async task's kept inputs whose task is over or not recorded."""
        inputs = [(found.group(1), name) for name in names if (found := TASK_INPUT.match(name))]
        if not inputs:
            return []
        async with self.db.session() as session:
            active = set(
                (
                    await session.scalars(
                        select(Task.id).where(
                            Task.id.in_([task_id for task_id, _ in inputs]), Task.state.in_(ACTIVE_STATES)
                        )
                    )
                ).all()
            )
        return [name for task_id, name in inputs if task_id not in active]

    async def run(self) -> None:
        """Sweep at start and every `interval_s` until cancelled."""
        while True:
            for sweep, done in (
                (self.sweep, "result files expired"),
                (self.sweep_leftovers, "leftover files deleted"),
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
