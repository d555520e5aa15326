"""Handing memory the server has freed back to the operating system.

glibc's malloc keeps what a program frees for its own reuse and gives back only what lies free at the
top of its heap. After a burst (2,000 requests arriving at once, whose bodies are buffered, parsed
and freed while the rest of the burst is still held) the process stays at the burst's high-water
mark although much of that memory is free: 90 MB of it in `python -m bench slow`. `malloc_trim(0)`
returns every whole free page wherever it lies (about 1 ms on a 300 MB heap). Where the C library is
not glibc, or the system has no /proc, there is nothing to call and nothing here runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from functools import cache

import anyio

log = logging.getLogger(__name__)
GROWTH_BYTES = 16 * 1024 * 1024
"""Resident growth that makes the server look for freed memory to give back."""
MOST_STEP_BYTES = 256 * 1024 * 1024
"""The most the resident size must grow before a look, however little the last releases gave back."""
STILL_BYTES = 1024 * 1024
"""Moving less than this from where the size last moved is holding still."""
CALM_S = 10.0
"""How long the resident size must hold still, after a load, before what it left is released."""


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc's malloc_trim; elsewhere nothing).
    Blocks other threads' allocations while it walks the heap: call it from a worker thread."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def resident_bytes() -> int | None:
    """This process's resident memory in bytes (Linux's /proc/self/statm), or None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def keep_returning_freed_memory(every_s: float, growth: int = GROWTH_BYTES) -> None:
    """Until cancelled, look every `every_s` seconds at the resident size and release freed memory
    when it has grown by a step (first `growth`) since the last release; a release that gives back
    less than half a step doubles the step (up to MOST_STEP_BYTES: a process that grows by holding
    more, not by leaving memory free, is left alone), one that gives back more resets it. Once the
    size has moved and then held still (within STILL_BYTES) for CALM_S, one more release
    returns what the load left behind. Returns at once where there is nothing to call or `every_s`
    is 0."""
    start = resident_bytes()
    if _malloc_trim() is None or start is None or every_s <= 0:
        return
    settled = anchor = start
    step, still_since, calm_done = growth, time.monotonic(), True
    own_thread = anyio.CapacityLimiter(1)  # not behind request work in anyio's default 40 threads
    while True:
        await anyio.sleep(every_s)
        now = resident_bytes()
        if now is None:  # /proc unreadable for a moment (no descriptor to spare): look again later
            continue
        if abs(now - anchor) >= STILL_BYTES:
            anchor, still_since, calm_done = now, time.monotonic(), False
        settled = min(settled, now)
        calm = not calm_done and now - start >= growth and time.monotonic() - still_since >= CALM_S
        if now - settled < step and not calm:
            continue
        await anyio.to_thread.run_sync(release_memory, limiter=own_thread)
        settled = anchor = resident_bytes() or now
        given_back = now - settled
        step = growth if given_back >= step // 2 else min(step * 2, MOST_STEP_BYTES)
        calm_done = calm_done or calm
        log.debug("returned %d MiB of freed memory", given_back // 2**20)
