"""SQLite's one connection goes to those waiting for it in the order they came, and a use of it that
does not wait holds it no longer than its block (stores/pool_in_turn.py, stores/sql.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import Empty, Full

from imagegate.stores import sql
from imagegate.stores.db import Database, migrate
from imagegate.stores.pool_in_turn import InTurnQueue


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    migrate(url)
    return Database(url)


async def test_a_use_that_gives_the_connection_back_and_asks_again_goes_behind_those_waiting(db: Database) -> None:
    entered: list[str] = []

    async def use(name: str) -> None:
        async with sql.read(db) as statements:
            entered.append(name)
            await statements.rows("SELECT 1")  # a hop to the driver's thread: the others queue meanwhile

    async def twice() -> None:
        await use("first")
        await use("again")  # at once: nobody else has run yet

    holder = asyncio.create_task(twice())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(use(f"waiter {i}")) for i in range(3)]
    await asyncio.gather(holder, *waiters)
    await db.aclose()
    assert entered == ["first", "waiter 0", "waiter 1", "waiter 2", "again"]


async def test_a_read_gives_the_connection_back_without_a_pass_of_the_event_loop(db: Database) -> None:
    async with sql.read(db):  # the first use opens the connection
        pass
    passes: list[None] = []
    asyncio.get_running_loop().call_soon(passes.append, None)
    async with sql.read(db):
        pass
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert passes == [], "the event loop ran other work while the connection was taken and given back"
    await db.aclose()


def get(queue: InTurnQueue[str], timeout: float | None = None) -> str:
    return queue.get(True, timeout)


async def test_an_item_put_while_some_wait_goes_to_the_first_of_them() -> None:
    queue: InTurnQueue[str] = InTurnQueue()
    first = asyncio.create_task(greenlet_spawn(get, queue))
    second = asyncio.create_task(greenlet_spawn(get, queue))
    await asyncio.sleep(0)
    queue.put_nowait("a")
    with pytest.raises(Empty):  # a later caller takes nothing while someone waits
        queue.get(False)
    queue.put_nowait("b")
    assert [await first, await second] == ["a", "b"]
    assert queue.empty()


async def test_a_waiter_that_gives_up_as_it_is_handed_an_item_passes_it_on() -> None:
    queue: InTurnQueue[str] = InTurnQueue()
    first = asyncio.create_task(greenlet_spawn(get, queue))
    second = asyncio.create_task(greenlet_spawn(get, queue))
    await asyncio.sleep(0)
    queue.put_nowait("a")  # handed to `first`, which is cancelled before it runs again
    first.cancel()
    assert await second == "a"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_waiter_past_its_timeout_gets_empty_and_the_next_item_waits_in_the_queue() -> None:
    queue: InTurnQueue[str] = InTurnQueue()
    with pytest.raises(Empty):
        await greenlet_spawn(get, queue, 0.01)
    queue.put_nowait("a")
    assert not queue.empty()
    assert await greenlet_spawn(get, queue) == "a"


async def test_a_waiter_woken_as_the_queue_fills_gives_up_without_losing_an_item() -> None:
    """The pool returns connections into a queue bounded at its size and closes one that finds it full.
    A waiter cancelled after it was woken, when more connections came back meanwhile, must leave every
    connection accounted for: in the queue, or refused (Full) for the pool to close."""
    queue: InTurnQueue[str] = InTurnQueue(maxsize=1)
    waiter = asyncio.create_task(greenlet_spawn(get, queue))
    await asyncio.sleep(0)
    accepted = []
    for item in ("a", "b"):  # both come back in one step of the loop, before the waiter runs again
        try:
            queue.put_nowait(item)
            accepted.append(item)
        except Full:
            pass  # the pool closes it
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    drained = []
    while True:
        try:
            drained.append(queue.get(False))
        except Empty:
            break
    assert drained == accepted


async def test_a_get_refused_for_want_of_a_greenlet_leaves_no_waiter_behind() -> None:
    """Asked from plain async code (a programming error elsewhere), `get` raises; the next item put
    must still go to whoever asks for it, not to a waiter that will never take it."""
    queue: InTurnQueue[str] = InTurnQueue()
    with pytest.raises(MissingGreenlet):
        queue.get(True, 1.0)
    queue.put_nowait("a")
    assert queue.get(False) == "a"
