"""SQLAlchemy models and the async database handle (SQLite embedded, PostgreSQL distributed).

The schema is owned by the Alembic migrations beside this module; `migrate(url)` brings a
database to the newest revision and is run before the application opens its engine.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.types import TypeDecorator

from imagegate.config import async_database_url
from imagegate.owner_only import private_file
from imagegate.stores.faults import MigrationFailed, NotMigrated, explain, redacted
from imagegate.stores.pool_in_turn import InTurnPool

MICROS = Decimal(1_000_000)
SQLITE_TURN_S = 600.0
"""How long a statement may wait for SQLite's one connection before its request fails."""


def now_ms() -> int:
    """Milliseconds since the epoch: the one clock every stored timestamp uses."""
    return time.time_ns() // 1_000_000


Clock = Callable[[], int]
"""A source of `now_ms` readings; the parts that decide by time (leases, task records, idempotency
expiry) take one, so their tests move time instead of sleeping."""


class Credits(TypeDecorator[Decimal]):
    """Exact decimal credits stored as integer millionths, so SQL sums stay exact on every backend."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        return None if value is None else to_micros(value)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_micros(value)


def to_micros(amount: Decimal | int) -> int:
    """Credits as the integer millionths they are stored as; ValueError past 6 decimal places."""
    scaled = Decimal(amount) * MICROS
    if scaled != scaled.to_integral_value():
        raise ValueError(f"credit amount {amount} has more than 6 decimal places")
    return int(scaled)


def from_micros(stored: int) -> Decimal:
    """Stored millionths as credits."""
    return (Decimal(stored) / MICROS).normalize()


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    credits: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(80), nullable=True)
    held: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    """Credits reserved by unfinished tasks; `credits - held` is what new requests may spend."""
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """The model ids this key may use; None for every model."""
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Requests per minute; None takes the configured default, 0 is unlimited (likewise below)."""
    max_active: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_images: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_key_created", "key_id", "created_at"),
        Index("ix_tasks_state", "state"),
        Index("ix_tasks_queue", "mode", "state", "created_at"),
        Index("ix_tasks_key_state", "key_id", "state"),
    )

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    dialect: Mapped[str] = mapped_column(String(32))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    engine: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    mode: Mapped[str] = mapped_column(String(8), default="sync")
    """`sync` (a client waits on the connection) or `async` (run by the runner, reported by callback/polling)."""
    trace_id: Mapped[str | None] = mapped_column(String(48), nullable=True)
    base_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The public base for result URLs, fixed when the task was created."""
    wire: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The dialect's original request body, where the dialect echoes it (seed 002's `param`)."""
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(48), nullable=True)
    lease_until: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    held: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    """Credits held for this task when it was recorded; reserved while it is unfinished, settled (`cost`) or
    released when it is final."""
    cost: Mapped[Decimal | None] = mapped_column(Credits, nullable=True)
    """Credits charged (settled) for the images it delivered; set when it finishes."""
    images: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Images delivered, once it succeeded."""


class StoredFile(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_live_created", "expired_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), nullable=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    ext: Mapped[str] = mapped_column(String(8))
    content_type: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When its bytes were deleted (`[storage] results_ttl` after it was made); the row stays."""


