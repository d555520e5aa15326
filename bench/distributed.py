"""(i) distributed ÷ embedded: the same load against 2 API nodes + 2 workers on PostgreSQL (results in
one shared directory, `file://`) and against 1 node on SQLite, on the same machine, one after the other.

The load, the same for both: 200 async tasks (task-jobs `createTask`, a 1K text-to-image each, sent by
16 clients across the nodes) timed from the first submission until every task is final, then 100
sync edits (a 256² PNG to 1024², OpenAI multipart, 16 concurrent clients across the nodes). Prints
async throughput, and sync throughput, p50 and p99, as distributed ÷ embedded.

    python -m bench distributed      (IMAGEGATE_BENCH_POSTGRES: a server where it may create a database)
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from PIL import Image
from psycopg import sql

from bench.serving import base_env, cli, free_port, new_key, started, wait_ready

ADMIN_URL = os.environ.get("IMAGEGATE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
ASYNC_TASKS = 200
SYNC_EDITS = 100
CLIENTS = 16
FINAL = ("success", "fail")


@dataclass
class Figures:
    async_per_s: float
    sync_per_s: float
    p50_s: float
    p99_s: float
    failed: int


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3)).save(buffer, "PNG")
    return buffer.getvalue()


async def _run_load(bases: list[str], key: str) -> Figures:
    headers = {"Authorization": f"Bearer {key}"}
    gate = asyncio.Semaphore(CLIENTS)
    png = _png()
    async with httpx.AsyncClient(headers=headers, timeout=300, limits=httpx.Limits(max_connections=64)) as client:

        async def submit(index: int) -> str:
            body = {
                "model": "gpt-image-2-text-to-image",
                "input": {"prompt": f"a lighthouse {index}", "aspect_ratio": "1:1"},
            }
            async with gate:
                r = await client.post(f"{bases[index % len(bases)]}/api/v1/jobs/createTask", json=body)
            r.raise_for_status()
            return str(r.json()["data"]["taskId"])

        async def state(index: int, task_id: str) -> str:
            async with gate:
                r = await client.get(f"{bases[index % len(bases)]}/api/v1/jobs/recordInfo", params={"taskId": task_id})
            return str(r.json()["data"]["state"])

        start = time.perf_counter()
        pending = dict(enumerate(await asyncio.gather(*(submit(i) for i in range(ASYNC_TASKS)))))
        failed = 0
        while pending:
            await asyncio.sleep(0.25)
            states = await asyncio.gather(*(state(i, task_id) for i, task_id in pending.items()))
            for (index, _), seen in zip(list(pending.items()), states, strict=True):
                if seen in FINAL:
                    failed += seen == "fail"
                    del pending[index]
        async_s = time.perf_counter() - start

        async def edit(index: int) -> float:
            async with gate:
                began = time.perf_counter()
                r = await client.post(
                    f"{bases[index % len(bases)]}/v1/images/edits",
                    data={"prompt": "sepia", "size": "1024x1024"},
                    files=[("image", ("a.png", png, "image/png"))],
                )
                took = time.perf_counter() - began
            r.raise_for_status()
            return took

        start = time.perf_counter()
        times = sorted(await asyncio.gather(*(edit(i) for i in range(SYNC_EDITS))))
        sync_s = time.perf_counter() - start
    return Figures(
        ASYNC_TASKS / async_s,
        SYNC_EDITS / sync_s,
        statistics.median(times),
        times[min(len(times) - 1, int(len(times) * 0.99))],
        failed,
    )


def embedded(tmp: Path) -> Figures:
    env = base_env(tmp / "embedded")
    cli(env, "migrate")
    key = new_key(env)
    port = free_port()
    with started([[sys.executable, "-m", "imagegate", "serve", "--port", str(port)]], env):
        wait_ready(port)
        return asyncio.run(_run_load([f"http://127.0.0.1:{port}"], key))


def distributed(tmp: Path, database_url: str) -> Figures:
    env = base_env(tmp / "migrate")
    env.update(
        IMAGEGATE_DATABASE_URL=database_url,
        IMAGEGATE_STORAGE__URL=f"file://{tmp / 'shared-files'}",
        IMAGEGATE_RELAY__SIGNING_SECRET=secrets.token_urlsafe(32),
    )
    cli(env, "migrate")
    key = new_key(env)
    ports = [free_port(), free_port()]
    commands = [
        [sys.executable, "-m", "imagegate", "serve", "--port", str(port), "--data-dir", str(tmp / f"api{port}")]
        for port in ports
    ]
    commands += [[sys.executable, "-m", "imagegate", "worker", "--data-dir", str(tmp / f"worker{i}")] for i in range(2)]
    with started(commands, env):
        for port in ports:
            wait_ready(port)
        return asyncio.run(_run_load([f"http://127.0.0.1:{port}" for port in ports], key))


@contextmanager
def database() -> Iterator[str]:
    name = "imagegate_bench_" + secrets.token_hex(4)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def distributed_vs_embedded(tmp: Path) -> str:
    """Figure (i), as printed lines."""
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return f"(i) distributed ÷ embedded: skipped, PostgreSQL is not reachable at {ADMIN_URL}: {exc}"
    alone = embedded(tmp)
    with database() as url:
        spread = distributed(tmp, url)
    return (
        f"(i) distributed (2 API nodes + 2 workers, PostgreSQL, shared file storage) ÷ embedded (1 node, SQLite), "
        f"same machine:\n"
        f"    async, {ASYNC_TASKS} tasks: {spread.async_per_s:.1f}/s ÷ {alone.async_per_s:.1f}/s = "
        f"{spread.async_per_s / alone.async_per_s:.2f}x throughput ({spread.failed + alone.failed} failed)\n"
        f"    sync, {SYNC_EDITS} edits × {CLIENTS} clients: throughput {spread.sync_per_s / alone.sync_per_s:.2f}x; "
        f"p50 {spread.p50_s * 1000:.0f} ÷ {alone.p50_s * 1000:.0f} ms = {spread.p50_s / alone.p50_s:.2f}x; "
        f"p99 {spread.p99_s * 1000:.0f} ÷ {alone.p99_s * 1000:.0f} ms = {spread.p99_s / alone.p99_s:.2f}x"
    )
