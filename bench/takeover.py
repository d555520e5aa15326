"""How long a SIGKILLed worker's task waits before another worker runs it (docs/deploy.md, "When a
worker dies"), with the default timings and with the guide's shorter example.

An API node and worker A (PostgreSQL) take one async task relayed to bench/provider.py, which answers
after DELAY_S; once the task is running, A is SIGKILLed and worker B started. The wait is the time
from the kill until the task is final, less the provider's DELAY_S (B's own run of it), printed beside
the guide's bound max(stalled_after_s + stalled_check_s, lease_s) + lease_s / 4 + 1 s.

    python -m bench takeover
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from bench.distributed import database
from bench.relay_cost import answer_body, start_provider
from bench.serving import base_env, cli, free_port, new_key, started, wait_ready
from imagegate.worker import JOB_POLL_S

DELAY_S = 10.0
DEFAULTS = {"stalled_after_s": 30.0, "stalled_check_s": 15.0, "lease_s": 60.0}
SHORTER = {"stalled_after_s": 10.0, "stalled_check_s": 5.0, "lease_s": 20.0}


def bound(timings: dict[str, float]) -> float:
    """The guide's worst case for these timings."""
    worst = max(timings["stalled_after_s"] + timings["stalled_check_s"], timings["lease_s"]) + timings["lease_s"] / 4
    return worst + JOB_POLL_S


def _state(url: str, task_id: str) -> str:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT state FROM tasks WHERE id = %s", (task_id,)).fetchone()
    return str(row[0]) if row else "missing"


def wait_after_kill(tmp: Path, database_url: str, provider_port: int, timings: dict[str, float]) -> float:
    env = base_env(tmp / "node")
    tmp.mkdir(parents=True)
    config = tmp / "takeover.toml"
    config.write_text(f'[[channels]]\nname = "slow"\nbase_url = "http://127.0.0.1:{provider_port}/v1"\n')
    env.update(
        IMAGEGATE_DATABASE_URL=database_url,
        IMAGEGATE_STORAGE__URL=f"file://{tmp / 'shared-files'}",
        IMAGEGATE_CONFIG=str(config),
        IMAGEGATE_WORKER__STALLED_AFTER_S=str(timings["stalled_after_s"]),
        IMAGEGATE_WORKER__STALLED_CHECK_S=str(timings["stalled_check_s"]),
        IMAGEGATE_RUNNER__LEASE_S=str(timings["lease_s"]),
    )
    cli(env, "migrate")
    key = new_key(env)
    port = free_port()
    worker = [sys.executable, "-m", "imagegate", "worker"]
    with started([[sys.executable, "-m", "imagegate", "serve", "--port", str(port)]], env):
        wait_ready(port)
        doomed = subprocess.Popen(worker, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        body = {"model": "gpt-image-2-text-to-image", "input": {"prompt": "a lighthouse", "aspect_ratio": "1:1"}}
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/jobs/createTask", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        task_id = r.json()["data"]["taskId"]
        while _state(database_url, task_id) != "running":
            time.sleep(0.05)
        metrics_port = free_port()
        with started([[*worker, "--metrics-port", str(metrics_port)]], env):  # B, alive before A dies
            wait_ready(metrics_port)
            assert _state(database_url, task_id) == "running", "A still runs the task when it is killed"
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            killed = time.monotonic()
            while _state(database_url, task_id) not in ("success", "fail"):
                time.sleep(0.1)
            waited = time.monotonic() - killed - DELAY_S
    assert _state(database_url, task_id) == "success"
    return waited


def takeover(tmp: Path) -> str:
    answer = tmp / "answer.json"
    answer.write_bytes(answer_body())
    provider_port = free_port()
    provider = start_provider(provider_port, answer, DELAY_S)
    lines = ["(j) a SIGKILLed worker's task, from the kill until another worker has run it (less its own run):"]
    try:
        for name, timings in (("defaults", DEFAULTS), ("the guide's shorter example", SHORTER)):
            with database() as url:
                waited = wait_after_kill(tmp / name.split()[0], url, provider_port, timings)
            lines.append(f"    {name} {timings}: waited {waited:.1f} s (the guide's bound {bound(timings):.0f} s)")
    finally:
        provider.terminate()
        provider.wait(10)
    return "\n".join(lines)
