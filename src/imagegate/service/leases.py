"""Leases on running tasks: the proof that one process, and only one, is working on a task.

A process stamps `lease_owner` (its id) and `lease_until` on every task it runs and renews the
stamps while it works. A task whose lease ran out belongs to a process that died or stalled:
the runner takes an async one over, and fails a sync one (its client's connection is gone).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import update

from imagegate.stores.db import Clock, Database, Task, now_ms


class Leases:
    """The tasks this process holds, and their renewal."""

    def __init__(self, db: Database, lease_s: float, clock: Clock = now_ms) -> None:
        self.db = db
        self.clock = clock
        self.owner = "proc_" + secrets.token_hex(8)
        self.lease_ms = max(1, int(lease_s * 1000))
        self._held: set[str] = set()

    def expiry(self) -> int:
        """`lease_until` for a lease taken or renewed now."""
        return self.clock() + self.lease_ms

    @asynccontextmanager
    async def hold(self, task_id: str) -> AsyncIterator[None]:
        """Keep renewing `task_id`'s lease while the block runs."""
        self._held.add(task_id)
        try:
            yield
        finally:
            self._held.discard(task_id)

    async def renew(self) -> None:
        """Push every held lease `lease_s` into the future (only where this process still owns it)."""
        held = list(self._held)
        if not held:
            return
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(Task)
                .where(Task.id.in_(held), Task.lease_owner == self.owner, Task.state == "running")
                .values(lease_until=self.expiry())
            )
