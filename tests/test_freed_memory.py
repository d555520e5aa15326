"""Memory the server frees goes back to the operating system: glibc keeps freed blocks that lie inside
its heap resident, and the server hands them back (malloc_trim) once its resident size has grown."""

from __future__ import annotations

import anyio
import pytest

from imagegate.service import freed_memory
from imagegate.service.freed_memory import _malloc_trim, keep_returning_freed_memory, release_memory, resident_bytes
from tests.waiting import wait_for_task_async

pytestmark = pytest.mark.skipif(
    _malloc_trim() is None or resident_bytes() is None, reason="needs glibc's malloc_trim and Linux's /proc"
)
MIB = 1024 * 1024
BURST = 64 * MIB


def held() -> list[bytes]:
    """64 MiB of 48 KB blocks, all in use (glibc takes blocks that small from its heap, not from mmap)."""
    return [b"\x01" * 48_000 for _ in range(BURST // 48_000)]


def burst() -> list[bytes]:
    """What a burst of requests leaves: `held` blocks (request bodies) of which every 16th is still in
    use, so the free ones lie between live ones, where freeing them does not shrink the heap."""
    return held()[::16]


def resident() -> int:
    now = resident_bytes()
    assert now is not None
    return now


def test_freed_blocks_inside_the_heap_stay_resident_until_released() -> None:
    before = resident()
    kept = burst()
    high = resident()
    assert high - before > BURST // 2, "free() alone gave the blocks back: there is nothing to test here"
    release_memory()
    assert resident() < high - BURST // 2
    assert len(kept) > 0


async def test_the_server_gives_back_what_a_burst_left_free() -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(keep_returning_freed_memory, 0.05)
        await anyio.sleep(0.1)
        kept = burst()
        high = resident()

        async def now() -> int:
            return resident()

        await wait_for_task_async(now, done=lambda rss: rss < high - BURST // 2, timeout_s=5, what="RSS to fall")
        group.cancel_scope.cancel()
    assert len(kept) > 0


async def test_what_a_load_leaves_free_is_returned_once_the_size_holds_still(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(freed_memory, "CALM_S", 0.3)
    async with anyio.create_task_group() as group:
        group.start_soon(keep_returning_freed_memory, 0.05)
        await anyio.sleep(0.1)
        load = held()  # grown by holding more: a release then gives nothing back
        high = resident()
        await anyio.sleep(0.2)
        kept = load[::16]
        del load  # the load ends: freed inside the heap, the size does not move

        async def now() -> int:
            return resident()

        await wait_for_task_async(now, done=lambda rss: rss < high - BURST // 2, timeout_s=5, what="RSS to fall")
        group.cancel_scope.cancel()
    assert len(kept) > 0


async def test_a_server_told_never_does_not_look() -> None:
    with anyio.fail_after(1):
        await keep_returning_freed_memory(0)
