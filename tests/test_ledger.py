"""The ledger's contract on both databases (SQLite embedded, PostgreSQL distributed): holds, limits,
settlement, and exactness when many transactions race for one key."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from imagegate.errors import Conflict, InsufficientCredits
from imagegate.stores import keys, ledger, sql
from imagegate.stores.db import Database, Task, to_micros
from tests.conftest import audit_ledgers


@pytest.fixture
def db(database: Database) -> Database:
    """The contract database: SQLite, then PostgreSQL."""
    return database


def audit(db: Database) -> None:
    url = db.url
    audit_ledgers(Path(url.split("///", 1)[1]) if url.startswith("sqlite") else url)


async def new_key(db: Database, credits: str) -> str:
    async with db.session() as session, session.begin():
        return (await keys.create_key(session, credits=Decimal(credits))).id


def task(task_id: str, key_id: str) -> Task:
    return Task(
        id=task_id, key_id=key_id, model="gpt-image-2", kind="edit", dialect="openai", request={}, state="running"
    )


async def test_holds_settle_and_release_exactly(db: Database) -> None:
    key_id = await new_key(db, "10")
    async with sql.transaction(db) as statements:
        await ledger.open_task(statements, task("task_a", key_id), Decimal("7.5"), max_active=0)
    with pytest.raises(InsufficientCredits, match=r"costs 3 credits but the key has 2\.5 available"):
        async with sql.transaction(db) as statements:
            await ledger.open_task(statements, task("task_b", key_id), Decimal(3), max_active=0)
    async with sql.transaction(db) as statements:
        settle = f"UPDATE tasks SET state = 'success', cost = {ledger.SETTLED_COST} WHERE id = 'task_a' "  # noqa: S608
        found = await statements.row(settle + sql.returning_sql(Task), {"charge": to_micros(Decimal(5))})
        assert found is not None
        finished = sql.from_row(Task, found)
        assert finished.cost == 5 and finished.held == Decimal("7.5")
        await ledger.close_task(statements, finished)
    async with db.session() as session:
        key = await ledger.key(session, key_id)
        kinds = [entry.kind for entry in await ledger.entries(session, key_id)]
    assert (key.credits, key.held) == (Decimal(5), Decimal(0))
    assert kinds == ["release", "settle", "hold", "grant"]
    audit(db)


async def test_grants_and_deductions_never_overdraw(db: Database) -> None:
    key_id = await new_key(db, "1")
    async with db.session() as session, session.begin():
        await ledger.grant(session, key_id, Decimal("0.000001"), "a millionth")
    async with db.session() as session, session.begin():
        with pytest.raises(InsufficientCredits):
            await ledger.deduct(session, key_id, Decimal(2))
    async with db.session() as session, session.begin():
        key = await ledger.deduct(session, key_id, Decimal("1.000001"))
    assert key.credits == 0
    audit(db)


async def test_racing_holds_on_one_key_take_exactly_the_balance(db: Database) -> None:
    key_id = await new_key(db, "20")

    async def hold(index: int) -> bool:
        try:
            async with sql.transaction(db) as statements:
                await ledger.open_task(statements, task(f"task_{index}", key_id), Decimal(1), max_active=0)
        except InsufficientCredits:
            return False
        return True

    results = await asyncio.gather(*(hold(i) for i in range(40)))
    assert results.count(True) == 20
    async with db.session() as session:
        key = await ledger.key(session, key_id)
    assert (key.credits, key.held) == (Decimal(20), Decimal(20))
    audit(db)


async def test_racing_tasks_respect_the_active_limit(db: Database) -> None:
    key_id = await new_key(db, "100")

    async def start(index: int) -> bool:
        try:
            async with sql.transaction(db) as statements:
                await ledger.open_task(statements, task(f"task_{index}", key_id), Decimal(1), max_active=3)
        except Conflict:
            return False
        return True

    assert (await asyncio.gather(*(start(i) for i in range(12)))).count(True) == 3
    audit(db)
