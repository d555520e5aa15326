"""The schema's head revision as the server knows it, and migrating an up-to-date database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from imagegate.stores import db
from imagegate.stores.db import KNOWN_REVISIONS, MIGRATIONS, SCHEMA_HEAD, migrate, prepare, schema_revision
from imagegate.stores.faults import MigrationFailed, NotMigrated


def test_schema_head_is_the_newest_migration() -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(db.__file__).with_name("migrations")))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_HEAD


def test_a_database_is_migrated_once_and_then_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert schema_revision(url) is None
    migrate(url)
    assert schema_revision(url) == SCHEMA_HEAD
    migrate(url)
    assert schema_revision(url) == SCHEMA_HEAD


def test_a_server_preparing_a_new_database_never_holds_alembic(tmp_path: Path) -> None:
    """`prepare` (what `serve` and `worker` run first) migrates a new SQLite database in a child
    process: the server itself, which runs for months, never loads Alembic."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    script = (
        "import sys; from imagegate.stores.db import prepare; prepare(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    assert schema_revision(url) == SCHEMA_HEAD


def test_a_database_newer_than_the_server_is_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    migrate(url)
    with sqlite3.connect(tmp_path / "newer.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (f"{int(SCHEMA_HEAD) + 1:04d}",))
    with pytest.raises(NotMigrated, match="newer than this version knows"):
        prepare(url)


def test_another_programs_database_is_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    migrate(url)
    with sqlite3.connect(tmp_path / "foreign.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'a1b2c3d4e5f6'")
    with pytest.raises(NotMigrated, match="which no imagegate release made"):
        prepare(url)


def test_the_known_revisions_are_the_migrations_own() -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()} == KNOWN_REVISIONS


@pytest.mark.parametrize(
    ("revision", "said"),
    [("0000", "which no imagegate release made"), ("9999", "newer than this version knows")],
)
def test_a_numbered_revision_is_told_apart(tmp_path: Path, revision: str, said: str) -> None:
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    migrate(url)
    with sqlite3.connect(tmp_path / "odd.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    with pytest.raises(NotMigrated, match=said):
        prepare(url)


def at_0006(tmp_path: Path) -> str:
    """A SQLite database at migration 0006, whose upgrade to 0007 fails at its second step (an index
    of that name is already there): the first step, a new column, is done and stays."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0006")
    with sqlite3.connect(tmp_path / "old.db") as connection:
        connection.execute("CREATE INDEX ix_files_live_created ON files (created_at)")
    return url


def test_a_migration_failing_in_its_process_is_told_as_it_failed_and_not_run_again(tmp_path: Path) -> None:
    """Not as the error of a second run over what the first left half-done."""
    url = at_0006(tmp_path)
    with pytest.raises(MigrationFailed, match="index ix_files_live_created already exists"):
        prepare(url)
    assert schema_revision(url) == "0006"


def test_a_migration_whose_process_dies_is_reported_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = at_0006(tmp_path)
    monkeypatch.setattr(db, "migrate", lambda url: os._exit(9))  # in the forked child
    with pytest.raises(MigrationFailed, match=r"ended before it finished \(exit status 9\).*partly migrated"):
        prepare(url)


def test_a_bug_in_the_migration_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"

    def broken(url: str) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(db, "migrate", broken)
    with pytest.raises(RuntimeError, match=r"(?s)in its own process.*Traceback.*ValueError: a bug"):
        prepare(url)
