"""docs/deploy.md runs as written: the `sh` blocks of its distributed section, in order, against the
local PostgreSQL and an S3-compatible server (moto) on loopback; then a fresh key edits an image
through both API nodes, and an async task recorded by one node is run by the workers.

The test changes only what the guide tells the operator to change: the first block's site values
(a database, role and bucket of its own, moto's endpoint). The long-running commands (`imagegate
serve`, `imagegate worker`) are started twice each in the background, on free ports.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from psycopg import sql

from tests.conftest import POSTGRES_ADMIN_URL, decode, free_port, make_image, postgres_admin
from tests.waiting import record_info, task_state, wait_for_task

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
SECTION = "## Distributed (several API nodes and workers)"
_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def guide_blocks() -> list[str]:
    """The `sh` blocks of the guide's distributed section, in order."""
    text = GUIDE.read_text()
    section = text[text.index(SECTION) :]
    end = section.find("\n## ", len(SECTION))
    return _BLOCK.findall(section if end < 0 else section[:end])


def backgrounded(block: str, ports: list[int], metrics_ports: list[int], logs: Path) -> str:
    """`block` with each `imagegate serve` / `imagegate worker` line started twice in the background
    (logging under `logs`, its pid recorded), on the given ports instead of the guide's."""
    lines = []
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        if command.startswith(("imagegate serve ", "imagegate worker ")):
            kind = command.split()[1]
            for index in range(2):
                started = re.sub(r"--port \d+", f"--port {ports[index]}", command)
                started = re.sub(r"--metrics-port \d+", f"--metrics-port {metrics_ports[index]}", started)
                lines.append(f"{started} > {logs}/{kind}{index}.log 2>&1 & echo $! >> {logs}/pids")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture
def site(s3_server: str) -> Iterator[dict[str, str]]:
    """The site values of the guide's first block, for a database, role and bucket of this test's own;
    the role and database are dropped afterwards."""
    postgres_admin().close()
    if shutil.which("psql") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the guide's step 2 needs psql (.ci/run installs postgresql-client)")
        pytest.skip("psql is not installed (the guide's step 2 uses it)")
    suffix = secrets.token_hex(4)
    server = httpx.URL(POSTGRES_ADMIN_URL.replace("postgresql://", "http://"))
    values = {
        "DB_HOST": server.host,
        "DB_PORT": str(server.port or 5432),
        "DB_ADMIN": server.username or "postgres",
        "DB_NAME": f"guide_{suffix}",
        "DB_USER": f"guide_{suffix}",
        "DB_PASSWORD": secrets.token_hex(8),
        "S3_ENDPOINT": s3_server,
        "BUCKET": f"guide-{suffix}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        yield values
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(values["DB_NAME"])))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(values["DB_USER"])))


def stop(pids: Path) -> None:
    for pid in pids.read_text().split() if pids.exists() else []:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            continue


def test_the_deploy_guide_runs_as_written(site: dict[str, str], tmp_path: Path) -> None:
    blocks = guide_blocks()
    assert len(blocks) >= 7 and "DB_NAME=" in blocks[0], "the guide's first block holds the site values"
    ports, metrics_ports = [free_port(), free_port()], [free_port(), free_port()]
    logs = tmp_path / "logs"
    logs.mkdir()
    work = tmp_path / "operator"
    work.mkdir()
    (work / "photo.png").write_bytes(make_image(320, 240))
    overrides = {**site, "PUBLIC_URL": f"http://127.0.0.1:{ports[0]}"}
    site_block = "".join(f"export {name}={value}\n" for name, value in overrides.items())
    script = blocks[0] + site_block
    script += "".join(backgrounded(block, ports, metrics_ports, logs) for block in blocks[1:])
    script += 'printf %s "$KEY" > key.txt\n'
    (tmp_path / "guide.sh").write_text(script)
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", str(tmp_path / "guide.sh")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr + "".join(p.read_text() for p in logs.glob("*.log"))
        assert '"status":"ready"' in done.stdout.replace(" ", "")
        edited = httpx.Response(200, content=(work / "edited.json").read_bytes()).json()
        assert edited["data"][0]["b64_json"], "step 7's edit came back"
        key = (work / "key.txt").read_text()
        for port in ports:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
            assert ready["status"] == "ready" and ready["checks"]["storage"]["detail"].startswith(
                f"s3://{site['BUCKET']}/prod"
            )
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
            with (work / "photo.png").open("rb") as photo:
                answer = client.images.edit(model="gpt-image-2", image=photo, prompt="sepia", response_format="url")
            assert answer.data and answer.data[0].url
            assert answer.data[0].url.startswith(overrides["PUBLIC_URL"]), "result URLs name the public URL"
            path = httpx.URL(answer.data[0].url).path
            here, there = (httpx.get(f"http://127.0.0.1:{node}{path}") for node in ports)
            assert here.status_code == there.status_code == 200 and here.content == there.content, "any node serves it"
            assert decode(there.content).width > 0
        created = httpx.post(
            f"http://127.0.0.1:{ports[0]}/api/v1/jobs/createTask",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "gpt-image-2-text-to-image", "input": {"prompt": "a lighthouse", "aspect_ratio": "1:1"}},
        )
        task_id = created.json()["data"]["taskId"]
        with httpx.Client(base_url=f"http://127.0.0.1:{ports[1]}") as polling:
            info = wait_for_task(
                polling, record_info(task_id), headers={"Authorization": f"Bearer {key}"}, timeout_s=60
            )
        assert task_state(info) == "success"
        for port in metrics_ports:
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["checks"]["queue"]["ok"]
    finally:
        stop(logs / "pids")
    worker_logs = (logs / "worker0.log").read_text() + (logs / "worker1.log").read_text()
    assert f"task={task_id} model=gpt-image-2-text-to-image" in worker_logs
