"""Plain SQL on the request's hot path: a transaction as a few statements, without the ORM.

Every request's bookkeeping (its key, its task row, its hold, its settlement) went through SQLAlchemy
ORM sessions on aiosqlite, at about 1.5 ms of CPU per statement: 13-15 ms per paid request, most of
what the gateway spent (BENCHMARKS.md, issue 14). Here the same statements are written once as SQL
with `:name` parameters and handed straight to the driver: on SQLite in as few hops to aiosqlite's
thread as the statements allow (the pool's one connection, taken in turn like every other use of it),
on PostgreSQL psycopg through SQLAlchemy's `exec_driver_sql`. Rows are converted with the models' own
column types (`row_values` and `from_row`), so a row written here reads back the same through the ORM
and back.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache
from typing import Any, TypeVar

import anyio
import orjson
from sqlalchemy import JSON, Boolean, Column, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegate.stores.db import LEFT_CLEAN, Base, Credits, Database, from_micros, to_micros

M = TypeVar("M", bound=Base)
Params = Mapping[str, Any]


class Sql:
    """Statements in one connection's transaction (or outside any, for a `read`).

    On SQLite every call to the driver is a hop to aiosqlite's thread and back (~0.1 ms of waking
    threads), so statements whose rows nobody needs (`run`) wait and go with the next statement that
    returns rows, or with the commit, in one hop: a paid request's bookkeeping takes 6 hops, not 16.
    """

    def __init__(self, connection: AsyncConnection, driver: Any, sqlite: bool, pool_info: dict[Any, Any]) -> None:
        self.connection = connection
        self.driver_connection = driver
        """The driver's own connection (aiosqlite or psycopg), for libraries that take one (procrastinate)."""
        self.sqlite = sqlite
        self._pool_info = pool_info
        self._waiting: list[tuple[str, Params]] = []

    async def rows(self, sql: str, params: Params | None = None) -> list[Sequence[Any]]:
        """The rows `sql` returns (none for a statement without RETURNING), after the statements that
        `run` left waiting."""
        if self.sqlite:
            return await self._sqlite(sql, params or {}, commit=False)
        result = await self.connection.exec_driver_sql(_pyformat(sql), dict(params or {}))
        return list(result.fetchall()) if result.returns_rows else []

    async def row(self, sql: str, params: Params | None = None) -> Sequence[Any] | None:
        """The first row `sql` returns, or None."""
        found = await self.rows(sql, params)
        return found[0] if found else None

    async def run(self, sql: str, params: Params | None = None) -> None:
        """Execute `sql`, whose rows are not needed. On SQLite it waits for the next `rows` or the
        commit and goes in the same hop; an error it raises (a violated constraint) surfaces there,
        and the transaction is rolled back all the same."""
        if self.sqlite:
            self._waiting.append((sql, params or {}))
        else:
            await self.rows(sql, params)

    async def _sqlite(self, sql: str | None, params: Params, *, commit: bool) -> list[Sequence[Any]]:
        waiting, self._waiting = self._waiting, []
        # aiosqlite runs each call in its own thread; _execute is how its public methods do it.
        return list(
            await self.driver_connection._execute(
                _in_one_go, self.driver_connection._conn, waiting, sql, params, commit
            )
        )

    async def _commit(self) -> None:
        if self.sqlite:
            await self._sqlite(None, {}, commit=True)

    async def _rollback(self) -> None:
        """Roll back, after whatever a cancelled call left queued in aiosqlite's thread (so never
        judged by `in_transaction`, which does not know of it yet)."""
        self._waiting = []
        if self.sqlite:
            await self.driver_connection.rollback()

    def _left_clean(self) -> None:
        """Tell the pool this connection holds no transaction and nothing queued (it skips its rollback)."""
        self._pool_info[LEFT_CLEAN] = True


def _in_one_go(
    connection: sqlite3.Connection, waiting: list[tuple[str, Params]], sql: str | None, params: Params, commit: bool
) -> list[Sequence[Any]]:
    """In SQLite's thread: the `waiting` statements, then `sql` (its rows), then COMMIT if `commit`."""
    for statement, arguments in waiting:
        connection.execute(statement, arguments)
    found = connection.execute(sql, params).fetchall() if sql is not None else []
    if commit:
        connection.commit()
    return found


