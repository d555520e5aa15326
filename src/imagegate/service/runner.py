"""The in-process runner of async tasks: takes `waiting` tasks from the database and runs them.

Durable because the database is the queue: a task is claimed by a conditional update (so two
runners never both win it), its lease is renewed while it runs, and a task whose lease ran out
(its process died) is claimed again — or failed once it has been started `max_attempts` times.
Sync tasks whose lease ran out are failed: the client that waited for them is gone.
"""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
from sqlalchemy import ColumnElement, and_, func, or_, select, update

from imagegate.config import RunnerSettings
from imagegate.errors import Interrupted
from imagegate.service.leases import Leases
from imagegate.service.tasks import TaskService
from imagegate.stores import sql
from imagegate.stores.db import Database, Task

log = logging.getLogger("imagegate.runner")

_ANY_CLAIMABLE = (
    "SELECT 1 FROM tasks WHERE mode = 'async' AND (state = 'waiting' OR (state = 'running' AND lease_until < :now)) "
    "LIMIT 1"
)
"""Whether `Runner._claimable` holds for any task: a poll that finds none takes no write lock (on SQLite
the claim's ORM transaction held the one connection over several hops while every request waited)."""


class TaskBusy(Exception):
    """Another live process runs this task; try its job again later."""


class TaskRunner:
    """Runs async tasks with bounded concurrency until cancelled."""

    def __init__(
        self, db: Database, tasks: TaskService, leases: Leases, settings: RunnerSettings, *, claims: bool = True
    ) -> None:
        self.db = db
        self.claims = claims
        """Whether this runner looks for waiting tasks itself (False where procrastinate workers feed it)."""
        self.tasks = tasks
        self.leases = leases
        self.settings = settings
        self._wake = anyio.Event()
        self._running = 0

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and run tasks, renew leases and sweep dead ones, until cancelled."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._renew_forever)
            while True:
                self._wake = anyio.Event()
                try:
                    for task in await self._claim_batch():
                        group.start_soon(self._run_one, task)
                except Exception:  # a database hiccup must not stop the runner
                    log.exception("runner poll failed; retrying")
                with anyio.move_on_after(self.settings.poll_interval_s):
                    await self._wake.wait()

    async def _claim_batch(self) -> list[Task]:
        await anyio.lowlevel.checkpoint()  # a runner that is stopping claims nothing
        # Shielded: a query cancelled mid-flight leaves a pooled connection that blocks shutdown.
        claimed: list[Task] = []
        with anyio.CancelScope(shield=True):
            await self.sweep()
            while self.claims and self._running < self.settings.concurrency:
                task = await self.claim()
                if task is None:
                    break
                self._running += 1
                claimed.append(task)
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                try:
                    await self._hand_back(claimed)
                except Exception:  # they are taken over when their leases run out
                    log.exception("tasks claimed while the runner stopped could not be handed back")
            raise
        return claimed

    async def _hand_back(self, claimed: list[Task]) -> None:
        """Return tasks claimed while this runner was being stopped, unstarted: `waiting` again, and
        the attempt the claim counted taken back (a shutdown must not use up a task's attempts)."""
        self._running -= len(claimed)
        if not claimed:
            return
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(Task)
                .where(Task.id.in_([task.id for task in claimed]), Task.lease_owner == self.leases.owner)
                .where(Task.state == "running")
                .values(state="waiting", lease_owner=None, lease_until=None, attempts=Task.attempts - 1)
            )

    async def _run_one(self, task: Task) -> None:
        try:
            async with self.leases.hold(task.id):
                if task.attempts > self.settings.max_attempts:
                    times = self.settings.max_attempts
                    await self.tasks.abandon(
                        task, Interrupted(f"The server stopped while running this task {times} times.")
                    )
                else:
                    await self.tasks.run_task(task)
        except Exception:  # run_task records failures; this is a last resort
            log.exception("task %s crashed the runner's worker", task.id)
        finally:
            self._running -= 1
            self.wake()

    async def _renew_forever(self) -> None:
        while True:
            await anyio.sleep(self.leases.lease_ms / 3000)
            try:
                with anyio.CancelScope(shield=True):
                    await self.leases.renew()
            except Exception:  # retried at the next beat
                log.exception("lease renewal failed")

    def _claimable(self, now: int) -> ColumnElement[bool]:
        expired = and_(Task.state == "running", Task.lease_until < now)
        return and_(Task.mode == "async", or_(Task.state == "waiting", expired))

    async def run_by_id(self, task_id: str) -> None:
        """Run task `task_id` now if it can be claimed (a procrastinate job's handler).

        Idempotent: a task already final (or unknown) is left alone. Raises TaskBusy while another live
        process holds its lease, so the job is tried again later.
        """
        task = await self.claim(task_id)
        if task is None:
            async with self.db.session() as session:
                state = await session.scalar(select(Task.state).where(Task.id == task_id))
            if state in ("waiting", "running"):
                raise TaskBusy(f"task {task_id} is held by another live process")
            return
        self._running += 1
        await self._run_one(task)

    async def claim(self, task_id: str | None = None) -> Task | None:
        """The oldest claimable async task (or `task_id`, if claimable), now `running` under this
        process's lease, or None."""
        now = self.leases.clock()
        if task_id is None:
            async with sql.read(self.db) as statements:
                if await statements.row(_ANY_CLAIMABLE, {"now": now}) is None:
                    return None
        async with self.db.session() as session, session.begin():
            query = select(Task.id).where(self._claimable(now))
            if task_id is not None:
                query = query.where(Task.id == task_id)
            candidates = await session.scalars(query.order_by(Task.created_at).limit(8))
            for task_id in list(candidates):
                won = await session.execute(
                    update(Task)
                    .where(Task.id == task_id, self._claimable(now))
                    .values(
                        state="running",
                        lease_owner=self.leases.owner,
                        lease_until=self.leases.expiry(),
                        attempts=Task.attempts + 1,
                        started_at=func.coalesce(Task.started_at, now),
                    )
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                task = await session.get(Task, task_id, populate_existing=True)
                if task is not None:
                    return task
        return None

    async def sweep(self) -> int:
        """Fail sync tasks whose process died (their lease ran out); returns how many."""
        return await self.tasks.records.fail_orphans()
