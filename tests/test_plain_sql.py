"""stores/sql.py: rows written as plain SQL read back the same through the ORM and back, on SQLite and
PostgreSQL; a transaction commits when its block ends and leaves nothing when it raises, even when what
fails is a statement that waited to go with the next (on SQLite, writes go to the database's thread in
as few trips as the reads between them allow)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from imagegate.stores import keys, sql
from imagegate.stores.db import ApiKey, Database, Task, migrate, to_micros


class Undo(Exception):
    """Raised to roll a transaction back."""


def a_task(task_id: str, key_id: str) -> Task:
    return Task(
        id=task_id,
        key_id=key_id,
        model="gpt-image-2",
        kind="edit",
        dialect="openai",
        request={"prompt": "ünïcode ✓", "n": 2, "nested": {"sizes": [1024, 1536]}},
        wire={"param": None},
        state="running",
        held=Decimal("0.000001"),
        cost=Decimal("123456.5"),
        images=2,
    )


async def new_key(database: Database) -> str:
    """The id of a new key holding one credit."""
    async with database.session() as session, session.begin():
        return (await keys.create_key(session, credits=Decimal(1))).id


async def task_ids(database: Database) -> list[str]:
    """The ids of the tasks the database holds, in order."""
    async with sql.read(database) as statements:
        return [row[0] for row in await statements.rows("SELECT id FROM tasks ORDER BY id")]


async def test_a_row_written_as_plain_sql_reads_back_the_same_through_the_orm(database: Database) -> None:
    key_id = await new_key(database)
    written = a_task("task_plain", key_id)
    async with sql.transaction(database) as statements:
        await statements.rows(sql.insert_sql(Task), sql.row_values(written))
    async with database.session() as session:
        stored = await session.get(Task, "task_plain")
    assert stored is not None
    for name in ("request", "wire", "held", "cost", "images", "state", "result"):
        assert getattr(stored, name) == getattr(written, name), name
    assert (stored.mode, stored.attempts) == ("sync", 0), "the models' defaults fill what the object left out"
    assert stored.created_at > 0
    async with sql.read(database) as statements:
        found = await statements.row(sql.select_sql(Task) + " WHERE id = :id", {"id": "task_plain"})
    assert found is not None
    again = sql.from_row(Task, found)
    assert (again.request, again.wire, again.held, again.cost) == (
        written.request,
        written.wire,
        written.held,
        written.cost,
    )


async def test_a_transaction_that_raises_leaves_nothing(database: Database) -> None:
    key_id = await new_key(database)
    with pytest.raises(Undo):
        async with sql.transaction(database) as statements:
            await statements.rows(sql.insert_sql(Task), sql.row_values(a_task("task_undone", key_id)))
            raise Undo
    async with sql.read(database) as statements:
        assert await statements.row("SELECT id FROM tasks WHERE id = :id", {"id": "task_undone"}) is None


def test_credits_with_more_than_six_decimals_are_refused() -> None:
    assert to_micros(Decimal("1.5")) == 1_500_000
    with pytest.raises(ValueError, match="6 decimal places"):
        to_micros(Decimal("0.0000001"))


async def test_a_transaction_cancelled_midway_leaves_nothing_and_no_lock(database: Database) -> None:
    key_id = await new_key(database)
    with anyio.move_on_after(0.2):
        async with sql.transaction(database) as statements:
            await statements.rows(sql.insert_sql(Task), sql.row_values(a_task("task_cancelled", key_id)))
            await anyio.sleep(30)
    with anyio.fail_after(5):
        async with sql.transaction(database) as statements:
            await statements.rows(sql.insert_sql(Task), sql.row_values(a_task("task_after", key_id)))
    assert await task_ids(database) == ["task_after"]


async def test_statements_whose_rows_nobody_needs_are_done_before_the_next_read_and_by_the_commit(
    database: Database,
) -> None:
    key_id = await new_key(database)
    async with sql.transaction(database) as statements:
        await statements.run(sql.insert_sql(Task), sql.row_values(a_task("task_first", key_id)))
        seen = await statements.rows("SELECT id FROM tasks")
        await statements.run(sql.insert_sql(Task), sql.row_values(a_task("task_second", key_id)))
    assert [row[0] for row in seen] == ["task_first"]
    assert await task_ids(database) == ["task_first", "task_second"]


async def test_a_failing_statement_whose_rows_nobody_needs_still_undoes_its_whole_transaction(
    database: Database,
) -> None:
    key_id = await new_key(database)
    with pytest.raises((sqlite3.IntegrityError, IntegrityError)):
        async with sql.transaction(database) as statements:
            await statements.run(sql.insert_sql(Task), sql.row_values(a_task("task_once", key_id)))
            await statements.run(sql.insert_sql(Task), sql.row_values(a_task("task_once", key_id)))
    with anyio.fail_after(5):
        async with sql.transaction(database) as statements:
            await statements.run(sql.insert_sql(Task), sql.row_values(a_task("task_later", key_id)))
    assert await task_ids(database) == ["task_later"]


async def test_on_sqlite_a_transaction_of_writes_and_one_read_is_two_trips_to_the_database_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'trips.db'}"
    migrate(url)
    database = Database(url)
    try:
        async with database.session() as session, session.begin():
            key_id = (await keys.create_key(session, credits=Decimal(1))).id
        trips: list[str] = []
        real: Callable[..., Awaitable[Any]] = aiosqlite.Connection._execute

        async def counted(self: aiosqlite.Connection, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            trips.append(getattr(fn, "__name__", "?"))
            return await real(self, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        async with sql.transaction(database) as statements:
            await statements.run(sql.insert_sql(Task), sql.row_values(a_task("task_a", key_id)))
            await statements.run("UPDATE api_keys SET held = held WHERE id = :id", {"id": key_id})
            assert await statements.row("SELECT count(*) FROM tasks") == (1,)
            await statements.run(sql.insert_sql(Task), sql.row_values(a_task("task_b", key_id)))
        assert len(trips) == 2, trips
        async with sql.read(database) as statements:
            assert await statements.row("SELECT count(*) FROM tasks") == (2,)
        assert len(trips) == 3, f"a read without a transaction is one trip, with no rollback after it: {trips}"
    finally:
        await database.aclose()


async def test_a_transaction_cancelled_while_it_waits_for_the_lock_leaves_nothing_for_the_next_user(
    tmp_path: Path,
) -> None:
    """On SQLite a cancelled call still runs later in aiosqlite's thread: what it began must be rolled
    back there, not left open for the next use of the connection to commit."""
    path = tmp_path / "locked.db"
    migrate(f"sqlite:///{path}")
    database = Database(f"sqlite:///{path}")
    try:
        key_id = await new_key(database)
        other = sqlite3.connect(path, check_same_thread=False)  # another process holding the write lock
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.6, other.rollback)
        release.start()
        with anyio.move_on_after(0.3):
            async with sql.transaction(database) as statements:
                await statements.rows("UPDATE api_keys SET held = held + 7 WHERE id = :id RETURNING id", {"id": key_id})
        release.join()
        other.close()
        async with database.session() as session, session.begin():
            await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(name="renamed"))
        async with sql.transaction(database) as statements:
            found = await statements.row("SELECT held, name FROM api_keys WHERE id = :id", {"id": key_id})
        assert found == (0, "renamed")
    finally:
        await database.aclose()
