"""The requests-per-minute limiters: one contract, run against the in-memory and the database one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagegate.stores.db import Database, migrate
from imagegate.stores.ratelimit import (
    WINDOW_MS,
    DatabaseRateLimiter,
    MemoryRateLimiter,
    RateLimiter,
    duration,
    limiter_for,
)

MINUTE_START = 1_800_000 * WINDOW_MS


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def limiter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    url = f"sqlite+aiosqlite:///{tmp_path / 'rate.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    db = Database(url)
    try:
        yield DatabaseRateLimiter(db)
    finally:
        await db.aclose()


async def test_the_limit_admits_exactly_limit_requests_a_minute(limiter: RateLimiter) -> None:
    now = MINUTE_START + 1_000
    verdicts = [await limiter.hit("key_a", 3, now + i) for i in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0, 0]
    assert (await limiter.hit("key_b", 3, now)).allowed, "keys are counted apart"
    refused = verdicts[3].headers()
    assert (
        refused["x-ratelimit-limit-requests"] == "3" and refused["retry-after"] == "79"
    )  # 59 s to the next minute, then 20 s
    assert "retry-after" not in verdicts[0].headers()


async def test_the_minute_slides_and_refusals_are_not_counted(limiter: RateLimiter) -> None:
    for i in range(4):
        await limiter.hit("key_a", 4, MINUTE_START + i)
    refused = await limiter.hit("key_a", 4, MINUTE_START + 30_000)
    assert not refused.allowed
    # Half-way through the next minute, half of the previous minute's 4 still count.
    halfway = MINUTE_START + WINDOW_MS + WINDOW_MS // 2
    assert [(await limiter.hit("key_a", 4, halfway)).allowed for _ in range(3)] == [True, True, False]
    # A refused request waits as long as it is told to, then gets in.
    wait = await limiter.hit("key_a", 4, halfway + 1)
    assert not wait.allowed
    assert (await limiter.hit("key_a", 4, halfway + 1 + int(wait.reset_s * 1000) + 1)).allowed


def test_durations_read_like_openais() -> None:
    assert [duration(s) for s in (0.25, 1, 7.2, 90, 120)] == ["250ms", "1s", "8s", "1m30s", "2m0s"]


def test_sqlite_counts_in_memory_and_postgresql_in_the_database(tmp_path: Path) -> None:
    assert isinstance(limiter_for(Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")), MemoryRateLimiter)
