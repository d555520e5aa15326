"""Credits that stay exact under concurrency and faults (SPEC §1 Credits, §7).

A key row caches its `credits` (the balance) and `held` (reserved by unfinished tasks); every change
to either is one conditional UPDATE plus a LedgerEntry in the caller's transaction, so the ledger
always sums to the cache. The conditions keep `credits - held >= 0`: a hold or a deduction that would
break it is refused, and a settlement never charges more than its task held, so no balance goes
negative. The UPDATE also locks the key's row (PostgreSQL) or the database (SQLite) until commit,
which serialises the active-task count that follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import ColumnElement, func, literal, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from imagegate.core.pricing import credits_text
from imagegate.errors import BadRequest, Conflict, InsufficientCredits, NotFound
from imagegate.stores.db import ApiKey, Credits, LedgerEntry, Task, from_micros, to_micros
from imagegate.stores.sql import Sql, insert_sql, row_values

ACTIVE_STATES = ("waiting", "running")
MAX_CREDITS = Decimal(10) ** 12
"""The most credits one balance or one movement may hold: 10^12 credits are 10^18 millionths, which the
signed 64-bit integers they are stored as (up to 2^63 - 1, about 9.2 × 10^18) hold exactly."""


class Kind(StrEnum):
    GRANT = "grant"
    DEDUCT = "deduct"
    HOLD = "hold"
    SETTLE = "settle"
    RELEASE = "release"


def _credits(value: Decimal) -> ColumnElement[Decimal]:
    return literal(value, Credits())


def _available() -> ColumnElement[Decimal]:
    return ApiKey.credits - ApiKey.held


def check_amount(amount: Decimal, param: str = "amount") -> None:
    """BadRequest naming `param` unless `amount` is a positive number of credits that storage holds
    exactly: finite, at most MAX_CREDITS, at most 6 decimal places."""
    if not amount.is_finite() or amount <= 0:
        raise BadRequest(f"Invalid '{param}': {amount}; it must be a positive number of credits.", param=param)
    if amount > MAX_CREDITS:
        raise BadRequest(
            f"Invalid '{param}': {amount:.6g} is more than the {credits_text(MAX_CREDITS)} credits a balance may hold.",
            param=param,
        )
    if amount.as_tuple().exponent < -6:  # type: ignore[operator]
        raise BadRequest(f"Invalid '{param}': {amount}; credits have at most 6 decimal places.", param=param)


async def key(session: AsyncSession, key_id: str) -> ApiKey:
    """The key row as the database has it now; NotFound when there is none."""
    row = await session.get(ApiKey, key_id, populate_existing=True)
    if row is None:
        raise NotFound(f"No key with id '{key_id}'.", param="key_id")
    return row


_HOLD = "UPDATE api_keys SET held = held + :price WHERE id = :key AND credits - held >= :price RETURNING id"
_ACTIVE = f"SELECT count(*) FROM tasks WHERE key_id = :key AND state IN {ACTIVE_STATES!r}"  # noqa: S608
_AVAILABLE = "SELECT credits - held FROM api_keys WHERE id = :key"
_SETTLE = "UPDATE api_keys SET credits = credits - :cost, held = held - :held WHERE id = :key"
_INSERT_TASK = insert_sql(Task)
_INSERT_ENTRY = insert_sql(LedgerEntry)


async def open_task(sql: Sql, task: Task, price: Decimal, max_active: int) -> None:
    """Hold `price` for the new `task` and insert the task, in the caller's transaction.

    Raises InsufficientCredits when the key's available balance is below `price`, and Conflict when
    the key already has `max_active` (> 0) waiting or running tasks; the caller's rollback then
    leaves nothing behind.
    """
    if not await sql.rows(_HOLD, {"price": to_micros(price), "key": task.key_id}):
        available = await sql.row(_AVAILABLE, {"key": task.key_id})
        if available is None:
            raise NotFound(f"No key with id '{task.key_id}'.", param="key_id")
        raise InsufficientCredits(
            f"This request costs {credits_text(price)} credits but the key has "
            f"{credits_text(from_micros(available[0]))} available."
        )
    if max_active > 0:
        counted = await sql.row(_ACTIVE, {"key": task.key_id})
        active = counted[0] if counted else 0
        if active >= max_active:
            raise Conflict(
                f"The key already has {active} unfinished tasks, its limit; wait for one to finish.",
            )
    task.held = price
    await sql.run(_INSERT_TASK, row_values(task))
    if price:
        await _entry(sql, task, Kind.HOLD, amount=Decimal(0), held=price)


SETTLED_COST = "CASE WHEN held < :charge THEN held ELSE :charge END"
"""SQL for a finishing task's `cost`, from the parameter `:charge` (stored millionths): the charge,
but never more than the task held."""


async def close_task(sql: Sql, task: Task) -> None:
    """Settle the `cost` of a task just made final (see `SETTLED_COST`) and release the rest of its hold.

    Call once, in the transaction that wrote the final state; `task.held` keeps what it had held.
    """
    cost = task.cost or Decimal(0)
    release = task.held - cost
    if task.held:
        await sql.run(_SETTLE, {"cost": to_micros(cost), "held": to_micros(task.held), "key": task.key_id})
    if cost:
        await _entry(sql, task, Kind.SETTLE, amount=-cost, held=-cost)
    if release:
        await _entry(sql, task, Kind.RELEASE, amount=Decimal(0), held=-release)


async def _entry(sql: Sql, task: Task, kind: Kind, *, amount: Decimal, held: Decimal) -> None:
    entry = LedgerEntry(key_id=task.key_id, task_id=task.id, kind=kind, amount=amount, held=held, note="")
    await sql.run(_INSERT_ENTRY, row_values(entry))


async def grant(
    session: AsyncSession, key_id: str, amount: Decimal, note: str = "", *, param: str = "amount"
) -> ApiKey:
    """Add `amount` (> 0) to the key's balance; returns the key as it now stands. BadRequest naming
    `param` for an amount storage cannot hold, or one that would take the balance past MAX_CREDITS."""
    check_amount(amount, param)
    changed = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.credits <= _credits(MAX_CREDITS - amount))
        .values(credits=ApiKey.credits + _credits(amount))
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        row = await key(session, key_id)
        raise BadRequest(
            f"Invalid '{param}': the key's balance of {credits_text(row.credits)} credits plus "
            f"{credits_text(amount)} would pass the {credits_text(MAX_CREDITS)} a balance may hold.",
            param=param,
        )
    session.add(LedgerEntry(key_id=key_id, kind=Kind.GRANT, amount=amount, held=0, note=note))
    return await key(session, key_id)


async def deduct(session: AsyncSession, key_id: str, amount: Decimal, note: str = "") -> ApiKey:
    """Take `amount` (> 0) from the key's available balance; InsufficientCredits when it has less."""
    check_amount(amount)
    changed = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, _available() >= _credits(amount))
        .values(credits=ApiKey.credits - _credits(amount))
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        row = await key(session, key_id)
        raise InsufficientCredits(
            f"Cannot deduct {credits_text(amount)} credits: the key has {credits_text(row.credits - row.held)} available."
        )
    session.add(LedgerEntry(key_id=key_id, kind=Kind.DEDUCT, amount=-amount, held=0, note=note))
    return await key(session, key_id)