class WebhookDelivery(Base):
    """One callback message: the same `id` (`webhook-id`) on every attempt until it ends."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_due", "state", "next_at"),)

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    """`pending`, `delivered`, `failed` (retries exhausted) or `stopped` (the receiver answered 410)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LedgerEntry(Base):
    """One movement of a key's credits. `amount` changes the balance, `held` the reserved part:

    grant (+amount), deduct (-amount), hold (+held), settle (-amount, -held), release (-held).
    A key's balance is the sum of its `amount`s and its holds the sum of its `held`s.
    """

    __tablename__ = "ledger"
    __table_args__ = (Index("ix_ledger_key", "key_id", "id"), Index("ix_ledger_task", "task_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    held: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class RateBucket(Base):
    """Requests a key made in one second (`second` since the epoch) and when the last of them came,
    for requests-per-minute limits."""

    __tablename__ = "rate_buckets"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    second: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    last_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class RelayCallback(Base):
    """A provider's callback for a relayed request, until the process waiting on it takes it."""

    __tablename__ = "relay_callbacks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class IdempotentResponse(Base):
    """The first answer to a POST carrying an `Idempotency-Key`, replayed for 24 hours."""

    __tablename__ = "idempotency"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 of the bearer key: keys never share idempotency keys."""
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)


def sync_url(url: str) -> str:
    """The synchronous driver URL for an async one (migrations run synchronously; psycopg 3 does both)."""
    return url.replace("sqlite+aiosqlite", "sqlite")


SCHEMA_REVISION_SQL = "SELECT version_num FROM alembic_version"
SCHEMA_HEAD = "0007"
"""The newest migration's revision (a test holds it to the migrations directory)."""
MIGRATIONS = Path(__file__).with_name("migrations")
KNOWN_REVISIONS = frozenset(path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))
"""Every revision this version's migrations make (read from their file names, without Alembic)."""


def schema_revision(url: str) -> str | None:
    """The migration the database at (sync) `url` is at; None when it has none yet. A database that
    cannot be reached raises (sqlalchemy's OperationalError)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            try:
                return connection.execute(text(SCHEMA_REVISION_SQL)).scalar()
            except DBAPIError:
                return None
    finally:
        engine.dispose()


def prepare(url: str) -> None:
    """Make the database at `url` usable by this version, or raise why not: SQLite (one process's own)
    is migrated here; PostgreSQL, which every node shares, must already be (`imagegate migrate`, once
    per release: a node of a new release must not change the schema under the old ones).

    A SQLite migration runs in a forked child where the system can fork, so that a server started on a
    new or older database does not hold Alembic for the rest of its life (about 20 MB, as much as a
    server started on a migrated one saves). The child's failure is raised here as it is explained to
    an operator (MigrationFailed), or with its traceback; it is never tried again over a schema the
    child may have left half-migrated."""
    if not async_database_url(url).startswith("sqlite"):
        require_migrated(url)
        return
    on_disk = ":memory:" not in url and not url.endswith(":///")
    if on_disk and "fork" in multiprocessing.get_all_start_methods():
        revision = schema_revision(sync_url(url))
        if revision != SCHEMA_HEAD:
            _refuse_unknown(url, revision)
            _migrate_in_child(url)
    migrate(url)


def _migrate_in_child(url: str) -> None:
    context = multiprocessing.get_context("fork")
    reports, report = context.Pipe(duplex=False)
    child = context.Process(target=_migrate_reporting, args=(url, report))
    child.start()
    report.close()
    try:
        outcome: tuple[bool, str] | None = reports.recv()
    except EOFError:  # it ended without a word
        outcome = None
    finally:
        child.join()
        reports.close()
    if outcome is None:
        raise MigrationFailed(
            f"the migration of {redacted(async_database_url(url))} ended before it finished (exit status "
            f"{child.exitcode}); the database may be partly migrated: restore it from a backup"
        )
    succeeded, failure = outcome
    if succeeded:
        return
    if failure.startswith(UNEXPLAINED):
        raise RuntimeError(f"the migration failed in its own process:\n{failure.removeprefix(UNEXPLAINED)}")
    raise MigrationFailed(failure)


UNEXPLAINED = "\0"
"""Marks a child's failure that is a bug (sent with its traceback), not an operator's fault."""


def _migrate_reporting(url: str, report: Connection) -> None:
    """`migrate` in the child: sends (True, "") or (False, the failure in an operator's words, else
    UNEXPLAINED and its traceback). Interrupted (Ctrl-C reaches the parent as well), it ends silently."""
    try:
        migrate(url)
    except Exception as exc:
        report.send((False, explain(exc) or UNEXPLAINED + "".join(traceback.format_exception(exc))))
    except BaseException:
        os._exit(1)
    else:
        report.send((True, ""))


def require_migrated(url: str) -> None:
    """NotMigrated unless the database at `url` is at SCHEMA_HEAD (raises if it cannot be reached)."""
    url = async_database_url(url)
    revision = schema_revision(sync_url(url))
    if revision != SCHEMA_HEAD:
        raise NotMigrated(redacted(url), revision, SCHEMA_HEAD, KNOWN_REVISIONS)


def migrate(url: str) -> None:
    """Upgrade the database at `url` to the newest migration (idempotent). A SQLite file is made
    owner-only (0600) first; SQLite gives its journal files the same mode. A database already at
    SCHEMA_HEAD is left alone without loading Alembic (tens of MB a server need not hold)."""
    url = async_database_url(url)
    if url.startswith("sqlite") and ":memory:" not in url:
        private_file(Path(url.split(":///", 1)[1]))
    revision = schema_revision(sync_url(url))
    if revision == SCHEMA_HEAD:
        return
    _refuse_unknown(url, revision)
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    command.upgrade(cfg, "head")


def _refuse_unknown(url: str, revision: str | None) -> None:
    """NotMigrated when `revision` is one no migration of this version leads from."""
    unknown = NotMigrated(redacted(async_database_url(url)), revision, SCHEMA_HEAD, KNOWN_REVISIONS)
    if unknown.newer or unknown.foreign:
        raise unknown


class Database:
    """The async engine and session factory for one database URL."""

    def __init__(self, url: str) -> None:
        url = async_database_url(url)
        self.url = url
        if url.startswith("sqlite"):
            # SQLite has one write lock, and its busy handler hands it out unfairly (sleeping waiters
            # lose to whoever asks next): with a pool of connections some requests waited 6x the
            # median, and past busy_timeout failed. One connection, taken in turn (FIFO), makes every
            # statement wait its turn in this process instead (BENCHMARKS.md, issue 14).
            self.engine: AsyncEngine = create_async_engine(
                url,
                poolclass=InTurnPool,
                pool_size=1,
                max_overflow=0,
                pool_timeout=SQLITE_TURN_S,
                pool_reset_on_return=None,
            )
            event.listen(self.engine.sync_engine, "reset", _reset_unless_left_clean)
        else:
            self.engine = create_async_engine(
                url, poolclass=InTurnPool, pool_size=10, max_overflow=40, pool_pre_ping=True
            )
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)

    async def aclose(self) -> None:
        await self.engine.dispose()


LEFT_CLEAN = "imagegate_left_clean"
"""Set in a SQLite connection's pool record by stores/sql.py when its use ended with no transaction
open and nothing queued in aiosqlite's thread."""


def _reset_unless_left_clean(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
    """SQLAlchemy's rollback of a connection coming back to the pool, skipped when stores/sql.py says
    its use left it clean: otherwise one more hop to aiosqlite's thread after every use."""
    left_clean = record.info.pop(LEFT_CLEAN, False)
    if state.asyncio_safe and not state.transaction_was_reset and not left_clean:
        dbapi_connection.rollback()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
