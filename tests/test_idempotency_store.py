"""The Idempotency-Key store on each database: replay within 24 h, a fresh start after, and a
reservation whose process died released after 15 minutes (time moved by an injected clock)."""

from __future__ import annotations

from imagegate.stores.db import Database, now_ms
from imagegate.stores.idempotency import LIFETIME_MS, STALE_PENDING_MS, IdempotencyStore, Stored, Verdict


async def test_answers_replay_for_a_day_and_stale_reservations_are_released(database: Database) -> None:
    now = [now_ms()]
    store = IdempotencyStore(database, clock=lambda: now[0])
    assert await store.begin("key_1", "k", "f1") == (Verdict.RUN, None)
    assert await store.begin("key_1", "k", "f1") == (Verdict.IN_PROGRESS, None)
    now[0] += STALE_PENDING_MS
    assert await store.begin("key_1", "k", "f1") == (Verdict.IN_PROGRESS, None), "not stale yet"
    now[0] += 1
    assert await store.begin("key_1", "k", "f1") == (Verdict.RUN, None), "the dead process's reservation is freed"

    answer = Stored(200, {"content-type": "application/json"}, b"{}")
    await store.complete("key_1", "k", answer)
    now[0] += LIFETIME_MS - 1
    assert await store.begin("key_1", "k", "f1") == (Verdict.REPLAY, answer)
    assert await store.begin("key_1", "k", "f2") == (Verdict.MISMATCH, None)
    assert await store.begin("key_2", "k", "f1") == (Verdict.RUN, None), "another key's use is its own"
    now[0] += 2
    assert await store.begin("key_1", "k", "f2") == (Verdict.RUN, None), "a day later the key starts afresh"
