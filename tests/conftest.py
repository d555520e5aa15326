"""Shared fixtures: in-process app with a real SQLite database, loopback HTTP servers, the live server."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import IO, Any
from unittest import mock

import httpx
import psycopg
import pytest
import sqlalchemy
from fastapi import FastAPI
from PIL import Image
from psycopg import sql
from rich.console import Console
from typer.testing import CliRunner

from imagegate import cli, cli_output
from imagegate.app import create_app
from imagegate.config import Config, async_database_url, load_config
from imagegate.engines.base import Engine
from imagegate.stores import keys
from imagegate.stores.db import Database, migrate, sync_url
from tests.loopback import loopback_server

LOOPBACK_ALLOW = "127.0.0.0/8,::1/128"


def make_image(width: int = 640, height: int = 480, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A deterministic colour test picture (a Mandelbrot render over gradients)."""
    fractal = Image.effect_mandelbrot((width, height), (-2.0, -1.2, 1.0, 1.2), 60)
    ramp = Image.linear_gradient("L")
    across = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    img = Image.merge("RGB", (fractal, ramp.resize((width, height)), across)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW)


async def create_key(cfg: Config, credits: int | str = 1000, *, admin: bool = False, **settings: object) -> str:
    """A new key on `cfg`'s database with `credits` and key `settings` (limits, models, expiry)."""
    migrate(cfg.resolved_database_url)
    db = Database(cfg.resolved_database_url)
    try:
        async with db.session() as session, session.begin():
            new = await keys.create_key(session, name="test", credits=Decimal(credits), admin=admin, **settings)
    finally:
        await db.aclose()
    return new.raw


def audit_ledgers(database: Path | str) -> None:
    """Assert the money invariants on a database (an SQLite file or a database URL): every key's
    ledger sums to its cached balance and holds, no balance or available balance is negative, only
    unfinished tasks hold credits (adding up to the key's), and every settlement equals its task's cost."""
    url = f"sqlite:///{database}" if isinstance(database, Path) else sync_url(async_database_url(database))
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as db:
            _audit(db)
    finally:
        engine.dispose()


def _audit(db: sqlalchemy.Connection) -> None:
    def one(sql: str, **params: object) -> tuple[Any, ...]:
        return tuple(db.execute(sqlalchemy.text(sql), params).one())

    for key_id, credits, held in db.execute(sqlalchemy.text("SELECT id, credits, held FROM api_keys")):
        sums = one("SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(held), 0) FROM ledger WHERE key_id = :k", k=key_id)
        assert sums == (credits, held), f"{key_id}: ledger {sums} != key {(credits, held)}"
        assert credits >= 0 and credits - held >= 0
        (task_holds,) = one(
            "SELECT COALESCE(SUM(held), 0) FROM tasks WHERE key_id = :k AND state IN ('waiting', 'running')", k=key_id
        )
        assert task_holds == held, f"{key_id}: unfinished tasks hold {task_holds}, the key {held}"
    (stale,) = one(
        "SELECT COUNT(*) FROM (SELECT ledger.task_id FROM ledger JOIN tasks ON tasks.id = ledger.task_id"
        " WHERE tasks.state IN ('success', 'fail') GROUP BY ledger.task_id HAVING SUM(ledger.held) != 0) AS s"
    )
    assert stale == 0, "a finished task still holds credits"
    (overcharged,) = one(
        "SELECT COUNT(*) FROM (SELECT tasks.id FROM tasks LEFT JOIN ledger ON ledger.task_id = tasks.id"
        " AND ledger.kind = 'settle' GROUP BY tasks.id"
        " HAVING COALESCE(-SUM(ledger.amount), 0) != COALESCE(MAX(tasks.cost), 0) OR MAX(tasks.cost) > MAX(tasks.held))"
        " AS s"
    )
    assert overcharged == 0, "a task's settlement differs from its cost, or exceeds its hold"


POSTGRES_ADMIN_URL = os.environ.get("IMAGEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
"""A PostgreSQL server where tests may create and drop databases (this machine's, by default)."""


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A local S3-compatible server (moto) on loopback; its endpoint URL."""
    from moto.server import ThreadedMotoServer  # slow to import: only for the tests that use it

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket on the local server, with the standard AWS_* variables pointing at it."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    bucket = "imagegate-" + secrets.token_hex(4)
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


def postgres_admin() -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to POSTGRES_ADMIN_URL. The test is skipped when no server is
    reachable, except in CI (`CI=true`), where PostgreSQL is required."""
    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} (set IMAGEGATE_TEST_POSTGRES): {exc}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards (skipped as `postgres_admin`)."""
    admin = postgres_admin()
    name = "imagegate_test_" + secrets.token_hex(6)
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database of each kind in turn (the store contract runs on both)."""
    url = f"sqlite:///{tmp_path / 'contract.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    opened = Database(url)
    try:
        yield opened
    finally:
        await opened.aclose()


