"""Where async tasks wait to be run: an interface with an embedded and a distributed implementation.

- `RowQueue` (embedded): the task row itself is the job; the in-process runner polls for waiting rows.
- `ProcrastinateQueue` (distributed): a procrastinate job deferred on the very connection and
  transaction that records the task and holds its credits, so both exist or neither does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from imagegate.stores.sql import Sql

if TYPE_CHECKING:
    import procrastinate

RUN_TASK = "imagegate.run_task"
"""The procrastinate task that runs one imagegate task by id."""


class TaskQueue(Protocol):
    async def enqueue(self, sql: Sql, task_id: str, queue: str | None = None) -> None:
        """Queue `task_id` inside the caller's open transaction `sql` (into `queue` rather than the
        default one, where the implementation has queues)."""
        ...


class RowQueue:
    """The embedded queue: nothing beyond the `waiting` task row."""

    async def enqueue(self, sql: Sql, task_id: str, queue: str | None = None) -> None:
        return None


class ProcrastinateQueue:
    """Defers RUN_TASK jobs to procrastinate on PostgreSQL."""

    def __init__(self, app: procrastinate.App, queue: str = "images") -> None:
        self.app = app
        self.queue = queue

    async def enqueue(self, sql: Sql, task_id: str, queue: str | None = None) -> None:
        deferrer = self.app.configure_task(RUN_TASK, connection=sql.driver_connection, queue=queue or self.queue)
        await deferrer.defer_async(task_id=task_id)


def procrastinate_app(database_url: str) -> procrastinate.App:
    """A procrastinate App on the same PostgreSQL database (`postgresql+psycopg://...` accepted)."""
    import procrastinate  # only distributed deployments pay for loading it

    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
