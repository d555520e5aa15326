"""Health that tells the truth (issue 17): liveness and readiness apart, each check named with its
error; `serve` and `worker` refuse to start on a missing bucket or an unmigrated database; a storage
failure during a request is a 503 naming storage; operator errors in the CLI are one line, exit 2."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from imagegate.config import load_config
from imagegate.errors import StorageUnavailable
from imagegate.service import readiness
from imagegate.stores.blobs import S3_PROBE_TIMEOUT_S, S3BlobStore
from imagegate.stores.db import SCHEMA_HEAD, Database
from imagegate.stores.faults import explain, redacted
from tests.conftest import POSTGRES_ADMIN_URL, audit_ledgers, free_port, invoke_cli, make_image, open_api, run_cli


def one_line_error(stderr: str) -> str:
    """The CLI's error line, asserting it is the only line and no traceback came with it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


async def test_healthz_is_liveness_and_readyz_names_each_check(tmp_path: Path) -> None:
    async with open_api(load_config(data_dir=tmp_path / "d")) as api:
        live = await api.client.get("/healthz")
        assert live.status_code == 200 and live.json()["status"] == "ok"
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        database = body["checks"]["database"]
        assert (
            database["ok"]
            and database["detail"] == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'imagegate.db'}, migration {SCHEMA_HEAD}"
        )
        assert body["checks"]["storage"] == {"ok": True, "detail": f"directory {tmp_path / 'd' / 'files'}"}


async def test_a_missing_bucket_is_not_ready_and_requests_get_a_503_naming_storage(
    s3_bucket: str, tmp_path: Path
) -> None:
    config = load_config(data_dir=tmp_path / "d", storage={"url": "s3://no-such-bucket/x"})
    async with open_api(config) as api:
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        storage = ready.json()["checks"]["storage"]
        assert not storage["ok"] and "'no-such-bucket'" in storage["detail"] and "does not exist" in storage["detail"]
        assert ready.json()["checks"]["database"]["ok"], "the checks are named apart"

        files = [("image", ("a.png", make_image(64, 64), "image/png"))]
        edit = await api.client.post("/v1/images/edits", headers=api.auth, data={"prompt": "sepia"}, files=files)
        assert edit.status_code == 503, edit.text
        error = edit.json()["error"]
        assert error["code"] == "storage_unavailable" and "storage" in error["message"]
        assert "Traceback" not in edit.text and "no-such-bucket" not in edit.text

        usage = (await api.client.get("/v1/usage", headers=api.auth)).json()
        assert (usage["balance"], usage["held"]) == ("1000", "0"), "nothing charged, nothing left held"
        assert usage["tasks"][0]["state"] == "fail" and usage["tasks"][0]["error"]["code"] == "storage_unavailable"
    audit_ledgers(tmp_path / "d" / "imagegate.db")


async def test_a_database_that_is_not_migrated_is_not_ready(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        check = await readiness.database(db)
    finally:
        await db.aclose()
    assert not check.ok and "not migrated" in check.detail and "imagegate migrate" in check.detail


async def test_an_unreachable_database_is_named_with_its_error() -> None:
    db = Database(f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
    try:
        check = await readiness.database(db)
    finally:
        await db.aclose()
    assert not check.ok and "Connection refused" in check.detail


def test_serve_and_worker_refuse_an_unmigrated_database_in_one_line(postgres_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path), "IMAGEGATE_DATABASE_URL": postgres_url}
    for command in ("serve", "worker"):
        done = (
            run_cli(command, "--port", str(free_port()), env=env) if command == "serve" else run_cli(command, env=env)
        )
        assert done.returncode == 2, done
        assert "not migrated" in one_line_error(done.stderr) and "imagegate migrate" in done.stderr
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_serve_and_worker_refuse_a_missing_bucket_in_one_line(
    s3_bucket: str, postgres_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path), "IMAGEGATE_STORAGE__URL": "s3://no-such-bucket/x"}
    done = run_cli("serve", "--port", str(free_port()), env=env)
    assert done.returncode == 2, done
    line = one_line_error(done.stderr)
    assert "'no-such-bucket'" in line and "does not exist" in line
    assert invoke_cli("migrate", env={**env, "IMAGEGATE_DATABASE_URL": postgres_url}).returncode == 0
    done = run_cli("worker", env={**env, "IMAGEGATE_DATABASE_URL": postgres_url})
    assert done.returncode == 2 and "does not exist" in one_line_error(done.stderr)


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/imagegate_no_such_database",
            'database "imagegate_no_such_database" does not exist',
        ),
        ("postgresql://no_such_role:pw@127.0.0.1:5432/test", 'role "no_such_role" does not exist'),
        ("postgresql://postgres@127.0.0.1:{closed}/test", "Connection refused"),
        ("postgresql://postgres@no-such-host.invalid:5432/test", "no-such-host.invalid"),
    ],
)
def test_cli_commands_turn_database_faults_into_one_line_and_exit_2(
    database: str, expected: str, tmp_path: Path
) -> None:
    url = database.format(closed=closed_port())
    env = {"IMAGEGATE_DATA_DIR": str(tmp_path), "IMAGEGATE_DATABASE_URL": url}
    for command in (["migrate"], ["keys", "list"], ["credits", "grant", "k", "1"]):
        done = invoke_cli(*command, env=env)
        assert done.returncode == 2, (command, done)
        line = one_line_error(done.stderr)
        assert expected in line and "cannot use the database" in line, line
        assert ":pw@" not in line, "passwords are never printed"


