"""Attacks on memory: the decoded-pixel budget (refused before decoding when a request alone exceeds it,
waiting when requests together would), 16-bit inputs, upload parts past the per-image limit, and
resident memory that comes back after large jobs."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from PIL import Image

from bench.memory import png16_rgba
from imagegate.config import load_config
from imagegate.core.request import Size
from imagegate.imaging import open_image
from imagegate.service.budget import DecodeBudget, decode_cost
from imagegate.wire.forms import UPLOADS, BudgetedSpool, SpoolBudget
from tests.conftest import free_port, invoke_cli, make_image, open_api, start_serve
from tests.engines import OnePerCall
from tests.test_accounts import UNLIMITED

MB = 1024 * 1024


WORST = png16_rgba(7070, 7070)
"""The worst input the default limits accept: 49,984,900 pixels of 16-bit RGBA in under 1 MB."""


def test_the_worst_input_is_small_on_the_wire_and_large_decoded() -> None:
    source = open_image(io.BytesIO(WORST), max_pixels=50_000_000, param="image")
    assert len(WORST) < MB and (source.width, source.height) == (7070, 7070)
    assert decode_cost([(7070, 7070)], Size(1024, 1024)) > 400 * MB


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped() -> None:
    grey = Image.new("I;16", (256, 1))
    for x in range(256):
        grey.putpixel((x, 0), x * 257)
    buf = io.BytesIO()
    grey.save(buf, "PNG")
    decoded = open_image(io.BytesIO(buf.getvalue()), max_pixels=10**6, param="image").decode()
    assert decoded.mode == "RGB"
    assert [decoded.getpixel((x, 0)) for x in (0, 128, 255)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


async def test_a_request_that_alone_exceeds_the_budget_is_refused_before_decoding(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path / "d", accounts=UNLIMITED)
    config.limits.decode_budget_bytes = 256 * MB
    engine = OnePerCall()
    async with open_api(config, {"spy": engine}) as api:
        for query in ("", "?dry_run=true"):
            r = await api.client.post(
                f"/v1/images/edits{query}",
                headers=api.auth,
                data={"prompt": "sepia"},
                files=[("image", ("worst.png", WORST, "image/png"))],
            )
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert (error["code"], error["param"]) == ("image_too_large", "image")
            assert "256 MiB" in error["message"]
        small = await api.client.post(
            "/v1/images/edits",
            headers=api.auth,
            data={"prompt": "x"},
            files=[("image", ("a.png", make_image(), "image/png"))],
        )
        assert small.status_code == 200
    assert engine.calls == 1, "the refused requests never reached the engine"


async def test_the_budget_admits_in_arrival_order_and_never_past_its_total() -> None:
    budget = DecodeBudget(100)
    admitted: list[str] = []
    in_use: list[int] = []

    async def job(name: str, cost: int, hold_s: float) -> None:
        async with budget.hold(cost):
            admitted.append(name)
            in_use.append(budget.used)
            await anyio.sleep(hold_s)

    async with anyio.create_task_group() as group:
        group.start_soon(job, "big-first", 70, 0.1)
        await anyio.sleep(0.01)
        group.start_soon(job, "big-second", 70, 0.05)
        await anyio.sleep(0.01)
        group.start_soon(job, "small", 10, 0.01)  # fits beside big-first, but waits its turn
    assert admitted == ["big-first", "big-second", "small"]
    assert max(in_use) <= 100 and budget.used == 0
    with anyio.move_on_after(0.05) as waited:
        async with budget.hold(100), budget.hold(1):
            pass
    assert waited.cancelled_caught and budget.used == 0, "a cancelled waiter gives back nothing it did not get"


async def test_concurrent_requests_wait_for_the_budget(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path / "d", accounts=UNLIMITED)
    one = decode_cost([(640, 480)], Size(1024, 768))
    config.limits.decode_budget_bytes = one + one // 2  # room for one request at a time
    engine = OnePerCall()
    async with open_api(config, {"spy": engine}) as api:

        async def edit() -> int:
            files = [("image", ("a.png", make_image(640, 480), "image/png"))]
            r = await api.client.post("/v1/images/edits", headers=api.auth, data={"prompt": "x"}, files=files)
            return r.status_code

        statuses = []

        async def run() -> None:
            statuses.append(await edit())

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(run)
    assert statuses == [200] * 4
    assert engine.most_in_flight == 1, "the budget ran them one at a time"


class Upload:
    """A multipart body whose one file part streams far past the per-image limit."""

    def __init__(self, part_bytes: int) -> None:
        self.part_bytes = part_bytes
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="image[]"; filename="a.png"\r\n\r\n'
        for _ in range(self.part_bytes // MB):
            self.pulled += MB
            yield b"\0" * MB
        yield b"\r\n--b--\r\n"


async def test_an_upload_part_past_the_image_limit_is_refused_as_it_passes(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path / "d", accounts=UNLIMITED)
    config.limits.max_image_bytes = 8 * MB
    async with open_api(config) as api:
        body = Upload(200 * MB)
        r = await api.client.post(
            "/v1/images/edits", headers={**api.auth, "content-type": "multipart/form-data; boundary=b"}, content=body
        )
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("image_too_large", "image[]")
    assert body.pulled <= 10 * MB, f"read {body.pulled / MB:.0f} MB of a part limited to 8 MB"


def test_uploads_stay_in_memory_only_while_all_of_them_fit() -> None:
    budget = SpoolBudget(100)
    first, second, large = BudgetedSpool(budget, 1024), BudgetedSpool(budget, 1024), BudgetedSpool(budget, 50)
    first.write(b"a" * 60)
    second.write(b"b" * 30)
    assert (first.on_disk, second.on_disk, budget.held) == (False, False, 90)
    second.write(b"b" * 30)
    assert second.on_disk and budget.held == 60, "past the budget, a spool moves to disk and gives its bytes back"
    second.seek(0)
    assert second.read() == b"b" * 60
    large.write(b"c" * 40)
    assert not large.on_disk and budget.held == 100
    large.write(b"c" * 40)
    assert large.on_disk and budget.held == 60, "a part past its own limit moves to disk too"
    first.close()
    second.close()
    large.close()
    assert budget.held == 0


async def test_an_edit_gives_its_uploads_memory_back(tmp_path: Path) -> None:
    before = UPLOADS.held
    async with open_api(load_config(data_dir=tmp_path / "d", accounts=UNLIMITED)) as api:
        files = {"image": ("a.png", make_image(64, 64), "image/png")}
        r = await api.client.post("/v1/images/edits", headers=api.auth, data={"prompt": "invert"}, files=files)
        assert r.status_code == 200, r.text
    assert UPLOADS.held == before


@pytest.mark.e2e
def test_the_server_keeps_its_budget_under_load_and_gives_memory_back(tmp_path: Path) -> None:
    port = free_port()
    budget = decode_cost([(7070, 7070)], Size(1024, 1024))
    env = {
        **os.environ,
        "IMAGEGATE_DATA_DIR": str(tmp_path),
        "IMAGEGATE_LIMITS__DECODE_BUDGET_BYTES": str(budget),
        "IMAGEGATE_ACCOUNTS__MAX_ACTIVE_TASKS": "0",
    }
    with (tmp_path / "serve.log").open("w") as log:
        proc = start_serve(port, env, log)
    try:
        key = invoke_cli("keys", "create", "--credits", "100", env=env).stdout.strip().splitlines()[-1]
        server = psutil.Process(proc.pid)
        time.sleep(1)
        before = server.memory_info().rss
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, server.memory_info().rss)
                time.sleep(0.02)

        def edit() -> None:
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/images/edits",
                headers={"Authorization": f"Bearer {key}"},
                data={"prompt": "sepia", "size": "1024x1024"},
                files={"image": ("worst.png", WORST, "image/png")},
                timeout=120,
            )
            assert r.status_code == 200, r.text

        sampler = threading.Thread(target=sample)
        sampler.start()
        clients = [threading.Thread(target=edit) for _ in range(3)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        done.set()
        sampler.join()
        time.sleep(2)
        after = server.memory_info().rss
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert peak - before <= 1.2 * budget, f"grew {(peak - before) / MB:.0f} MB on a {budget / MB:.0f} MB budget"
    assert after <= 1.3 * before + 32 * MB, f"{before / MB:.0f} MB before, {after / MB:.0f} MB after"
