"""(d) relay overhead: the same load sent to imagegate B directly and through imagegate A, whose only
channel is B (OpenAI dialect). 32 concurrent clients, 1 MB PNG inputs, 256² JPEG results."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.serving import serve

CLIENTS = 32
PER_CLIENT = 5


@dataclass
class Load:
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


SMALL_JPEG = {"model": "dall-e-2", "prompt": "invert", "size": "256x256", "output_format": "jpeg"}


async def load(
    base: str, key: str, png: bytes, form: dict[str, str] = SMALL_JPEG, per_client: int = PER_CLIENT
) -> Load:
    """`CLIENTS` concurrent clients each sending `per_client` multipart edits of `png` with `form`."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300, limits=limits
    ) as client:

        async def one_client() -> None:
            for _ in range(per_client):
                start = time.perf_counter()
                r = await client.post("/v1/images/edits", data=form, files=[("image", ("a.png", png, "image/png"))])
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
        return Load(time.perf_counter() - started, latencies)


def relay_overhead(tmp: Path, png: bytes) -> str:
    """The (d) line: relayed ÷ direct throughput and latency percentiles."""
    base_port = 19000 + os.getpid() % 500
    quiet = {**os.environ, "IMAGEGATE_ACCOUNTS__REQUESTS_PER_MINUTE": "0", "IMAGEGATE_ACCOUNTS__MAX_ACTIVE_TASKS": "0"}
    b, b_key = serve(tmp / "b", base_port, quiet)
    config = tmp / "a.toml"
    config.write_text(
        f'[[channels]]\nname = "b"\nbase_url = "http://127.0.0.1:{base_port}/v1"\napi_key_env = "B_KEY"\n'
    )
    a, a_key = serve(tmp / "a", base_port + 1, {**quiet, "B_KEY": b_key, "IMAGEGATE_CONFIG": str(config)})
    try:
        asyncio.run(load(f"http://127.0.0.1:{base_port}", b_key, png))
        direct = asyncio.run(load(f"http://127.0.0.1:{base_port}", b_key, png))
        relayed = asyncio.run(load(f"http://127.0.0.1:{base_port + 1}", a_key, png))
    finally:
        for proc in (a, b):
            proc.terminate()
            proc.wait(10)
    return (
        f"(d) relay A→B, {CLIENTS} clients × {PER_CLIENT}, {len(png) / 1e6:.1f} MB inputs: throughput "
        f"{relayed.throughput:.1f}/s ÷ direct {direct.throughput:.1f}/s = {relayed.throughput / direct.throughput:.3f}x; "
        f"p50 {relayed.percentile(0.5) * 1000:.0f} ms ÷ {direct.percentile(0.5) * 1000:.0f} ms = "
        f"{relayed.percentile(0.5) / direct.percentile(0.5):.3f}x; p99 {relayed.percentile(0.99) * 1000:.0f} ms ÷ "
        f"{direct.percentile(0.99) * 1000:.0f} ms = {relayed.percentile(0.99) / direct.percentile(0.99):.3f}x "
        f"(median latency {statistics.median(relayed.latencies) * 1000:.0f} ms)"
    )
