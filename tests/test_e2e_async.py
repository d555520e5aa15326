"""End to end, asynchronous: seeds 000 and 002 and seed 003's callback against the real server,
webhooks checked with `imagegate.webhooks.verify`, and a SIGKILL in the middle of 40 tasks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import standardwebhooks
from PIL import Image

from imagegate.webhooks import verify
from tests.conftest import (
    LOOPBACK_ALLOW,
    FileServer,
    LiveServer,
    audit_ledgers,
    free_port,
    invoke_cli,
    make_image,
    start_serve,
)
from tests.receivers import Receiver, webhook_receiver
from tests.shapes import assert_like
from tests.waiting import FINISHED, wait_for_task

pytestmark = pytest.mark.e2e
SEEDS = Path(__file__).with_name("seeds")
HOSTS = ("https://api.gptimageapi.dev", "https://aigptimage.com", "https://api.xhuoapi.ai")
IMAGE_URLS = ("https://example.com/image.jpg", "https://cdn.example.com/input.png")
WEBHOOK = "https://webhook.site/3d32690d-6780-4187-a65c-870061e8c8ab"


def seed(name: str, base: str, key: str, image_url: str = "", hook: str = "") -> str:
    text = (SEEDS / name).read_text(encoding="utf-8")
    for host in HOSTS:
        text = text.replace(host, base)
    text = text.replace("YOUR_API_KEY", key).replace("{token}", key)
    for url in IMAGE_URLS:
        text = text.replace(url, image_url)
    return text.replace(WEBHOOK, hook)


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def new_key(live: LiveServer) -> dict[str, str]:
    done = invoke_cli("keys", "create", "--name", "hooks", "--credits", "100", "--json", env=live.env)
    assert done.returncode == 0, done.stderr
    created: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    assert created["webhook_secret"].startswith("whsec_") and created["key"].startswith("ig-")
    return created


def test_seed000_curl_python_and_node(live_server: LiveServer, file_server: FileServer, tmp_path: Path) -> None:
    image = file_server.put("image.jpg", make_image(800, 600))
    base, key = live_server.base, live_server.key
    body = json.loads(run(["bash", "-c", seed("seed000_curl.sh", base, key, image)], tmp_path))
    assert body["code"] == 0 and body["message"] == "ok"
    assert httpx.get(body["data"]["images"][0]["url"]).status_code == 200
    url = run([sys.executable, "-c", seed("seed000_edit.py", base, key, image)], tmp_path).strip()
    assert url.startswith(f"{base}/files/")
    script = seed("seed000_node.js", base, key, image) + "\neditImage().then((url) => console.log(url));\n"
    node_url = run(["node", "-e", script], tmp_path).strip()
    got = httpx.get(node_url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"


def test_seed002_flow_to_success(live_server: LiveServer, file_server: FileServer, tmp_path: Path) -> None:
    image = file_server.put("input.png", make_image(900, 900))
    payload = seed("seed002_create.json", live_server.base, live_server.key, image)
    auth = f"Authorization: Bearer {live_server.key}"
    created = json.loads(
        run(
            [
                "curl",
                "-s",
                "-X",
                "POST",
                f"{live_server.base}/api/v1/jobs/createTask",
                "-H",
                auth,
                "-H",
                "Content-Type: application/json",
                "-d",
                payload,
            ],
            tmp_path,
        )
    )
    assert created["code"] == 200 and created["msg"] == "success"
    task_id = created["data"]["taskId"]

    def record() -> Any:
        url = f"{live_server.base}/api/v1/jobs/recordInfo?taskId={task_id}"
        return json.loads(run(["curl", "-s", url, "-H", auth], tmp_path))

    info = wait_for_task(record, done=lambda info: info["data"]["state"] in FINISHED, interval=0.2, what="the task")
    data = info["data"]
    assert data["state"] == "success", data
    assert json.loads(data["param"]) == json.loads(payload)
    (url,) = json.loads(data["resultJson"])["resultUrls"]

    assert Image.open(io.BytesIO(httpx.get(url).content)).size == (1024, 1024)


def seed_example(name: str) -> object:
    return json.loads((SEEDS / "responses" / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("prefix", ["/v1/v1", "/v1/openai"])
def test_seed003_callback_is_signed_and_verifies(live_server: LiveServer, tmp_path: Path, prefix: str) -> None:
    created = new_key(live_server)
    (tmp_path / "test.png").write_bytes(make_image(700, 500))
    with webhook_receiver() as receiver:
        script = seed("seed003_callback.sh", live_server.base, created["key"], hook=receiver.url)
        script = script.replace("/v1/v1/", f"{prefix}/")
        answer = json.loads(run(["bash", "-c", script], tmp_path))
        assert set(answer) == {"task_id"}
        assert_like(answer, seed_example("seed003_callback_ack.json"))
        (delivery,) = receiver.wait_for(1, timeout=30)
    body = verify(created["webhook_secret"], delivery.headers, delivery.body)
    assert body["success"] is True and body["task_id"] == answer["task_id"]
    assert body["data"]["data"][0]["b64_json"]
    assert_like(body, seed_example("seed003_callback_success.json"))
    # The Standard Webhooks reference verifier, which knows nothing of imagegate, accepts it too.
    assert standardwebhooks.Webhook(created["webhook_secret"]).verify(delivery.body, delivery.headers) == body
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_key(live_server)["webhook_secret"]).verify(delivery.body, delivery.headers)

    rotated = invoke_cli("keys", "rotate-secret", created["id"], env=live_server.env)
    assert rotated.returncode == 0
    new_secret = rotated.stdout.strip().splitlines()[-1]
    assert new_secret.startswith("whsec_") and new_secret != created["webhook_secret"]
    with webhook_receiver() as receiver:
        run(["bash", "-c", seed("seed003_callback.sh", live_server.base, created["key"], hook=receiver.url)], tmp_path)
        (delivery,) = receiver.wait_for(1, timeout=30)
    assert verify(new_secret, delivery.headers, delivery.body)["success"] is True


# --- crash test -----------------------------------------------------------------------------------


class Server:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.data_dir, self.port, self.env = data_dir, port, env
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log: IO[str] | None = None

    def start(self) -> None:
        self._close_log()
        self.log = (self.data_dir / "serve.log").open("a")
        self.proc = start_serve(self.port, self.env, self.log)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


@pytest.fixture
def crashable(tmp_path: Path) -> Iterator[Server]:
    data_dir = tmp_path / "crash"
    data_dir.mkdir()
    env = {
        **os.environ,
        "IMAGEGATE_DATA_DIR": str(data_dir),
        "IMAGEGATE_FETCH_ALLOW": LOOPBACK_ALLOW,
        "IMAGEGATE_RUNNER__LEASE_S": "2",
        "IMAGEGATE_RUNNER__CONCURRENCY": "2",
        "IMAGEGATE_RUNNER__POLL_INTERVAL_S": "0.1",
        "IMAGEGATE_WEBHOOKS__POLL_INTERVAL_S": "0.1",
        "IMAGEGATE_WEBHOOKS__RETRY_DELAYS": "0.5,1,1,2",
    }
    server = Server(data_dir, free_port(), env)
    try:
        yield server
    finally:
        server.stop()


def states(server: Server, key: str, ids: list[str]) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base, headers=auth, timeout=10) as client:
        return {i: client.get("/api/v1/jobs/recordInfo", params={"taskId": i}).json()["data"]["state"] for i in ids}


def test_sigkill_during_40_tasks_loses_none(crashable: Server, file_server: FileServer) -> None:
    created = invoke_cli("keys", "create", "--credits", "1000", "--json", env=crashable.env)
    account = json.loads(created.stdout.strip().splitlines()[-1])
    image = file_server.put("big.png", make_image(1600, 1200))
    crashable.start()
    with webhook_receiver() as receiver:
        ids = submit_40(crashable, account["key"], image, receiver)
        wait_for_task(
            lambda: states(crashable, account["key"], ids),
            done=lambda now: sum(s == "success" for s in now.values()) >= 2,
            timeout_s=60,
            what="two of the 40 tasks succeeding",
        )
        with sync_edit_in_flight(crashable, account["key"], image):
            # tasks run in pairs that finish together: kill while a pair runs, not between two pairs
            wait_for_task(lambda: async_running(crashable), interval=0.02, what="an async task running")
            crashable.kill()
        crashable.start()
        now, _ = wait_for_task(
            lambda: (states(crashable, account["key"], ids), unfinished(crashable)),
            done=lambda seen: all(s in FINISHED for s in seen[0].values()) and not seen[1],
            timeout_s=240,
            interval=0.25,
            what="every task finished after the restart",
        )
        assert all(s == "success" for s in now.values()), now
        deliveries = receiver.wait_for(40, timeout=60)
    by_task: dict[str, set[str]] = {}
    for delivery in deliveries:
        body = verify(account["webhook_secret"], delivery.headers, delivery.body)
        by_task.setdefault(body["data"]["taskId"], set()).add(delivery.headers["webhook-id"])
    assert set(by_task) == set(ids), "every task's callback arrived"
    assert all(len(msg_ids) == 1 for msg_ids in by_task.values()), "each task finished (and reported) exactly once"
    with sqlite3.connect(crashable.data_dir / "imagegate.db") as db:
        attempts = [row[0] for row in db.execute("SELECT attempts FROM tasks")]
        sync = db.execute("SELECT state, error_code, cost FROM tasks WHERE mode = 'sync'").fetchall()
    assert max(attempts) == 2 and attempts.count(2) <= 2, "the tasks running at the kill were taken over, once"
    assert sync == [("fail", "interrupted", 0)], "the sync request cut off by the kill failed, charged nothing"
    audit_ledgers(crashable.data_dir / "imagegate.db")
    spent = Decimal(1000) - 40 * 9  # 40 medium 2K images at 6 × 1.5
    usage = httpx.get(f"{crashable.base}/v1/usage", headers={"Authorization": f"Bearer {account['key']}"}).json()
    assert (usage["balance"], usage["held"], usage["holds"]) == (str(spent), "0", [])


def unfinished(server: Server) -> int:
    with sqlite3.connect(server.data_dir / "imagegate.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM tasks WHERE state IN ('waiting', 'running')").fetchone()
    return int(count)


def async_running(server: Server) -> bool:
    with sqlite3.connect(server.data_dir / "imagegate.db") as db:
        return db.execute("SELECT 1 FROM tasks WHERE mode = 'async' AND state = 'running'").fetchone() is not None


@contextmanager
def sync_edit_in_flight(server: Server, key: str, image: str) -> Iterator[None]:
    """A synchronous 4K edit running on `server` while the block runs (its connection may then break)."""

    def edit() -> None:
        payload = {"prompt": "pencil sketch", "image": image, "size": "3840x2160", "quality": "high"}
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{server.base}/v1/images/edits", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )

    def running() -> bool:
        with sqlite3.connect(server.data_dir / "imagegate.db") as db:
            return db.execute("SELECT 1 FROM tasks WHERE mode = 'sync' AND state = 'running'").fetchone() is not None

    thread = threading.Thread(target=edit, daemon=True)
    thread.start()
    wait_for_task(running, interval=0.02, what="the sync edit running")
    yield
    thread.join(60)


def submit_40(server: Server, key: str, image: str, receiver: Receiver) -> list[str]:
    ids = []
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for index in range(40):
            payload = {
                "model": "gpt-image-2-image-to-image",
                "input": {"prompt": f"sharpen and sepia {index}", "image_urls": [image], "resolution": "2K"},
                "callBackUrl": receiver.url,
            }
            r = client.post("/api/v1/jobs/createTask", json=payload)
            assert r.status_code == 200, r.text
            ids.append(r.json()["data"]["taskId"])
    return ids
