"""(g) many slow requests: 2,000 concurrent sync edits (a 50 KB PNG in, 256² out) relayed by imagegate
to a minimal provider (bench/provider.py) that takes 20 s over each. All must succeed with the
gateway's RSS ≤ 400 MB. Prints the successes, the wall time ÷ the provider's delay (the baseline: 1.0
would be no waiting beyond the provider's own), the gateway's peak RSS and its peak of open descriptors.

The gateway is configured as an operator would for this load: the channel's `max_concurrency` at
2,000 (its default, 64, would queue the rest) and no per-client connection cap (every client here
comes from 127.0.0.1, as it would behind a reverse proxy).

    python -m bench slow
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import psutil
import pybase64

from bench.relay_cost import gateway_to, noisy_png, start_provider
from bench.serving import PeakDescriptors, PeakRss

REQUESTS = 2000
DELAY_S = 20.0
TARGET_PEAK_MB = 400
FORM = {"model": "dall-e-2", "prompt": "as it is", "size": "256x256"}


async def many(base: str, key: str, png: bytes) -> tuple[Counter[str], float]:
    """`REQUESTS` edits at once; how they ended (status codes or error names) and the wall time."""
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    timeout = httpx.Timeout(DELAY_S * 6, connect=DELAY_S * 3)
    ended: Counter[str] = Counter()
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout, limits=limits
    ) as client:

        async def one() -> None:
            try:
                r = await client.post("/v1/images/edits", data=FORM, files=[("image", ("a.png", png, "image/png"))])
                ended[str(r.status_code)] += 1
            except httpx.HTTPError as exc:
                ended[type(exc).__name__] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(REQUESTS)))
        return ended, time.perf_counter() - started


def slow_relay(tmp: Path) -> str:
    """The (g) lines."""
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    port = 21000 + os.getpid() % 500
    answer = tmp / "small-answer.json"
    picture = pybase64.b64encode(noisy_png(256, 256, 60)).decode("ascii")
    answer.write_bytes(orjson.dumps({"created": 1, "data": [{"b64_json": picture}]}))
    provider = start_provider(port, answer, DELAY_S)
    channel = (
        f'name = "slow"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f"max_concurrency = {REQUESTS}\ntimeout_s = {DELAY_S * 4}\n"
    )
    gateway, key = gateway_to(tmp / "slow", port + 1, channel, {"IMAGEGATE_LIMITS__MAX_CONNECTIONS_PER_CLIENT": "0"})
    png = noisy_png(256, 256, 60)
    try:
        idle = psutil.Process(gateway.pid).memory_info().rss
        with PeakRss(gateway.pid) as rss, PeakDescriptors(gateway.pid) as fds:
            ended, seconds = asyncio.run(many(f"http://127.0.0.1:{port + 1}", key, png))
    finally:
        for proc in (gateway, provider):
            proc.terminate()
            proc.wait(10)
    mb = 1e6
    return (
        f"(g) many slow requests, {REQUESTS} at once, {len(png) / 1e3:.0f} KB in, provider {DELAY_S:g} s each: "
        f"{ended.get('200', 0)}/{REQUESTS} succeeded ({', '.join(f'{k}: {v}' for k, v in sorted(ended.items()))})\n"
        f"    wall {seconds:.1f} s ÷ the provider's {DELAY_S:g} s = {seconds / DELAY_S:.2f}x; gateway RSS idle "
        f"{idle / mb:.0f} MB, peak {max(idle, rss.peak) / mb:.0f} MB (target ≤ {TARGET_PEAK_MB}); peak open "
        f"descriptors {fds.peak} (limit {most})"
    )
