"""Distributed mode with a local model on a queue of its own: an API node without the model hands both
sync and async work to `imagegate worker --queues gpu`, which has it (PostgreSQL, shared storage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pybase64
import pytest

from imagegate.config import Config, load_config
from imagegate.worker import run_worker
from tests.conftest import LOOPBACK_ALLOW, FileServer, create_key, decode, make_image
from tests.test_postgres import bearer, node
from tests.waiting import record_info, task_state, wait_for_task_async

pytest.importorskip("torch", reason="the local extra (torch, diffusers) is not installed")
FAST: dict[str, Any] = {
    "runner": {"lease_s": 2, "poll_interval_s": 0.2},
    "worker": {"stalled_after_s": 2, "stalled_check_s": 0.5},
}


def on(tmp_path: Path, url: str, name: str, models: dict[str, Path], **settings: Any) -> Config:
    """A node's configuration: klein (gpt-image-2) and pix2pix (gpt-image-1) on the queue `gpu`, their
    models where `models` says (a node without them names paths that do not exist)."""
    klein = {"name": "klein", "engine": "diffusers", "model": str(models["klein"]), "models": ["gpt-image-2"]}
    pix = {"name": "pix", "engine": "diffusers", "model": str(models["pix2pix"]), "models": ["gpt-image-1"]}
    return load_config(
        data_dir=tmp_path / name,
        database_url=url,
        fetch_allow=LOOPBACK_ALLOW,
        storage={"url": f"file://{tmp_path / 'shared'}"},
        accounts={"requests_per_minute": 0, "max_active_tasks": 0},
        channels=[{**klein, "steps": 2, "queue": "gpu"}, {**pix, "steps": 2, "queue": "gpu"}],
        **{**FAST, **settings},
    )


def nowhere(tmp_path: Path) -> dict[str, Path]:
    return {"klein": tmp_path / "no-klein-here", "pix2pix": tmp_path / "no-pix2pix-here"}


@asynccontextmanager
async def gpu_worker(config: Config) -> AsyncIterator[None]:
    worker = asyncio.create_task(run_worker(config, queues=["gpu"], install_signal_handlers=False))
    try:
        yield
    finally:
        worker.cancel()
        with suppress(asyncio.CancelledError):
            await worker


async def test_an_api_node_without_the_model_hands_sync_and_async_work_to_the_gpu_workers(
    postgres_url: str, tmp_path: Path, tiny_models: dict[str, Path], file_server: FileServer
) -> None:
    api_config = on(tmp_path, postgres_url, "api", nowhere(tmp_path))
    key = await create_key(api_config)
    async with node(api_config) as api, gpu_worker(on(tmp_path, postgres_url, "gpu", tiny_models)):
        health = (await api.get("/readyz")).json()["channels"]["klein"]
        assert health["state"] == "on the workers of queue 'gpu'"
        files = [
            ("image[]", ("a.png", make_image(96, 64), "image/png")),
            ("image[]", ("b.png", make_image(), "image/png")),
        ]
        form = {"model": "gpt-image-2", "prompt": "图1 beside 图2", "size": "1536x1024", "seed": "3"}
        r = await api.post("/v1/images/edits", headers=bearer(key), data=form, files=files)
        assert r.status_code == 200, r.text
        assert decode(pybase64.b64decode(r.json()["data"][0]["b64_json"])).size == (1536, 1024)
        usage = (await api.get("/v1/usage", headers=bearer(key))).json()
        call = usage["tasks"][0]["calls"][0]
        assert call["family"] == "flux2-klein" and call["seed"] == 3 and call["channel"] == "klein"
        assert usage["tasks"][0]["cost"] != "0" and usage["held"] == "0"

        url = file_server.put("in.png", make_image(80, 80))
        body = {"model": "gpt-image-2", "input": {"prompt": "x", "image_urls": [url], "seed": 4}}
        created = await api.post("/api/v1/jobs/createTask", headers=bearer(key), json=body)
        task_id = created.json()["data"]["taskId"]
        with psycopg.connect(postgres_url) as db:
            runs = "SELECT queue_name FROM procrastinate_jobs WHERE task_name = 'imagegate.run_task'"
            queues = [row[0] for row in db.execute(runs)]
        assert queues == ["gpu"], "the async task went straight to the model's queue"
        done = await wait_for_task_async(api, record_info(task_id), headers=bearer(key), interval=0.1)
        assert task_state(done) == "success", done.text

        def jobs_left() -> int:
            with psycopg.connect(postgres_url) as db:
                return int((db.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() or (0,))[0])

        # a job row goes once its handler has returned, just after the task it ran is final
        await wait_for_task_async(lambda: asyncio.to_thread(jobs_left), done=lambda n: n == 0, what="the jobs deleted")
    shared = tmp_path / "shared"
    assert not [path.name for path in shared.iterdir() if path.name.startswith("rj_")], "handed-over files are removed"


async def test_a_sync_client_that_leaves_aborts_the_run_on_the_gpu_worker(
    postgres_url: str, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    api_config = on(tmp_path, postgres_url, "api", nowhere(tmp_path))
    slow = on(tmp_path, postgres_url, "gpu", tiny_models)
    slow.channels[0].steps = 100_000
    key = await create_key(api_config)
    async with node(api_config) as api, gpu_worker(slow):
        body = {"model": "gpt-image-2", "prompt": "x"}
        request = asyncio.create_task(api.post("/v1/images/generations", headers=bearer(key), json=body))

        def status() -> list[str]:
            with psycopg.connect(postgres_url) as db:
                return [row[0] for row in db.execute("SELECT status FROM procrastinate_jobs")]

        await wait_for_task_async(lambda: asyncio.to_thread(status), done=lambda s: s == ["doing"], what="the run")
        request.cancel()
        with suppress(asyncio.CancelledError):
            await request
        ended = await wait_for_task_async(
            lambda: asyncio.to_thread(status), done=lambda s: s in ([], ["aborted"]), what="the abort"
        )
        assert ended in ([], ["aborted"])
        usage = (await api.get("/v1/usage", headers=bearer(key))).json()
        assert usage["tasks"][0]["state"] == "fail" and usage["held"] == "0"


async def test_what_the_model_cannot_do_is_a_400_from_the_worker_and_no_worker_is_a_504(
    postgres_url: str, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    api_config = on(tmp_path, postgres_url, "api", nowhere(tmp_path), worker={**FAST["worker"], "handler_timeout_s": 2})
    key = await create_key(api_config)
    async with node(api_config) as api:
        async with gpu_worker(on(tmp_path, postgres_url, "gpu", tiny_models)):
            generate = await api.post(
                "/v1/images/generations", headers=bearer(key), json={"model": "gpt-image-1", "prompt": "x"}
            )
            assert generate.status_code == 400 and generate.json()["error"]["code"] == "model_not_supported"
            three = [("image[]", (f"{i}.png", make_image(64, 64), "image/png")) for i in range(3)]
            many = await api.post(
                "/v1/images/edits", headers=bearer(key), data={"model": "gpt-image-1", "prompt": "x"}, files=three
            )
            assert many.status_code == 400 and "takes 1 reference image; 3 were given" in many.text
        alone = await api.post(
            "/v1/images/generations", headers=bearer(key), json={"model": "gpt-image-2", "prompt": "x"}
        )
        assert alone.status_code == 504 and "No worker of queue 'gpu'" in alone.json()["error"]["message"]
        usage = (await api.get("/v1/usage", headers=bearer(key))).json()
        assert usage["held"] == "0" and [task["state"] for task in usage["tasks"]] == ["fail"] * 3
