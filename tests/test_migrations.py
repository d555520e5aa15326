"""The schema's head revision as the server knows it, and migrating an up-to-date database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from imagegate.stores import db
from imagegate.stores.db import SCHEMA_HEAD, migrate, prepare, schema_revision
from imagegate.stores.faults import NotMigrated


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
