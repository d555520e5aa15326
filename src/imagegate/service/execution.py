"""One task's execution, from its claim to its end, in one place: run → settle or release → callback.

A task is claimed when it is recorded running (a sync request) or won by the runner (an async one).
From then on every exit goes through its Execution: a success is settled (final state, credits and
callback delivery written in one transaction by TaskRecords.finish); anything a step raises — the
client's bad input, an engine error, a crash — fails the task the same way; and a cancellation
(the client went away, a handler timed out, the server stops) hands an async task back as `waiting`
and fails a sync one, whose client is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from imagegate.errors import ImagegateError, TakenOver
from imagegate.metrics import Metrics
from imagegate.service.records import Outcome, TaskRecords, failure_of
from imagegate.stores.db import StoredFile

log = logging.getLogger("imagegate.tasks")
T = TypeVar("T")


@dataclass
class Execution:
    """The execution of one claimed task; `step` runs its work, `succeed` and `fail` end it."""

    records: TaskRecords
    metrics: Metrics
    task_id: str
    model: str
    engine: str
    started: float = field(default_factory=time.perf_counter)
    ended: bool = False
    """Whether its final state was written (a release as `waiting` is not an end)."""
    taken_over: bool = False
    """Whether, when this run came to end it, the task was no longer its own (its lease ran out and it
    was ended or taken over elsewhere): this run ends nothing, and its inputs are the new owner's."""

    async def step(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`; when it raises anything at all, the execution ends failed (or released) first and
        the error is raised again."""
        try:
            return await work()
        except BaseException as exc:
            await self.fail(exc)
            raise

    async def succeed(self, outcome: Outcome, files: Sequence[StoredFile]) -> None:
        """Settle the task with `outcome` and its stored `files` (and queue its callback). Raises
        TakenOver when the task is no longer this execution's to settle (its lease ran out and it was
        ended or taken over elsewhere, charged nothing): its result must not be delivered."""
        if not await self.records.finish(self.task_id, outcome=outcome, files=files):
            self.taken_over = True
            self._count(error=TakenOver.code)
            raise TakenOver(
                "This request was ended before its result could be recorded (the server held it past its "
                "lease); nothing was charged. Make the request again."
            )
        self.ended = True
        self._count(images=len(outcome.images))

    async def fail(self, exc: BaseException) -> None:
        """End the task for `exc`: an async task cancelled is handed back as `waiting`; anything else
        fails it, its hold released and its callback queued (an unexpected error is logged whole)."""
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        if cancelled and await self.records.release_if_async(self.task_id):
            return
        if not isinstance(exc, ImagegateError) and not cancelled:
            log.error("task %s failed unexpectedly", self.task_id, exc_info=exc)
        if not await self.records.finish(self.task_id, error=exc):
            self.taken_over = True
            return
        self.ended = True
        self._count(error=failure_of(exc)[0])

    def _count(self, images: int = 0, error: str | None = None) -> None:
        self.metrics.task_finished(
            self.model, self.engine, time.perf_counter() - self.started, images=images, error=error
        )
