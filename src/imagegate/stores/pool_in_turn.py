"""A connection pool whose waiters are served in the order they came.

SQLAlchemy's asyncio pool waits on an `asyncio.Queue`, which lets a caller that arrives while a
returned connection's first waiter is still being woken take the connection first; the woken waiter
finds the queue empty and waits again at the back. With SQLite's one connection and 32 requests
taking turns on it, some requests lost their turn over and over: 500–700 ms spent waiting for the
connection while the median waited 10–40 ms (BENCHMARKS.md, issue 14).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import await_
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

T = TypeVar("T")


class InTurnQueue(AsyncAdaptedQueue[T]):
    """An AsyncAdaptedQueue whose blocking `get`s are served first come, first served: an item put
    while some wait is promised to the first of them, and no later caller takes an item while anyone
    waits. Promised items stay in the queue until their waiter takes them, so the queue's bound holds
    and nothing is lost: a waiter that gives up (its timeout, a cancellation) just as it is woken
    passes its turn to the next, or leaves the item to whoever comes."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._promised = 0
        """Items in the queue promised to waiters that were woken and have not yet taken them."""

    def _someone_waits(self) -> bool:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        return bool(self._waiters)

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._promised += 1
                return

    def put_nowait(self, item: T) -> None:
        super().put_nowait(item)  # Full when the queue is full, as before: the pool closes the item
        self._wake_next()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        if not self._someone_waits() and self._queue.qsize() > self._promised:
            return self.get_nowait()
        if not block:
            raise Empty()
        try:
            return await_(self._turn(within_s=timeout))
        except TimeoutError as exc:
            raise Empty() from exc

    async def _turn(self, within_s: float | None) -> T:
        # Registered here, not in `get`: if `await_` refuses to run this (no greenlet), no waiter is
        # left behind to be promised an item nobody takes.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(within_s):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._promised -= 1
                self._wake_next()
            else:
                waiter.cancel()
            raise
        self._promised -= 1
        return self.get_nowait()


class InTurnPool(AsyncAdaptedQueuePool):
    """AsyncAdaptedQueuePool (same arguments) whose connections go to waiters in arrival order."""

    _queue_class = InTurnQueue[ConnectionPoolEntry]
