"""Readiness: whether this process can do its work now, each check named with its error.

`/readyz` on an API node (database, storage) and on a worker's metrics port (database, storage,
queue). Channels are reported beside the checks but never make a process unready: a provider's
outage is every node's, and a balancer that took every node out would turn it into a total one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from imagegate import __version__
from imagegate.service.router import Channel
from imagegate.stores.blobs import BlobStore
from imagegate.stores.db import KNOWN_REVISIONS, SCHEMA_HEAD, SCHEMA_REVISION_SQL, Database
from imagegate.stores.faults import NotMigrated, explain, one_line, redacted

CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One named check: passed or not, and in either case what it found."""

    name: str
    ok: bool
    detail: str


async def _checked(name: str, probe: Callable[[], Awaitable[str]]) -> Check:
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            return Check(name, True, await probe())
    except TimeoutError:
        return Check(name, False, f"no answer within {CHECK_TIMEOUT_S:g} s")
    except Exception as exc:  # every failure is the check's answer, named
        return Check(name, False, explain(exc) or one_line(f"{type(exc).__name__}: {exc}"))


async def database(db: Database) -> Check:
    """The database answers and is at the newest migration (`imagegate migrate`)."""

    async def probe() -> str:
        async with db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            try:
                revision = (await connection.execute(text(SCHEMA_REVISION_SQL))).scalar()
            except DBAPIError:
                revision = None
        if revision != SCHEMA_HEAD:
            raise NotMigrated(redacted(db.url), revision, SCHEMA_HEAD, KNOWN_REVISIONS)
        return f"{redacted(db.url)}, migration {revision}"

    return await _checked("database", probe)


async def storage(blobs: BlobStore) -> Check:
    """The file storage takes a write (the bucket exists, the credentials may write), within
    CHECK_TIMEOUT_S (a store that hangs is abandoned, not waited for)."""

    async def probe() -> str:
        await blobs.probe()
        return blobs.describe()

    return await _checked("storage", probe)


async def queue(connector_query: Callable[[], Awaitable[Any]]) -> Check:
    """The job queue answers (a worker's procrastinate connection)."""

    async def probe() -> str:
        await connector_query()
        return "procrastinate"

    return await _checked("queue", probe)


def channels(live: list[Channel]) -> dict[str, dict[str, Any]]:
    """Each channel's circuit (`closed`, `open`, `half-open`) and, for local models, their state."""
    reports = {}
    for channel in live:
        report: dict[str, Any] = {"engine": channel.settings.engine, "circuit": channel.breaker.state}
        health = getattr(channel.engine, "health", None)
        if health is not None:
            report.update(health())
        reports[channel.settings.name] = report
    return reports


async def essentials(db: Database, blobs: BlobStore) -> list[Check]:
    """The checks every process makes: `database` and `storage`."""
    return [await database(db), await storage(blobs)]


def alive() -> dict[str, Any]:
    """The liveness answer (`/healthz`): the process answers, nothing else is checked."""
    return {"status": "ok", "version": __version__}


def answer(checks: list[Check], live: list[Channel]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of `/readyz`: 200 when every check passed, else 503."""
    ready = all(check.ok for check in checks)
    body: dict[str, Any] = {
        "status": "ready" if ready else "not ready",
        "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in checks},
    }
    if live:
        body["channels"] = channels(live)
    body["version"] = __version__
    return 200 if ready else 503, body
