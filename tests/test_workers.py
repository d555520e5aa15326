"""Distributed mode's queue (SPEC §9): procrastinate jobs deferred in the transaction that records the
task, run by `imagegate worker`s, surviving a worker's SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select

from imagegate.builtins import builtin_registry
from imagegate.config import Config, ConfigError, load_config
from imagegate.core.request import EditRequest
from imagegate.metrics import Metrics
from imagegate.runtime import open_runtime
from imagegate.service.tasks import Origin
from imagegate.stores import keys, ledger, sql
from imagegate.stores.db import ApiKey, Database, Task, migrate
from imagegate.stores.queue import RUN_TASK, ProcrastinateQueue, RowQueue, TaskQueue, procrastinate_app
from imagegate.worker import HandlerTimedOut, run_worker, worker_app
from tests.conftest import (
    LOOPBACK_ALLOW,
    FileServer,
    audit_ledgers,
    create_key,
    free_port,
    invoke_cli,
    make_image,
    run_cli,
    start_serve,
)
from tests.engines import OnePerCall
from tests.receivers import Receiver, webhook_receiver
from tests.test_operations import value
from tests.test_postgres import bearer, node
from tests.waiting import FINISHED, record_info, task_state, wait_for_task, wait_for_task_async

FAST: dict[str, Any] = {
    "runner": {"lease_s": 2, "poll_interval_s": 0.2},
    "worker": {"stalled_after_s": 2, "stalled_check_s": 0.5},
    "webhooks": {"poll_interval_s": 0.2},
}


def distributed(tmp_path: Path, url: str, name: str = "node") -> Config:
    unlimited = {"requests_per_minute": 0, "max_active_tasks": 0}
    return load_config(
        data_dir=tmp_path / name, database_url=url, fetch_allow=LOOPBACK_ALLOW, accounts=unlimited, **FAST
    )


def jobs(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as db:
        return [(row[0], row[1]["task_id"]) for row in db.execute("SELECT status, args FROM procrastinate_jobs")]


async def wait_state(client: httpx.AsyncClient, key: str, task_id: str) -> str:
    """The task's state once final (AssertionError after 30 s)."""
    return task_state(await wait_for_task_async(client, record_info(task_id), headers=bearer(key), interval=0.1))


async def test_jobs_are_deferred_with_the_task_and_a_worker_runs_them(
    postgres_url: str, tmp_path: Path, file_server: FileServer
) -> None:
    config = distributed(tmp_path, postgres_url)
    key, poor = await create_key(config), await create_key(config, credits=1)
    url = file_server.put("in.png", make_image(320, 240))
    with webhook_receiver() as hook:
        await _deferred_and_run(config, postgres_url, tmp_path, key, poor, url, hook)
    audit_ledgers(postgres_url)


async def _deferred_and_run(
    config: Config, postgres_url: str, tmp_path: Path, key: str, poor: str, url: str, hook: Receiver
) -> None:
    body = {
        "model": "gpt-image-2-image-to-image",
        "input": {"prompt": "sepia", "image_urls": [url]},
        "callBackUrl": hook.url,
    }
    async with node(config) as api:
        created = await api.post("/api/v1/jobs/createTask", headers=bearer(key), json=body)
        task_id = created.json()["data"]["taskId"]
        refused = await api.post("/api/v1/jobs/createTask", headers=bearer(poor), json=body)
        assert refused.status_code == 402
        assert jobs(postgres_url) == [("todo", task_id)], "one job, deferred with the task; none for the 402"
        await asyncio.sleep(1)
        info = await api.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=bearer(key))
        assert info.json()["data"]["state"] == "waiting", "API nodes leave async tasks to workers"
        worker = asyncio.create_task(
            run_worker(distributed(tmp_path, postgres_url, "w"), install_signal_handlers=False)
        )
        try:
            assert await wait_state(api, key, task_id) == "success"
            (delivery,) = await asyncio.to_thread(hook.wait_for, 1)
        finally:
            worker.cancel()
            with suppress(asyncio.CancelledError):
                await worker
    assert jobs(postgres_url) == [], "succeeded jobs are deleted"
    assert delivery.json["data"]["taskId"] == task_id and delivery.json["data"]["state"] == "success"
    assert "webhook-signature" in delivery.headers, "the worker sent the signed callback"