@dataclass(frozen=True)
class Totals:
    """A key's ledger summed: `balance` must equal the key's credits and `held` its held credits."""

    balance: Decimal
    held: Decimal


async def totals(session: AsyncSession, key_id: str) -> Totals:
    """The sums of the key's ledger rows (an audit of the cached balance)."""
    query = select(_sum(LedgerEntry.amount), _sum(LedgerEntry.held)).where(LedgerEntry.key_id == key_id)
    amount, held = (await session.execute(query)).one()
    return Totals(amount, held)


def _sum(column: InstrumentedAttribute[Decimal]) -> ColumnElement[Decimal]:
    return type_coerce(func.coalesce(func.sum(column), 0), Credits())


async def entries(
    session: AsyncSession, key_id: str, *, limit: int = 100, before: int | None = None
) -> list[LedgerEntry]:
    """The key's ledger rows, newest first; `before` (a row id) pages back."""
    query = select(LedgerEntry).where(LedgerEntry.key_id == key_id)
    if before is not None:
        query = query.where(LedgerEntry.id < before)
    return list(await session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit)))


async def open_holds(session: AsyncSession, key_id: str) -> list[Task]:
    """The key's unfinished tasks that hold credits."""
    holding = (Task.key_id == key_id, Task.state.in_(ACTIVE_STATES), Task.held > _credits(Decimal(0)))
    query = select(Task).where(*holding).order_by(Task.created_at)
    return list(await session.scalars(query))
