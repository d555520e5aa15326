"""The requests-per-minute limiters: one contract, run against the in-memory and the database one."""

from __future__ import annotations

import math
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
    # The oldest counted request leaves the minute 60 s after it came, not a minute after the next minute.
    assert refused["x-ratelimit-limit-requests"] == "3" and refused["retry-after"] == "60"
    assert "retry-after" not in verdicts[0].headers()
    assert verdicts[0].headers()["x-ratelimit-reset-requests"] == "1m0s"


async def test_the_minute_slides_request_by_request_and_refusals_are_not_counted(limiter: RateLimiter) -> None:
    for at in (0, 10_000, 20_000, 30_000):
        assert (await limiter.hit("key_a", 4, MINUTE_START + at)).allowed
    refused = await limiter.hit("key_a", 4, MINUTE_START + 40_000)
    assert not refused.allowed and refused.headers()["retry-after"] == "20"
    assert not (await limiter.hit("key_a", 4, MINUTE_START + 59_999)).allowed
    # The first request has left: exactly one more fits, and the next waits for the second to leave.
    assert (await limiter.hit("key_a", 4, MINUTE_START + 60_000)).allowed
    wait = await limiter.hit("key_a", 4, MINUTE_START + 60_001)
    assert not wait.allowed and wait.headers()["retry-after"] == "10"
    # A refused request waits as long as it is told to, then gets in.
    assert (await limiter.hit("key_a", 4, MINUTE_START + 60_001 + math.ceil(wait.reset_s * 1000))).allowed


async def test_a_burst_within_one_second_leaves_together(limiter: RateLimiter) -> None:
    for at in (100, 400, 900):
        assert (await limiter.hit("key_a", 3, MINUTE_START + at)).allowed
    refused = await limiter.hit("key_a", 3, MINUTE_START + 30_000)
    assert not refused.allowed and refused.reset_s == pytest.approx(30.9)
    assert (await limiter.hit("key_a", 3, MINUTE_START + 60_900)).allowed


def test_durations_read_like_openais() -> None:
    assert [duration(s) for s in (0.25, 1, 7.2, 90, 120)] == ["250ms", "1s", "8s", "1m30s", "2m0s"]


def test_sqlite_counts_in_memory_and_postgresql_in_the_database(tmp_path: Path) -> None:
    assert isinstance(limiter_for(Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")), MemoryRateLimiter)
