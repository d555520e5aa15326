"""The server's decoded-pixel budget (SPEC §8): how much image memory requests may hold at once.

Every request's decode cost is estimated from its inputs' headers and its output size before anything
is decoded. A request that would need more than the whole budget is refused (400) before decoding;
the others wait, first come first served, until the budget has room for them, so concurrent decodes
never add up past it. After a large job the freed memory is handed back to the operating system.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from imagegate.core.request import Size
from imagegate.service.freed_memory import release_memory

BYTES_PER_PIXEL = 4
"""Pillow keeps RGB and RGBA alike in four bytes a pixel."""
INPUT_COPIES = 2
"""The largest input decoded, plus one working copy of it (premultiplied alpha, or the reduced image)."""
OUTPUT_COPIES = 8
"""Canvas, fitted, edited and the operations' intermediates at the output size (measured: a four-input
cartoon at 3840x2160 peaks at about seven)."""
TRIM_AFTER_BYTES = 64 * 1024 * 1024


def decode_cost(inputs: list[tuple[int, int]], size: Size) -> int:
    """The most memory, in bytes, that decoding `inputs` (width, height; one at a time) and making an
    image of `size` may take."""
    largest = max((width * height for width, height in inputs), default=0)
    return BYTES_PER_PIXEL * (INPUT_COPIES * largest + OUTPUT_COPIES * size.pixels)


def default_budget() -> int:
    """A quarter of the machine's physical memory, and at least 512 MiB."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = 4 * 1024**3
    return max(512 * 1024**2, physical // 4)


class DecodeBudget:
    """A weighted, first-come-first-served semaphore over bytes of decoded images."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiting: deque[tuple[int, anyio.Event]] = deque()

    def fits(self, cost: int) -> bool:
        """Whether one request of `cost` may ever run (it must fit the whole budget)."""
        return cost <= self.total

    @asynccontextmanager
    async def hold(self, cost: int) -> AsyncIterator[None]:
        """Hold `cost` bytes of the budget while the block runs, waiting (in arrival order) for room."""
        cost = min(cost, self.total)
        if self._waiting or self.used + cost > self.total:
            ready = anyio.Event()
            entry = (cost, ready)
            self._waiting.append(entry)
            try:
                await ready.wait()
            except BaseException:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                else:  # admitted while being cancelled: give the room back
                    self._release(cost)
                raise
        else:
            self.used += cost
        try:
            yield
        finally:
            self._release(cost)
            if cost >= TRIM_AFTER_BYTES:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(release_memory)

    def _release(self, cost: int) -> None:
        self.used -= cost
        while self._waiting and self.used + self._waiting[0][0] <= self.total:
            admitted, ready = self._waiting.popleft()
            self.used += admitted
            ready.set()
