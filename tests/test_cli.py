"""The operator CLI (SPEC §10) on one data dir: the first `keys create` as a separate process, as a user
runs it, the other commands in-process through typer's runner (`invoke_cli`); `serve` as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port, invoke_cli, run_cli


def test_keys_and_credits_round_trip(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    made = run_cli("keys", "create", "--name", "ci", "--credits", "12.5", env=env)
    assert made.returncode == 0, made.stderr
    raw = made.stdout.strip().splitlines()[-1]
    assert raw.startswith("ig-") and len(raw) > 40
    as_json = json.loads(invoke_cli("keys", "create", "--json", "--admin", env=env).stdout)
    assert set(as_json) >= {"id", "key"}
    listing = invoke_cli("keys", "list", env=env).stdout
    assert "ci" in listing and raw not in listing and as_json["key"] not in listing
    key_id = next(line.split()[2] for line in made.stdout.splitlines() if line.startswith("created key"))
    granted = invoke_cli("credits", "grant", key_id, "7.5", env=env)
    assert granted.returncode == 0 and "20 credits" in granted.stdout
    assert invoke_cli("keys", "revoke", key_id, env=env).returncode == 0
    assert "revoked" in invoke_cli("keys", "list", env=env).stdout
    missing = invoke_cli("keys", "revoke", "key_nope", env=env)
    assert missing.returncode == 1 and "No key" in missing.stderr


def test_bad_config_fails_fast_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_image_bytes = 'lots'\n")
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    done = invoke_cli("keys", "list", "--config", str(bad), env=env)
    assert done.returncode == 2 and "limits.max_image_bytes" in done.stderr


def test_first_start_key_is_printed_once(live_server: LiveServer) -> None:
    log = (live_server.data_dir / "serve.log").read_text()
    assert log.count(live_server.key) == 1


def test_a_key_made_without_credits_says_it_has_none(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    empty = invoke_cli("keys", "create", "--name", "empty", env=env)
    assert empty.returncode == 0 and empty.stdout.strip().splitlines()[-1].startswith("ig-")
    key_id = empty.stdout.split()[2]
    assert f"note: key {key_id} has 0 credits" in empty.stderr
    assert f"imagegate credits grant {key_id} 100" in empty.stderr
    funded = invoke_cli("keys", "create", "--credits", "5", env=env)
    assert funded.returncode == 0 and "0 credits" not in funded.stderr


def test_first_start_prints_the_webhook_secret_an_admin_key_and_the_console(live_server: LiveServer) -> None:
    lines = (live_server.data_dir / "serve.log").read_text().splitlines()
    at = lines.index(live_server.key)
    assert "shown only once" in lines[at - 1]
    assert lines[at + 1].startswith("Its webhook signing secret (for callbacks): whsec_")
    assert "An admin key was made too" in lines[at + 2]
    admin = lines[at + 3]
    listed = httpx.get(f"{live_server.base}/admin/keys", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200, "the printed admin key opens the admin API"
    refused = httpx.get(f"{live_server.base}/admin/keys", headers={"Authorization": f"Bearer {live_server.key}"})
    assert refused.status_code == 403, "the first key is not an admin key"
    assert lines[at + 4] == f"The web console: {live_server.base}/ (sign in with an API key)"


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
@pytest.mark.skipif(not (REPO / ".venv" / ".installed").exists(), reason="make serve runs from the .venv make builds")
def test_make_serve_takes_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path / "d")}
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "serve", f"PORT={port}", "HOST=127.0.0.1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("make serve PORT=... did not answer on that port")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    assert f"--port {port}" in output and "shown only once" in output
