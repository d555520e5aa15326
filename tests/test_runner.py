"""The durable runner on a real SQLite database: exclusive claims, reclaiming dead leases,
failing interrupted sync tasks, and giving up after max_attempts."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from functools import partial

import pytest
from sqlalchemy import event, select, update

from imagegate.config import RunnerSettings, WebhookSettings
from imagegate.service.leases import Leases
from imagegate.service.records import TaskRecords
from imagegate.service.runner import TaskRunner
from imagegate.service.webhooks import WebhookSender
from imagegate.stores import ledger, sql
from imagegate.stores.db import ApiKey, Clock, Database, Task, WebhookDelivery, now_ms
from tests.conftest import Api
from tests.receivers import webhook_receiver
from tests.waiting import FINISHED, wait_for_task_async


@pytest.fixture
async def db(database: Database) -> Database:
    """The contract database (SQLite, then PostgreSQL) with one key, `key_1`."""
    async with database.session() as session, session.begin():
        session.add(ApiKey(id="key_1", name="", key_hash="h", prefix="ig-", webhook_secret=None))
    return database


async def add(db: Database, task_id: str, **fields: object) -> None:
    values: dict[str, object] = {
        "id": task_id,
        "key_id": "key_1",
        "model": "gpt-image-2",
        "kind": "edit",
        "dialect": "jobs",
        "request": {},
        "state": "waiting",
        "mode": "async",
        "attempts": 0,
        "created_at": now_ms(),
    }
    values.update(fields)
    async with db.session() as session, session.begin():
        session.add(Task(**values))


async def get(db: Database, task_id: str) -> Task:
    async with db.session() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    return task


def runner(db: Database, lease_s: float = 60, max_attempts: int = 3, clock: Clock = now_ms) -> TaskRunner:
    settings = RunnerSettings(lease_s=lease_s, max_attempts=max_attempts)
    return TaskRunner(db, None, Leases(db, lease_s, clock), settings)  # type: ignore[arg-type]


async def test_two_runners_never_claim_the_same_task(db: Database) -> None:
    for i in range(30):
        await add(db, f"task_{i:02}", created_at=now_ms() + i)
    a, b = runner(db), runner(db)

    async def drain(r: TaskRunner) -> list[str]:
        won = []
        while (task := await r.claim()) is not None:
            won.append(task.id)
        return won

    first, second = await asyncio.gather(drain(a), drain(b))
    assert sorted(first + second) == [f"task_{i:02}" for i in range(30)]
    assert not set(first) & set(second)
    owners = {(await get(db, t)).lease_owner for t in first}
    assert owners == {a.leases.owner}


async def test_a_dead_lease_is_reclaimed_and_a_live_one_is_not(db: Database) -> None:
    await add(db, "task_dead", state="running", lease_owner="proc_gone", lease_until=now_ms() - 1, attempts=1)
    await add(db, "task_live", state="running", lease_owner="proc_alive", lease_until=now_ms() + 60_000, attempts=1)
    r = runner(db)
    task = await r.claim()
    assert task is not None and task.id == "task_dead" and task.attempts == 2
    assert task.lease_owner == r.leases.owner
    assert await r.claim() is None


def statements_seen(db: Database) -> list[str]:
    """The SQL the engine sends from now on (SQLAlchemy's own statements; on PostgreSQL stores/sql.py's too)."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", note)
    return seen


async def test_a_poll_that_finds_nothing_to_claim_opens_no_write_transaction(db: Database) -> None:
    await add(db, "task_live", state="running", lease_owner="proc_alive", lease_until=now_ms() + 60_000, attempts=1)
    await add(db, "task_sync", mode="sync")
    seen = statements_seen(db)
    r = runner(db)
    assert await r.claim() is None
    assert [s for s in seen if not s.startswith("SELECT 1 FROM tasks")] == []
    await add(db, "task_new")
    claimed = await r.claim()
    assert claimed is not None and claimed.id == "task_new"
    assert any(s.startswith("UPDATE tasks") for s in seen), "the claim itself is seen"


