"""State on PostgreSQL (SPEC §9): the same migrations, exact credits under concurrency, and limits that
hold across API nodes sharing one database. Runs against this machine's PostgreSQL (required in CI)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import psycopg

from imagegate.app import create_app
from imagegate.config import Config, load_config
from imagegate.engines.base import Engine
from tests.conftest import LOOPBACK_ALLOW, audit_ledgers, create_key, invoke_cli, lifespan, make_image
from tests.engines import OnePerCall

PNG = make_image(64, 64)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def on_postgres(tmp_path: Path, url: str, name: str = "node", **accounts: int) -> Config:
    limits = {"requests_per_minute": 0, "max_active_tasks": 0, **accounts}
    return load_config(data_dir=tmp_path / name, database_url=url, fetch_allow=LOOPBACK_ALLOW, accounts=limits)


@asynccontextmanager
async def node(config: Config, engines: dict[str, Engine] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """One API node (an in-process app with its own runner) on `config`'s database."""
    app = create_app(config, engines)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=60) as client:
            yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_imagegate_migrate_builds_the_schema_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path), "IMAGEGATE_DATABASE_URL": postgres_url}
    for _ in range(2):
        done = invoke_cli("migrate", env=env)
        assert done.returncode == 0, done.stderr
    with psycopg.connect(postgres_url) as db:
        tables = {row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone() or ("",)
    assert {
        "api_keys",
        "tasks",
        "ledger",
        "files",
        "rate_buckets",
        "webhook_deliveries",
        "idempotency",
        "procrastinate_jobs",
    } <= tables
    assert version == "0007"


async def test_100_concurrent_requests_across_two_nodes_on_credits_for_50(postgres_url: str, tmp_path: Path) -> None:
    first, second = on_postgres(tmp_path, postgres_url, "a"), on_postgres(tmp_path, postgres_url, "b")
    key = await create_key(first, credits=100)
    form = {"model": "dall-e-2", "prompt": "invert", "size": "256x256"}
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(node(config)) for config in (first, second)]

        async def edit(index: int) -> httpx.Response:
            files = {"image": ("a.png", PNG, "image/png")}
            return await nodes[index % 2].post("/v1/images/edits", headers=bearer(key), data=form, files=files)

        responses = await asyncio.gather(*(edit(i) for i in range(100)))
        usage = (await nodes[1].get("/v1/usage", headers=bearer(key), params={"limit": 100})).json()
        task_id = next(r.json()["task_id"] for r in responses if r.status_code == 200)
        seen_elsewhere = await nodes[0].get(f"/v1/images/tasks/{task_id}", headers=bearer(key))
    assert Counter(r.status_code for r in responses) == {200: 50, 402: 50}
    assert (usage["balance"], usage["held"], len(usage["tasks"])) == ("0", "0", 50)
    assert seen_elsewhere.status_code == 200 and seen_elsewhere.json()["status"] == "success"
    audit_ledgers(postgres_url)


async def test_rate_and_active_task_limits_hold_across_nodes(postgres_url: str, tmp_path: Path) -> None:
    gate = asyncio.Event()
    engine = OnePerCall(gate=gate)
    first, second = on_postgres(tmp_path, postgres_url, "a"), on_postgres(tmp_path, postgres_url, "b")
    limited = await create_key(first, rpm=3)
    busy = await create_key(first, max_active=1)
    body = {"prompt": "x", "image": DATA_URL, "size": "1024x1024"}
    async with node(first, {"e": engine}) as a, node(second, {"e": engine}) as b:
        answers = [
            await (a, b)[i % 2].post("/v1/images/edits?dry_run=true", headers=bearer(limited), json=body)
            for i in range(4)
        ]
        running = asyncio.create_task(a.post("/v1/images/edits", headers=bearer(busy), json=body))
        await engine.started.wait()
        refused = await b.post("/v1/images/edits", headers=bearer(busy), json=body)
        gate.set()
        assert (await running).status_code == 200
    assert [r.status_code for r in answers] == [200, 200, 200, 429], [r.text for r in answers]
    assert answers[3].headers["x-ratelimit-limit-requests"] == "3" and "retry-after" in answers[3].headers
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_active_tasks"
    audit_ledgers(postgres_url)


async def test_admin_usage_by_day_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    config = on_postgres(tmp_path, postgres_url)
    admin, user = await create_key(config, admin=True), await create_key(config)
    async with node(config) as client:
        edit = await client.post("/v1/images/edits", headers=bearer(user), json={"prompt": "sepia", "image": DATA_URL})
        usage = (await client.get("/admin/usage", headers=bearer(admin))).json()["data"]
    assert edit.status_code == 200, edit.text
    assert [(row["model"], row["tasks"], row["images"], row["credits"]) for row in usage] == [
        ("gpt-image-2", 1, 1, "6")
    ]


def test_postgres_fixture_gives_each_test_an_empty_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


async def test_an_idempotent_repeat_on_another_node_replays_the_first_answer(postgres_url: str, tmp_path: Path) -> None:
    first, second = on_postgres(tmp_path, postgres_url, "a"), on_postgres(tmp_path, postgres_url, "b")
    key = await create_key(first)
    headers = {**bearer(key), "Idempotency-Key": "order-42"}
    body = {"prompt": "sepia", "image": DATA_URL}
    async with node(first) as a, node(second) as b:
        original = await a.post("/v1/images/edits", headers=headers, json=body)
        repeat = await b.post("/v1/images/edits", headers=headers, json=body)
        usage = (await b.get("/v1/usage", headers=bearer(key))).json()
    assert original.status_code == repeat.status_code == 200
    assert repeat.headers["idempotent-replayed"] == "true" and repeat.content == original.content
    assert len(usage["tasks"]) == 1 and usage["balance"] == "994", "run and charged once"
