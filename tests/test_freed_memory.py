"""Memory the server frees goes back to the operating system: glibc keeps freed blocks that lie inside
its heap resident, and the server hands them back (malloc_trim) once its resident size has grown."""

from __future__ import annotations

from types import SimpleNamespace

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


@pytest.fixture(autouse=True)
def heap_without_free_pages() -> None:
    """Earlier tests in this process may have left megabytes free inside the heap; a burst would reuse
    them without growing the resident size, leaving nothing to give back. They are given back first."""
    release_memory()


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


class Done(Exception):
    """The scripted sizes ran out."""


async def releases_over(monkeypatch: pytest.MonkeyPatch, sizes_mib: list[float], every_s: float = 0.5) -> list[int]:
    """The looks (indices into `sizes_mib`, the resident size at each look) after which the policy
    released memory, on a fake clock; releasing gives nothing back here, as when memory is in use."""
    clock, looked, released = [0.0], [-1], []

    async def look(seconds: float) -> None:
        clock[0] += seconds
        looked[0] += 1
        if looked[0] == len(sizes_mib):
            raise Done

    monkeypatch.setattr(
        freed_memory,
        "anyio",
        SimpleNamespace(sleep=look, to_thread=anyio.to_thread, CapacityLimiter=anyio.CapacityLimiter),
    )
    monkeypatch.setattr(freed_memory, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(freed_memory, "resident_bytes", lambda: int(sizes_mib[max(looked[0], 0)] * MIB))
    monkeypatch.setattr(freed_memory, "_malloc_trim", lambda: lambda pad: 0)
    monkeypatch.setattr(freed_memory, "release_memory", lambda: released.append(looked[0]))
    with pytest.raises(Done):
        await keep_returning_freed_memory(every_s)
    return released


async def test_an_idle_server_never_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await releases_over(monkeypatch, [200.0] * 400) == []


async def test_a_steady_load_is_not_released_on_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    load = [200.0] + [300.0 + 2 * (i % 2) for i in range(400)]  # 200 s holding 100 MiB more, moving
    released = await releases_over(monkeypatch, load)
    assert released and max(released) < 10, f"once as it grew, never after: {released}"


async def test_a_slow_climb_is_released_once_it_holds_still(monkeypatch: pytest.MonkeyPatch) -> None:
    climb = [200.0 + 0.5 * i for i in range(81)] + [240.0] * 60  # 40 s at 1 MiB/s, then 30 s still
    released = await releases_over(monkeypatch, climb)
    after = [look for look in released if look > 80]
    assert len(after) == 1 and after[0] >= 80 + freed_memory.CALM_S / 0.5, released
    assert len(released) <= 3, f"the climb itself is looked at rarely: {released}"
