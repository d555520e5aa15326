"""Infrastructure failures in the operator's words: one line saying what failed and what to do.

The CLI prints these instead of tracebacks (exit status 2) and `/readyz` names them per check. Only
failures of the surroundings are explained — the database, the file storage, files on disk; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Collection
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.exc import DBAPIError, NoSuchModuleError

from imagegate.errors import StorageUnavailable


class NotMigrated(Exception):
    """The database answers but is not at the schema this version needs: `imagegate migrate` fixes an
    older one; one a newer release migrated needs that release (or a restored backup); one at a
    migration no release made (`known`: this version's own) is another program's."""

    def __init__(self, where: str, revision: str | None, needed: str, known: Collection[str]) -> None:
        self.newer = revision is not None and revision.isdigit() and needed.isdigit() and int(revision) > int(needed)
        """Whether a newer release migrated it (which `imagegate migrate` of this one cannot undo)."""
        self.foreign = revision is not None and not self.newer and revision not in known
        """Whether its migration is none imagegate ever made (another program's database)."""
        if self.newer:
            message = (
                f"the database {where} is at migration {revision}, newer than this version knows ({needed}): "
                "run the release that migrated it, or restore a backup from before"
            )
        elif self.foreign:
            message = (
                f"the database {where} is at migration {revision!r}, which no imagegate release made: "
                "point imagegate at its own database"
            )
        else:
            found = f"at migration {revision}" if revision else "not migrated"
            message = f"the database {where} is {found} (this version needs {needed}): run `imagegate migrate`"
        super().__init__(message)


class MigrationFailed(Exception):
    """A migration run in its own process failed for a reason the operator can act on (the message
    says which), or that process died before it finished."""


def redacted(url: str) -> str:
    """`url` without its password, in the user part or the query (`postgresql://user:***@host:5432/db`,
    `...?password=***`)."""
    parts = urlsplit(url)
    if parts.password is None and not _QUERY_PASSWORD.search(parts.query):
        return url  # untouched: a round trip through urlunsplit would drop sqlite:////path's empty host
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(query=query))


_QUERY_PASSWORD = re.compile(r"((?:^|&)(?:password|sslpassword)=)[^&]*", re.I)


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(text.split())


def _database_hint(detail: str) -> str:
    if "database" in detail and "does not exist" in detail:
        return "create it (docs/deploy.md, step 2) or fix IMAGEGATE_DATABASE_URL"
    if ("role" in detail and "does not exist" in detail) or "password authentication failed" in detail:
        return "check the user and password in IMAGEGATE_DATABASE_URL"
    if "permission denied" in detail:
        return "make the user the database's owner (docs/deploy.md, step 2)"
    if "unable to open database file" in detail:
        return "check that the data dir exists and is writable"
    return "is the database running there, and is IMAGEGATE_DATABASE_URL right?"


def explain(exc: BaseException) -> str | None:
    """One line for an expected infrastructure failure (`exc` or what it wraps), else None."""
    if isinstance(exc, StorageUnavailable):
        return exc.message
    if isinstance(exc, NotMigrated | MigrationFailed):
        return str(exc)
    if isinstance(exc, NoSuchModuleError):
        return f"unsupported database URL: {one_line(str(exc))}"
    driver = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(driver, sqlite3.Error) or type(driver).__module__.split(".")[0] == "psycopg":
        detail = one_line(str(driver))
        return f"cannot use the database: {detail} ({_database_hint(detail)})"
    if type(exc).__module__.startswith(("botocore", "boto3")):
        return f"file storage: {one_line(str(exc))}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return None
