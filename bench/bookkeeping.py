"""The bookkeeping of (c) alone, called in-process on SQLite: for one paid sync request, its key's
authentication, its task row with the credit hold, and its success with a file row and the
settlement, as the server does them (keys.authenticate, ledger.open_task, TaskRecords.finish);
divided by one read of the key (the least a request asks of the database). No HTTP, no engine, so
the figure holds still on a noisy machine where (c) does not.

    python -m bench bookkeeping
"""

from __future__ import annotations

import asyncio
import statistics
import time
from decimal import Decimal
from pathlib import Path

from imagegate.core.request import Background, Delivery, OutputFormat, Quality, Size
from imagegate.service.records import Delivered, Outcome, TaskRecords
from imagegate.stores import keys, ledger, sql
from imagegate.stores.db import Database, StoredFile, Task, migrate

ROUNDS = 500
OWNER = "bench"
PRICE = Decimal("0.02")


def outcome(task_id: str) -> Outcome:
    """A one-image success at PRICE, as a tiny edit's."""
    return Outcome(
        task_id=task_id,
        engine="classic",
        created=0,
        images=[Delivered(f"f-{task_id}", None, "")],
        size=Size(256, 256),
        quality=Quality.AUTO,
        output_format=OutputFormat.PNG,
        background=Background.OPAQUE,
        delivery=Delivery.URL,
        usage={},
        price=PRICE,
        failures=[],
    )


async def one_request(db: Database, records: TaskRecords, raw: str, n: int) -> None:
    async with sql.read(db) as statements:
        key = await keys.authenticate(statements, raw)
    task = Task(
        id=f"t-{n}",
        key_id=key.id,
        model="dall-e-2",
        kind="edit",
        dialect="openai",
        request={"prompt": "invert"},
        wire={},
        state="running",
        mode="sync",
        lease_owner=OWNER,
        lease_until=2**62,
    )
    async with sql.transaction(db) as statements:
        await ledger.open_task(statements, task, PRICE, 0)
    file = StoredFile(
        id=f"f-{n}",
        task_id=task.id,
        key_id=key.id,
        ext="png",
        content_type="image/png",
        bytes=1,
        width=256,
        height=256,
    )
    assert await records.finish(task.id, outcome=outcome(task.id), files=[file])


async def rounds(db: Database) -> tuple[float, float]:
    async with db.session() as session, session.begin():
        made = await keys.create_key(session, credits=Decimal(1_000_000))
    raw = made.raw
    records = TaskRecords(db, OWNER)
    paid, read = [], []
    for n in range(ROUNDS):
        start = time.perf_counter()
        await one_request(db, records, raw, n)
        middle = time.perf_counter()
        async with sql.read(db) as statements:
            await keys.authenticate(statements, raw)
        paid.append(middle - start)
        read.append(time.perf_counter() - middle)
    return statistics.median(paid[50:]), statistics.median(read[50:])


def bookkeeping(tmp: Path) -> str:
    """The line of figure (c'): the in-process bookkeeping ÷ one key read."""
    url = f"sqlite:///{tmp / 'bookkeeping.db'}"
    migrate(url)

    async def measured() -> tuple[float, float]:
        db = Database(url)
        try:
            return await rounds(db)
        finally:
            await db.aclose()

    paid, read = asyncio.run(measured())
    return (
        f"(c') bookkeeping in-process, SQLite (authenticate, open the task with its hold, finish with a file and "
        f"the settlement): {paid * 1000:.2f} ms / one key read {read * 1000:.2f} ms = {paid / read:.2f}x"
    )
