"""The schema's head revision as the server knows it, and migrating an up-to-date database."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from imagegate.stores import db
from imagegate.stores.db import SCHEMA_HEAD, migrate, schema_revision


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