@dataclass
class Api:
    client: httpx.AsyncClient
    key: str
    config: Config

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@asynccontextmanager
async def open_api(config: Config, engines: dict[str, Engine] | None = None) -> AsyncIterator[Api]:
    """The ASGI app for `config` in-process (lifespan run), a key with 1000 credits, and an httpx client on it."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    key = await create_key(config)
    app = create_app(config, engines)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            yield Api(client, key, config)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the app's lifespan in a task of its own, as a server does (its task group must be
    entered and left in one task, which a pytest fixture's setup and teardown are not)."""
    started = asyncio.Event()
    stop = asyncio.Event()

    async def host() -> None:
        try:
            async with app.router.lifespan_context(app):
                started.set()
                await stop.wait()
        finally:
            started.set()

    task = asyncio.create_task(host())
    await started.wait()
    if task.done():
        await task
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
async def api(config: Config) -> AsyncIterator[Api]:
    """`open_api` on the default test config."""
    async with open_api(config) as opened:
        yield opened


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@dataclass
class FileServer:
    root: Path
    base: str

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.base}/{name}"


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    """A static HTTP server on 127.0.0.1 serving a temporary directory."""
    root = tmp_path / "www"
    root.mkdir()
    with loopback_server(partial(_QuietHandler, directory=str(root))) as base:
        yield FileServer(root, base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    base: str
    key: str
    data_dir: Path
    env: dict[str, str]


def start_serve(port: int, env: dict[str, str], log: IO[str]) -> subprocess.Popen[str]:
    """`imagegate serve --port PORT` as a process writing to `log`, returned once /healthz answers.

    Raises RuntimeError (the process stopped) when it does not answer within 30 s.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    proc.wait(timeout=10)
    raise RuntimeError("server did not start")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m imagegate ARGS` as a real process with exactly `env`. For `serve` and `worker`, and
    for the few tests that hold the CLI to what an operator runs; the others use `invoke_cli`."""
    return subprocess.run(
        [sys.executable, "-m", "imagegate", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


class _ProcessLikeRunner(CliRunner):
    """typer's CliRunner, plus what a new process would start with: the CLI's module-level stderr
    Console is made afresh on the run's own stderr (so it sees no terminal and leaks nothing between runs)."""

    @contextmanager
    def isolation(
        self, input: str | bytes | None = None, env: Mapping[str, str | None] | None = None, color: bool = False
    ) -> Iterator[tuple[io.BytesIO, io.BytesIO, io.BytesIO]]:
        with (
            super().isolation(input, env, color) as streams,
            mock.patch.object(cli_output, "err", Console(stderr=True)),
        ):
            yield streams


def invoke_cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`imagegate ARGS` in this process (typer's CliRunner on `imagegate.cli.app`), answered like
    `run_cli`: exit status, stdout and stderr, without a new interpreter importing the whole stack.

    For the run the environment is exactly `env`, as a subprocess's would be: the CLI reads its
    `IMAGEGATE_*` variables when called, and this process's variables missing from `env` are unset
    meanwhile. An exception escaping the CLI exits 1 with its traceback on stderr, as Python does.
    The run has a thread of its own, so the CLI's `asyncio.run` works from async tests too (their
    loop waits meanwhile). Not for `serve` or `worker`, which run until stopped: use `run_cli`.
    """
    assert args[:1] not in (("serve",), ("worker",)), "serve and worker run as processes: use run_cli"
    overrides: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    overrides.update(env)
    pool = ThreadPoolExecutor(1, thread_name_prefix="imagegate-cli")
    try:
        done = pool.submit(_ProcessLikeRunner().invoke, cli.app, list(args), env=overrides, prog_name="imagegate")
        result = done.result(timeout=60)
    finally:
        pool.shutdown(wait=False)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["imagegate", *args], result.exit_code, result.stdout, stderr)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`imagegate serve` as a real process on a loopback port; its first-start key is read from stdout."""
    data_dir = tmp_path_factory.mktemp("live")
    port = free_port()
    env = {**os.environ, "IMAGEGATE_FETCH_ALLOW": LOOPBACK_ALLOW, "IMAGEGATE_DATA_DIR": str(data_dir)}
    log = (data_dir / "serve.log").open("w+")
    base = f"http://127.0.0.1:{port}"
    try:
        proc = start_serve(port, env, log)
    except RuntimeError:
        log.seek(0)
        output = log.read()
        log.close()
        raise RuntimeError("server did not start:\n" + output) from None
    try:
        log.seek(0)
        lines = log.read().splitlines()
        key = next(line for line in lines if line.startswith(keys.KEY_PREFIX))
        yield LiveServer(base, key, data_dir, env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight pipelines of each family the local engine runs, saved once per session
    (tests/tiny_pipelines.py); skipped where the `local` extra is not installed (`make test` installs it)."""
    pytest.importorskip("diffusers", reason="the local extra (torch, diffusers) is not installed")
    from tests.tiny_pipelines import save_tiny_pipelines

    return save_tiny_pipelines(tmp_path_factory.mktemp("tiny-models"))