def test_cli_commands_name_a_missing_config_file_in_one_line(tmp_path: Path) -> None:
    done = invoke_cli("keys", "list", "--config", str(tmp_path / "nope.toml"), env={})
    assert done.returncode == 2 and "does not exist" in one_line_error(done.stderr)


def test_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    done = invoke_cli("keys", "create", "--credits", "1", env={"IMAGEGATE_DATA_DIR": str(blocked / "d")})
    assert done.returncode == 2 and str(blocked) in one_line_error(done.stderr)


def test_a_refused_password_is_named_with_what_to_check() -> None:
    # This machine's PostgreSQL trusts loopback, so no real login is refused; the driver's own
    # exception with the message PostgreSQL sends for a wrong password stands in for one.
    refused = psycopg.OperationalError(
        'connection failed: connection to server at "10.0.0.5", port 5432 failed: '
        'FATAL:  password authentication failed for user "imagegate"'
    )
    line = explain(refused)
    assert line is not None and "password authentication failed" in line
    assert "check the user and password in IMAGEGATE_DATABASE_URL" in line and "\n" not in line
    assert redacted("postgresql://imagegate:s3cret@db:5432/x") == "postgresql://imagegate:***@db:5432/x"


def test_passwords_in_the_query_string_are_hidden_too() -> None:
    assert redacted("sqlite+aiosqlite:////var/lib/imagegate/imagegate.db").endswith(
        ":////var/lib/imagegate/imagegate.db"
    )
    hidden = redacted("postgresql://u@db:5432/x?sslmode=require&password=s3cret&application_name=a")
    assert "s3cret" not in hidden and "password=***" in hidden and "sslmode=require" in hidden


def test_a_database_a_newer_release_migrated_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {"IMAGEGATE_DATA_DIR": str(tmp_path)}
    assert invoke_cli("migrate", env=env).returncode == 0
    with sqlite3.connect(tmp_path / "imagegate.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    for command in (["migrate"], ["keys", "list"]):
        done = invoke_cli(*command, env=env)
        assert done.returncode == 2, done
        assert "newer than this version" in one_line_error(done.stderr)


def test_key_commands_do_not_migrate_a_shared_database(postgres_url: str, tmp_path: Path) -> None:
    env = {"IMAGEGATE_DATA_DIR": str(tmp_path), "IMAGEGATE_DATABASE_URL": postgres_url}
    done = invoke_cli("keys", "list", env=env)
    assert done.returncode == 2 and "run `imagegate migrate`" in one_line_error(done.stderr)
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    assert invoke_cli("migrate", env=env).returncode == 0
    assert invoke_cli("keys", "list", env=env).returncode == 0


@pytest.fixture
def hung_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """AWS_* pointing at a loopback port that accepts connections into its backlog and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with silent:
        yield


@pytest.mark.usefixtures("hung_s3")
async def test_a_storage_that_stops_answering_is_not_ready_within_the_checks_time(tmp_path: Path) -> None:
    async with open_api(load_config(data_dir=tmp_path / "d", storage={"url": "s3://hung/x"})) as api:
        started = time.monotonic()
        ready = await api.client.get("/readyz")
        took = time.monotonic() - started
    stopped = time.monotonic() - started
    assert ready.status_code == 503 and took < readiness.CHECK_TIMEOUT_S + 3, took
    assert ready.json()["checks"]["storage"] == {"ok": False, "detail": "no answer within 5 s"}
    # the retention sweep's listing, hung at start, is abandoned: shutdown does not wait out its retries
    assert stopped < took + 3, stopped


@pytest.mark.usefixtures("hung_s3")
async def test_a_probe_of_a_hung_storage_gives_up_after_one_short_attempt() -> None:
    """The thread of a probe `/readyz` abandoned is busy for S3_PROBE_TIMEOUT_S, not the retry schedule
    of ordinary calls (1.5 minutes), so probes of a hung store do not pile up busy threads."""
    store = S3BlobStore("hung", "x")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="cannot write to bucket 'hung'"):
        await store.probe()
    assert time.monotonic() - started < S3_PROBE_TIMEOUT_S + 3


def test_serve_on_a_port_in_use_is_one_line_before_any_key_is_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_cli("serve", "--port", str(port), env={**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "Address already in use" in one_line_error(done.stderr)
    assert "No API key existed" not in done.stdout


async def test_a_database_outage_is_a_503_naming_the_database_and_readyz_says_so(
    postgres_url: str, tmp_path: Path
) -> None:
    name = postgres_url.rsplit("/", 1)[1]
    config = load_config(data_dir=tmp_path / "d", database_url=postgres_url, queue="runner")
    async with open_api(config) as api:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            files = [("image", ("a.png", make_image(64, 64), "image/png"))]
            edit = await api.client.post("/v1/images/edits", headers=api.auth, data={"prompt": "x"}, files=files)
            ready = await api.client.get("/readyz")
        finally:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert edit.status_code == 503 and edit.json()["error"]["code"] == "database_unavailable", edit.text
        assert "Traceback" not in edit.text
        assert (
            ready.status_code == 503
            and "not currently accepting connections" in ready.json()["checks"]["database"]["detail"]
        )
        assert (await api.client.get("/readyz")).status_code == 200, "ready again once the database is back"