@asynccontextmanager
async def transaction(db: Database) -> AsyncIterator[Sql]:
    """A write transaction: committed when the block ends, rolled back when it (or the commit) raises.
    On SQLite it takes the write lock at once (BEGIN IMMEDIATE, sent with the first statement), so no
    statement in it can meet a busy database."""
    async with _connection(db) as connection:
        sql = await _statements(connection)
        if not sql.sqlite:
            async with connection.begin():
                yield sql
            return
        await sql.run("BEGIN IMMEDIATE")
        try:
            yield sql
            await sql._commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await sql._rollback()
                sql._left_clean()
            raise
        sql._left_clean()


@asynccontextmanager
async def read(db: Database) -> AsyncIterator[Sql]:
    """Statements that only read (each sees the database as it is committed when it runs)."""
    async with _connection(db) as connection:
        sql = await _statements(connection)
        yield sql
        if sql.sqlite and not sql.driver_connection.in_transaction:  # nothing is in flight here
            sql._left_clean()


@asynccontextmanager
async def _connection(db: Database) -> AsyncIterator[AsyncConnection]:
    """A connection from `db`'s pool, back in the pool when the block ends, even if cancelled. Unlike
    `async with db.engine.connect()`, which closes the connection in a task of its own, this holds
    the connection no longer than the block: with SQLite's one connection taken in turn, each such
    task kept every waiting request waiting one more pass of a busy event loop. The close is shielded
    from anyio's cancellation; a bare asyncio `task.cancel()` landing during it (a forced shutdown)
    makes SQLAlchemy discard the connection instead of reusing it, which loses nothing."""
    connection = await db.engine.connect().start()
    try:
        yield connection
    finally:
        with anyio.CancelScope(shield=True):
            await connection.close()


async def _statements(connection: AsyncConnection) -> Sql:
    raw = await connection.get_raw_connection()
    return Sql(connection, raw.driver_connection, connection.dialect.name == "sqlite", raw.info)


@cache
def _pyformat(sql: str) -> str:
    """`sql` with psycopg's `%(name)s` parameters in place of `:name`."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def columns(model: type[Base]) -> list[str]:
    """The column names of `model`'s table, in its order."""
    return [column.name for column in _table(model).columns]


@cache
def _written(model: type[Base]) -> list[Column[Any]]:
    """The columns an INSERT names: all but an autoincrementing key, which the database numbers."""
    table = _table(model)
    return [column for column in table.columns if column is not table.autoincrement_column]


def select_sql(model: type[Base]) -> str:
    """`SELECT <every column> FROM <table>` (add a WHERE clause); its rows go to `from_row`."""
    return f"SELECT {', '.join(columns(model))} FROM {_table(model).name}"  # noqa: S608 (names from the models)


def returning_sql(model: type[Base]) -> str:
    """`RETURNING <every column>`, for rows that go to `from_row`."""
    return f"RETURNING {', '.join(columns(model))}"


def insert_sql(model: type[Base]) -> str:
    """An INSERT of every column of `model`, its parameters named after them (see `row_values`)."""
    names = [column.name for column in _written(model)]
    values = ", ".join(":" + name for name in names)
    return f"INSERT INTO {_table(model).name} ({', '.join(names)}) VALUES ({values})"  # noqa: S608


def row_values(obj: Base) -> dict[str, Any]:
    """The statement parameters of `obj`'s columns: credits as integer millionths, JSON as text, and
    the column's default where `obj` has none."""
    values: dict[str, Any] = {}
    for column in _written(type(obj)):
        value = getattr(obj, column.key)
        if value is None and column.default is not None and not column.primary_key:
            default = column.default.arg  # type: ignore[attr-defined]
            value = default(None) if callable(default) else default
        values[column.name] = to_db(column.type, value)
    return values


def to_db(kind: Any, value: Any) -> Any:
    """`value` as the driver stores a column of type `kind`."""
    if value is None:
        return None
    if isinstance(kind, Credits):
        return to_micros(value)
    if isinstance(kind, JSON):
        return json_text(value)
    return value


def json_text(value: Any) -> str:
    """`value` as a JSON column stores it."""
    return orjson.dumps(value).decode()


def from_row(model: type[M], row: Sequence[Any]) -> M:
    """A detached `model` instance from a row of `select_sql(model)` (or RETURNING its columns)."""
    values: dict[str, Any] = {}
    for column, value in zip(_table(model).columns, row, strict=True):
        kind = column.type
        if value is not None:
            if isinstance(kind, Credits):
                value = from_micros(value)
            elif isinstance(kind, JSON) and isinstance(value, str | bytes):
                value = orjson.loads(value)
            elif isinstance(kind, Boolean):
                value = bool(value)
        values[column.key] = value
    return model(**values)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table
