"""(f) relay cost: what relaying costs the gateway itself. 32 concurrent clients send OpenAI multipart
edits (a 1 MB PNG in) through imagegate to a minimal provider (bench/provider.py) that answers a
prebuilt 1.2 MB `b64_json` PNG already of the requested size and format, so nothing needs converting.
The same load sent to the provider directly is the baseline. Prints the gateway's CPU ms per request,
relayed ÷ direct throughput, p50 and p99 with their ratio, and the gateway's RSS idle and at its peak,
each with the issue's target beside it.

    python -m bench relay-cost
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import psutil
import pybase64
from PIL import Image

from bench.relay import CLIENTS, Load, load
from bench.serving import PeakRss, serve

PER_CLIENT = 10
TARGET_CPU_MS = 8.0
TARGET_TAIL = 2.0
TARGET_PEAK_MB = 150


def noisy_png(width: int, height: int, noisy_rows: int) -> bytes:
    """A PNG of `width`×`height` whose first `noisy_rows` rows are noise (so its size is controlled)."""
    image = Image.new("RGB", (width, height), (40, 90, 160))
    image.paste(Image.frombytes("RGB", (width, noisy_rows), os.urandom(width * noisy_rows * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def answer_body() -> bytes:
    """An ImagesResponse with one 1024² PNG of about 0.9 MB (1.2 MB as base64)."""
    png = noisy_png(1024, 1024, 290)
    return orjson.dumps(
        {
            "created": 1,
            "data": [{"b64_json": pybase64.b64encode(png).decode("ascii"), "revised_prompt": "as asked"}],
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
        }
    )


def start_provider(port: int, answer: Path, delay_s: float = 0.0) -> subprocess.Popen[bytes]:
    """bench/provider.py on `port`, answering the body in `answer` after `delay_s`."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.provider", str(port), str(answer), str(delay_s)])
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/images/edits")
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the provider did not start")


def gateway_to(
    data_dir: Path, port: int, channel: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`imagegate serve` on `port` whose one channel is `channel` (the body of a `[[channels]]` table),
    without request or active-task limits, its first key holding 10^6 credits, and its database
    migrated beforehand as a deployment does (`imagegate migrate` once per release); `env` adds to
    its environment. Returns the process and the key."""
    config = data_dir.with_suffix(".toml")
    config.write_text("[[channels]]\n" + channel)
    full = {
        **os.environ,
        "IMAGEGATE_ACCOUNTS__REQUESTS_PER_MINUTE": "0",
        "IMAGEGATE_ACCOUNTS__MAX_ACTIVE_TASKS": "0",
        "IMAGEGATE_CONFIG": str(config),
        "IMAGEGATE_FIRST_KEY_CREDITS": "1000000",
        **(env or {}),
    }
    migrate = [sys.executable, "-m", "imagegate", "migrate", "--data-dir", str(data_dir)]
    subprocess.run(migrate, env=full, check=True, capture_output=True)
    return serve(data_dir, port, full)


async def edits(base: str, key: str, png: bytes) -> Load:
    """The (f) load: 1024² PNG edits the provider answers at the same size and format."""
    return await load(base, key, png, {"model": "gpt-image-2", "prompt": "as it is", "size": "1024x1024"}, PER_CLIENT)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def relay_cost(tmp: Path) -> str:
    """The (f) lines."""
    port = 20000 + os.getpid() % 500
    answer = tmp / "answer.json"
    answer.write_bytes(answer_body())
    provider = start_provider(port, answer)
    channel = f'name = "minimal"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
    gateway, key = gateway_to(tmp / "gateway", port + 1, channel)
    png = noisy_png(1024, 1024, 330)
    try:
        server = psutil.Process(gateway.pid)
        idle = server.memory_info().rss
        asyncio.run(edits(f"http://127.0.0.1:{port + 1}", key, png))  # warm both up
        direct = asyncio.run(edits(f"http://127.0.0.1:{port}", key, png))
        cpu_before = cpu_seconds(server)
        with PeakRss(gateway.pid) as rss:
            relayed = asyncio.run(edits(f"http://127.0.0.1:{port + 1}", key, png))
        cpu = cpu_seconds(server) - cpu_before
        peak = max(idle, rss.peak)
    finally:
        for proc in (gateway, provider):
            proc.terminate()
            proc.wait(10)
    requests = len(relayed.latencies)
    cpu_ms = cpu * 1000 / requests
    p50, p99 = relayed.percentile(0.5), relayed.percentile(0.99)
    mb = 1e6
    return (
        f"(f) relay cost, {CLIENTS} clients × {PER_CLIENT} edits, {len(png) / mb:.1f} MB in, "
        f"{answer.stat().st_size / mb:.1f} MB answer passed through:\n"
        f"    gateway CPU {cpu_ms:.1f} ms/request (target ≤ {TARGET_CPU_MS:g}); throughput "
        f"{relayed.throughput:.1f}/s ÷ direct {direct.throughput:.1f}/s = {relayed.throughput / direct.throughput:.3f}x\n"
        f"    p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms: p99 ÷ p50 = {p99 / p50:.2f}x (target ≤ {TARGET_TAIL:g}x)\n"
        f"    gateway RSS idle after start {idle / mb:.0f} MB, peak {peak / mb:.0f} MB (target ≤ {TARGET_PEAK_MB})"
    )
