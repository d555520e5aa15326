"""(e) memory under hostile images: 8 concurrent clients each send the worst input the default limits
accept (7070 x 7070 pixels of 16-bit RGBA, under 1 MB as a PNG) to a server with a decoded-pixel budget.

Figures: the server's peak RSS divided by its budget (target <= 1.2), and its RSS 60 s after the load
divided by its RSS before the load (target <= 1.3).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import psutil

from bench.serving import PeakRss, serve
from imagegate.core.request import Size
from imagegate.service.budget import decode_cost

CLIENTS = 8
OUTPUT = Size(3840, 2160)
SETTLE_S = 60


def png16_rgba(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGBA PNG of a horizontal gradient: tiny on the wire, `width*height` pixels
    when decoded (every row after the first is filtered 'up' to zeros)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytearray()
    for x in range(width):
        v = x * 65535 // max(1, width - 1)
        row += struct.pack(">HHHH", v, 65535 - v, v // 2, 65535)
    packer = zlib.compressobj(6)
    data = [packer.compress(b"\x00" + bytes(row))]
    zero = b"\x02" + bytes(len(row))
    data += [packer.compress(zero) for _ in range(height - 1)]
    data.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(data)) + chunk(b"IEND", b"")


def memory_under_attack(tmp: Path) -> str:
    worst = png16_rgba(7070, 7070)
    budget = 2 * decode_cost([(7070, 7070)], OUTPUT)  # room for two of them at once
    port = 19000 + os.getpid() % 1000
    env = {
        **os.environ,
        "IMAGEGATE_LIMITS__DECODE_BUDGET_BYTES": str(budget),
        "IMAGEGATE_ACCOUNTS__MAX_ACTIVE_TASKS": "0",
        "IMAGEGATE_ACCOUNTS__REQUESTS_PER_MINUTE": "0",
    }
    proc, key = serve(tmp / "memory", port, env)
    base = f"http://127.0.0.1:{port}"
    try:
        server = psutil.Process(proc.pid)
        time.sleep(2)
        before = server.memory_info().rss
        statuses: list[int] = []

        def attack() -> None:
            r = httpx.post(
                f"{base}/v1/images/edits",
                headers={"Authorization": f"Bearer {key}"},
                data={"prompt": "sepia", "size": str(OUTPUT)},
                files={"image": ("worst.png", worst, "image/png")},
                timeout=600,
            )
            statuses.append(r.status_code)

        started = time.perf_counter()
        with PeakRss(proc.pid) as rss:
            clients = [threading.Thread(target=attack) for _ in range(CLIENTS)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
        took = time.perf_counter() - started
        peak = max(before, rss.peak)
        time.sleep(SETTLE_S)
        after = server.memory_info().rss
    finally:
        proc.terminate()
        proc.wait(10)
    assert statuses == [200] * CLIENTS, statuses
    mb = 1024 * 1024
    return (
        f"(e) memory, {CLIENTS} clients x the worst input ({len(worst) / 1e3:.0f} KB PNG, 7070² 16-bit RGBA, "
        f"{OUTPUT} out, {took:.1f} s): peak RSS {peak / mb:.0f} MiB / budget {budget / mb:.0f} MiB = "
        f"{peak / budget:.2f}x; RSS {SETTLE_S} s after {after / mb:.0f} MiB / before {before / mb:.0f} MiB = "
        f"{after / before:.2f}x"
    )