@contextmanager
def processes(commands: list[tuple[list[str], dict[str, str]]], logs: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """The commands as processes logging under `logs`, stopped on the way out."""
    started: list[subprocess.Popen[str]] = []
    with ExitStack() as files:
        try:
            for command, env in commands:
                log = files.enter_context((logs / f"{secrets.token_hex(4)}.log").open("w"))
                started.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
            yield started
        finally:
            _stop(started)


def _stop(started: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every process, then SIGKILL what has not stopped within 15 s."""
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
    for proc in started:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_two_nodes_two_workers_and_a_sigkilled_worker_lose_no_task(
    postgres_url: str, tmp_path: Path, file_server: FileServer
) -> None:
    env = {
        **os.environ,
        "IMAGEGATE_DATABASE_URL": postgres_url,
        "IMAGEGATE_FETCH_ALLOW": LOOPBACK_ALLOW,
        "IMAGEGATE_RUNNER__LEASE_S": "2",
        "IMAGEGATE_WORKER__STALLED_AFTER_S": "2",
        "IMAGEGATE_WORKER__STALLED_CHECK_S": "0.5",
        "IMAGEGATE_ACCOUNTS__REQUESTS_PER_MINUTE": "0",
        "IMAGEGATE_ACCOUNTS__MAX_ACTIVE_TASKS": "0",
    }
    assert run_cli("migrate", env={**env, "IMAGEGATE_DATA_DIR": str(tmp_path / "m")}).returncode == 0
    key = json.loads(
        invoke_cli(
            "keys", "create", "--credits", "1000", "--json", env={**env, "IMAGEGATE_DATA_DIR": str(tmp_path / "m")}
        ).stdout
    )["key"]
    ports = [free_port(), free_port()]
    logs = tmp_path / "logs"
    logs.mkdir()
    api_procs = []
    api_logs = ExitStack()
    for index, port in enumerate(ports):
        node_env = {**env, "IMAGEGATE_DATA_DIR": str(tmp_path / f"api{index}")}
        api_procs.append(start_serve(port, node_env, api_logs.enter_context((logs / f"api{index}.log").open("w"))))
    worker_cmd = [sys.executable, "-m", "imagegate", "worker", "--concurrency", "4"]
    image = file_server.put("in.png", make_image(1600, 1200))
    try:
        with processes([(worker_cmd, {**env, "IMAGEGATE_DATA_DIR": str(tmp_path / "w0")})], logs) as (doomed,):
            ids = []
            for index in range(60):
                body = {
                    "model": "gpt-image-2-image-to-image",
                    "input": {"prompt": f"sharpen {index}", "image_urls": [image], "resolution": "2K"},
                }
                r = httpx.post(
                    f"http://127.0.0.1:{ports[index % 2]}/api/v1/jobs/createTask",
                    json=body,
                    headers=bearer(key),
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                ids.append(r.json()["data"]["taskId"])
            wait_for_task(
                lambda: jobs(postgres_url),
                done=lambda queued: any(status == "doing" for status, _ in queued),
                timeout_s=60,
                what="a job in progress on the doomed worker",
            )
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
        metrics_ports = [free_port(), free_port()]
        survivors = [
            (
                [*worker_cmd, "--metrics-port", str(metrics_ports[i])],
                {**env, "IMAGEGATE_DATA_DIR": str(tmp_path / f"w{i + 1}")},
            )
            for i in (0, 1)
        ]
        with processes(survivors, logs), httpx.Client(timeout=30) as client:

            def all_states() -> dict[str, str]:
                return {
                    task_id: task_state(
                        client.get(
                            f"http://127.0.0.1:{ports[(i + 1) % 2]}{record_info(task_id)}",  # the other node
                            headers=bearer(key),
                        )
                    )
                    for i, task_id in enumerate(ids)
                }

            states = wait_for_task(
                all_states,
                done=lambda seen: all(state in FINISHED for state in seen.values()),
                timeout_s=240,
                interval=0.5,
                what="all 60 tasks finished",
            )
            seen = [worker_endpoints(client, port) for port in metrics_ports]
            live_workers = wait_for_task(
                lambda: worker_rows(postgres_url),
                done=lambda count: count == 2,
                timeout_s=30,
                what="the dead worker's row removed",
            )
    finally:
        _stop(api_procs)
        api_logs.close()
    assert list(states.values()).count("success") == 60, states
    audit_ledgers(postgres_url)
    with psycopg.connect(postgres_url) as db:
        (again,) = db.execute("SELECT COUNT(*) FROM tasks WHERE attempts > 1").fetchone() or (0,)
    assert again >= 1, "the tasks running at the kill were taken over"
    assert live_workers == 2
    assert all(ready["status"] == "ready" for ready, _ in seen), seen
    assert {name for ready, _ in seen for name in ready["checks"]} == {"database", "storage", "queue"}
    ran = [value(text, "imagegate_worker_jobs_total", task=RUN_TASK, outcome="succeeded") for _, text in seen]
    assert sum(ran) >= 1 and all(value(text, "imagegate_worker_jobs_running") == 0 for _, text in seen)
    assert sum(value(text, "imagegate_worker_stalled_jobs_total") for _, text in seen) >= 1, "the kill was seen"
    worker_logs = [path.read_text() for path in logs.iterdir() if "worker started" in path.read_text()]
    assert len(worker_logs) == 3, "every worker logs its start line"
    for text in worker_logs:
        assert "queues=images concurrency=4 database=postgresql" in text and "storage=directory " in text
    logged = {
        line.split("task=")[1].split()[0]
        for text in worker_logs
        for line in text.splitlines()
        if "state=success" in line
    }
    assert logged == set(ids), "one INFO line per task run, across the workers"


def worker_rows(url: str) -> int:
    with psycopg.connect(url) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM procrastinate_workers").fetchone() or (0,)
    return int(count)


def worker_endpoints(client: httpx.Client, port: int) -> tuple[dict[str, Any], str]:
    """A worker's /readyz answer (asserting /healthz answers) and its /metrics text."""
    base = f"http://127.0.0.1:{port}"
    assert client.get(f"{base}/healthz").json()["status"] == "ok"
    return client.get(f"{base}/readyz").json(), client.get(f"{base}/metrics").text


class RolledBack(Exception):
    """Raised to roll a transaction back."""


@pytest.mark.parametrize("kind", ["rows", "procrastinate"])
async def test_a_queued_task_exists_exactly_when_its_transaction_commits(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("postgres_url") if kind == "procrastinate" else f"sqlite:///{tmp_path / 'q.db'}"
    migrate(url)
    db = Database(url)
    queue: TaskQueue = ProcrastinateQueue(procrastinate_app(db.url)) if kind == "procrastinate" else RowQueue()
    try:
        async with db.session() as session, session.begin():
            session.add(ApiKey(id="key_q", name="", key_hash="h", prefix="ig-"))

        async def submit(task_id: str, commit: bool) -> None:
            task = Task(id=task_id, key_id="key_q", model="gpt-image-2", kind="edit", dialect="jobs", request={})
            task.mode = "async"
            with suppress(RolledBack):
                async with sql.transaction(db) as statements:
                    await ledger.open_task(statements, task, Decimal(0), max_active=0)
                    await queue.enqueue(statements, task_id)
                    if not commit:
                        raise RolledBack

        await submit("task_kept", commit=True)
        await submit("task_dropped", commit=False)
        async with db.session() as session:
            tasks = list(await session.scalars(select(Task.id)))
    finally:
        await db.aclose()
    assert tasks == ["task_kept"]
    if kind == "procrastinate":
        assert [task_id for _, task_id in jobs(request.getfixturevalue("postgres_url"))] == ["task_kept"]


async def test_a_handler_past_its_timeout_hands_the_task_back_for_a_retry(postgres_url: str, tmp_path: Path) -> None:
    config = distributed(tmp_path, postgres_url)
    config.worker.handler_timeout_s = 0.3
    raw = await create_key(config)
    gate = asyncio.Event()
    async with AsyncExitStack() as stack:
        runtime = await open_runtime(config, stack, Metrics(), builtin_registry(), {"slow": OnePerCall(gate=gate)})
        async with sql.read(runtime.db) as statements:
            key = await keys.authenticate(statements, raw)
        request = EditRequest(prompt="x", model="gpt-image-2-text-to-image", size="1024x1024")
        task_id = await runtime.tasks.submit(key, request, Origin("jobs", "generate"))
        handler = worker_app(runtime).tasks[RUN_TASK]
        with pytest.raises(HandlerTimedOut):
            await handler(task_id=task_id)
        assert (await runtime.tasks.get_task(key.id, task_id)).state == "waiting", "handed back, not lost"
        gate.set()
        await handler(task_id=task_id)
        finished = await runtime.tasks.get_task(key.id, task_id)
    assert (finished.state, finished.attempts) == ("success", 2)
    audit_ledgers(postgres_url)


def test_workers_and_the_procrastinate_queue_need_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'queue'.*needs PostgreSQL"):
        load_config(data_dir=tmp_path, queue="procrastinate")
    refused = run_cli("worker", env={**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path)})
    assert refused.returncode == 2 and "PostgreSQL" in refused.stderr
