"""The operator CLI (SPEC §10) as a user runs it: separate processes on one data dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import run_cli


def test_keys_and_credits_round_trip(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    made = run_cli("keys", "create", "--name", "ci", "--credits", "12.5", env=env)
    assert made.returncode == 0, made.stderr
    raw = made.stdout.strip().splitlines()[-1]
    assert raw.startswith("ig-") and len(raw) > 40
    as_json = json.loads(run_cli("keys", "create", "--json", "--admin", env=env).stdout)
    assert set(as_json) >= {"id", "key"}
    listing = run_cli("keys", "list", env=env).stdout
    assert "ci" in listing and raw not in listing and as_json["key"] not in listing
    key_id = next(line.split()[2] for line in made.stdout.splitlines() if line.startswith("created key"))
    granted = run_cli("credits", "grant", key_id, "7.5", env=env)
    assert granted.returncode == 0 and "20 credits" in granted.stdout
    assert run_cli("keys", "revoke", key_id, env=env).returncode == 0
    assert "revoked" in run_cli("keys", "list", env=env).stdout
    missing = run_cli("keys", "revoke", "key_nope", env=env)
    assert missing.returncode == 1 and "No key" in missing.stderr


def test_bad_config_fails_fast_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_image_bytes = 'lots'\n")
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    done = run_cli("keys", "list", "--config", str(bad), env=env)
    assert done.returncode == 2 and "limits.max_image_bytes" in done.stderr


def test_first_start_key_is_printed_once(live_server: object) -> None:
    from tests.conftest import LiveServer

    assert isinstance(live_server, LiveServer)
    log = (live_server.data_dir / "serve.log").read_text()
    assert log.count(live_server.key) == 1