async def test_a_webhook_poll_that_finds_nothing_due_opens_no_write_transaction(db: Database) -> None:
    await add(db, "task_1")
    later = WebhookDelivery(
        id="wh_1", task_id="task_1", key_id="key_1", url="http://127.0.0.1:9/", body=b"{}", next_at=now_ms() + 60_000
    )
    async with db.session() as session, session.begin():
        session.add(later)
    sender = WebhookSender(db, None, WebhookSettings(), [])  # type: ignore[arg-type]  # claims only: sends nothing
    seen = statements_seen(db)
    assert await sender.claim_due() == []
    assert [s for s in seen if not s.startswith("SELECT 1 FROM webhook_deliveries")] == []
    async with db.session() as session, session.begin():
        await session.execute(update(WebhookDelivery).values(next_at=now_ms() - 1))
    assert await sender.claim_due() == ["wh_1"]
    assert any(s.startswith("UPDATE webhook_deliveries") for s in seen), "the claim itself is seen"


async def test_sync_tasks_of_a_dead_process_fail_as_interrupted_and_release_their_hold(db: Database) -> None:
    async with db.session() as session, session.begin():
        await ledger.grant(session, "key_1", Decimal(10))
    task = Task(id="task_sync", key_id="key_1", model="gpt-image-2", kind="edit", dialect="openai", request={})
    task.state, task.mode, task.lease_owner, task.lease_until = "running", "sync", "proc_gone", now_ms() - 1
    async with sql.transaction(db) as statements:
        await ledger.open_task(statements, task, Decimal(6), max_active=0)
    assert await TaskRecords(db, "proc_alive").fail_orphans() == 1
    task = await get(db, "task_sync")
    assert task.state == "fail" and task.error_code == "interrupted" and task.finished_at is not None
    assert task.held == 6 and task.cost == 0, "it keeps what it held, and was charged nothing"
    assert await runner(db).claim() is None, "sync tasks are never re-run"
    async with db.session() as session:
        key = await ledger.key(session, "key_1")
        sums = await ledger.totals(session, "key_1")
    assert (key.credits, key.held) == (Decimal(10), Decimal(0)) == (sums.balance, sums.held)


async def test_lease_renewal_keeps_a_task_from_being_reclaimed(db: Database) -> None:
    await add(db, "task_1")
    now = [now_ms()]

    def clock() -> int:
        return now[0]

    a = runner(db, lease_s=0.3, clock=clock)
    task = await a.claim()
    assert task is not None
    async with a.leases.hold(task.id):
        for _ in range(4):
            now[0] += 100
            await a.leases.renew()
        assert await runner(db, clock=clock).claim() is None, "renewed, the lease outlives its first 300 ms"
    now[0] += 300
    assert await runner(db, clock=clock).claim() is None
    now[0] += 1
    assert (await runner(db, clock=clock).claim()) is not None, "unrenewed, the lease runs out"


async def test_leases_only_renew_what_this_process_owns(db: Database) -> None:
    await add(db, "task_other", state="running", lease_owner="proc_other", lease_until=now_ms() - 1)
    mine = runner(db)
    async with mine.leases.hold("task_other"):
        await mine.leases.renew()
    assert (await get(db, "task_other")).lease_until < now_ms()  # type: ignore[operator]


async def test_a_task_interrupted_max_attempts_times_fails_instead_of_running_again(api: Api) -> None:
    db = Database(api.config.resolved_database_url)
    try:
        async with db.session() as session:
            key_id = (await session.scalars(select(ApiKey.id))).first()
        request = {
            "prompt": "x",
            "model": "gpt-image-2",
            "images": [{"param": "image[0]", "kind": "blob", "blob": "in_gone"}],
        }
        with webhook_receiver() as receiver:
            await add(
                db,
                "task_poison",
                key_id=key_id,
                request=request,
                state="running",
                attempts=3,
                lease_until=now_ms() - 1,
                callback_url=receiver.url,
            )
            task = await wait_for_task_async(
                partial(get, db, "task_poison"), done=lambda task: task.state in FINISHED, what="task_poison to end"
            )
            assert task.state == "fail" and task.error_code == "interrupted" and task.attempts == 4
            (delivery,) = await asyncio.to_thread(receiver.wait_for, 1)
        data = delivery.json["data"]
        assert data["taskId"] == "task_poison" and data["state"] == "fail" and data["failCode"] == "interrupted"
    finally:
        await db.aclose()
