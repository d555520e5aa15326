"""Benchmarks; each figure is a ratio against a baseline measured in the same run.

    python -m bench            (or: make bench)

(a) gateway overhead: wall time of one 1024² classic edit through the HTTP API of a live server
    (loopback, b64_json, sent with aiohttp) divided by the codec floor (decoding the same PNG and
    encoding the edit's result in-process, as the engine does; target ≤ 1.2×), and by the whole edit
    called in-process, the three taken in turn in each round so that noise slows them alike; the same
    upload and answer moved to and from a minimal server (bench/provider.py answering the gateway's own
    answer), which with the in-process edit is the least (a) can read; and the same edit sent with
    httpx, whose reading of the 4 MB answer is part of it.
(b) upload memory: the server's peak RSS growth while it accepts and edits 16 × 10 MB images in one
    multipart request, divided by the upload size.
(c) bookkeeping: wall time of a tiny paid edit (64² PNG to a 256² PNG URL, dall-e-2) through the HTTP
    API divided by its `?dry_run=true` (the same auth, rate limit, parsing and validation, but no task
    row, credit hold, engine run, stored file or settlement); and the engine's own run of that edit
    in-process, so what is left is the bookkeeping.
(c') the bookkeeping alone, called in-process on SQLite, divided by one read of the key (bench/bookkeeping.py).
(d) relay overhead: throughput and p50/p99 latency of 32 concurrent clients sending 1 MB images through
    imagegate A (its one channel: imagegate B) divided by the same load sent to B directly.
(e) memory under hostile images: peak RSS under 8 concurrent clients each sending the worst accepted
    input, divided by the decoded-pixel budget; RSS 60 s after the load divided by RSS before it.
(f) relay cost: the gateway's CPU per relayed edit, relayed ÷ direct throughput, p99 ÷ p50 and peak
    RSS, relaying to a minimal provider (bench/provider.py) an answer it passes through untouched.
(g) many slow requests: 2,000 concurrent sync edits relayed to a provider that takes 20 s each: how many
    succeed, wall time ÷ the provider's delay, the gateway's peak RSS and open descriptors.

(h) local engine overhead: a tiny FLUX.2 klein edit through the HTTP API ÷ the same pipeline called
    directly in-process (same reference, prompt, steps and seed; target ≤ 1.05×).
(i) distributed ÷ embedded: 200 async tasks and 100 sync edits against 2 API nodes + 2 workers on
    PostgreSQL, and against 1 node on SQLite: async throughput, sync throughput, p50 and p99.

    python -m bench classic       (a), (c), (c') and (b) alone
    python -m bench bookkeeping   (c') alone
    python -m bench memory        (e) alone
    python -m bench relay-cost    (f) alone
    python -m bench slow          (g) alone
    python -m bench local         (h) alone
    python -m bench distributed   (i) alone
    python -m bench takeover      (j), not in the full run (about 2 minutes, mostly waiting): how long a
                                  SIGKILLed worker's task waits, with the default and shorter timings
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import orjson
import psutil
from PIL import Image

from bench.bookkeeping import bookkeeping
from bench.distributed import distributed_vs_embedded
from bench.local_engine import local_engine_overhead
from bench.memory import memory_under_attack
from bench.relay import relay_overhead
from bench.relay_cost import relay_cost, start_provider
from bench.serving import PeakRss, free_port, serve
from bench.slow_relay import slow_relay
from bench.takeover import takeover
from imagegate.config import ImagingSettings
from imagegate.core.catalog import Catalog
from imagegate.core.job import Job
from imagegate.core.request import EditRequest, OutputFormat, Size
from imagegate.engines.classic.engine import ClassicEngine
from imagegate.imaging import encode, open_image

ROUNDS = 15
TARGET_FLOOR = 1.2
TARGET_BOOKKEEPING = 1.5
CLASSIC_FORM = {"prompt": "sepia", "size": "1024x1024"}
"""The fields of the 1024² classic edit of (a)."""


def picture(width: int, height: int, level: int = 1) -> bytes:
    noise = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def in_process_edit(
    png: bytes, model: str = "gpt-image-2", prompt: str = "sepia", size: int = 1024
) -> tuple[float, bytes]:
    """The median time of a classic edit of `png` (`model`, `prompt`, a `size`² PNG out) called
    in-process, and the PNG it makes."""
    edit = InProcessEdit(model, prompt, size)

    async def rounds() -> list[float]:
        return [(await edit.once(png))[0] for _ in range(ROUNDS)]

    times = asyncio.run(rounds())
    return statistics.median(times), edit.made


class InProcessEdit:
    """A classic edit (`model`, `prompt`, a `size`² PNG out) called in-process; `made` is its last PNG."""

    def __init__(self, model: str = "gpt-image-2", prompt: str = "sepia", size: int = 1024) -> None:
        self.engine = ClassicEngine(ImagingSettings())
        self.spec = Catalog.from_config({}).get(model)
        self.request = EditRequest(prompt=prompt, model=model, size=f"{size}x{size}")
        self.size = Size(size, size)
        self.made = b""

    async def once(self, png: bytes) -> tuple[float, bytes]:
        """How long one edit of `png` took, opening it included, and the PNG it made."""
        start = time.perf_counter()
        source = open_image(io.BytesIO(png), max_pixels=10**8, param="image")
        self.made = (await self.engine.run(Job(self.request, self.spec, self.size, [source]))).images[0].data
        return time.perf_counter() - start, self.made


def transport_alone(base: str, key: str, png: bytes, data_dir: Path) -> float:
    """`lean_http_edit` of `png` sent to bench/provider.py answering the very bytes the gateway at
    `base` answers it: uploading, answering and the client's own parsing, with no gateway."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        answer = client.post(
            "/v1/images/edits",
            data=CLASSIC_FORM,
            files=[("image", ("a.png", png, "image/png"))],
        )
    answer.raise_for_status()
    body = data_dir / "classic-answer.json"
    body.write_bytes(answer.content)
    port = free_port()
    provider = start_provider(port, body)
    try:
        lean_http_edit(f"http://127.0.0.1:{port}", key, png)
        return lean_http_edit(f"http://127.0.0.1:{port}", key, png)
    finally:
        provider.terminate()
        provider.wait(10)


def classic_rounds(base: str, key: str, png: bytes) -> tuple[float, float, float]:
    """Medians of the codec floor, the in-process edit and the edit over HTTP (`lean_http_edit`'s
    way) of `png`, taken in turn within each round so that a noisy machine slows all three alike.

    The floor decodes `png` (1024²) and encodes the edit's result pixels as a PNG as the engine does:
    what this edit costs without the edit's own operation or any serving. (The result, not the input,
    is encoded: sepia pixels deflate faster than the noise they were made from.)"""
    settings = ImagingSettings()
    edit = InProcessEdit()
    floors: list[float] = []
    locals_: list[float] = []
    remotes: list[float] = []

    async def rounds() -> None:
        pixels = None
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            for n in range(ROUNDS * 2 + 2):
                local, made = await edit.once(png)
                if pixels is None:
                    pixels = open_image(io.BytesIO(made), max_pixels=10**8, param="image").decode()
                start = time.perf_counter()
                open_image(io.BytesIO(png), max_pixels=10**8, param="image").decode()
                encode(pixels, OutputFormat.PNG, settings)
                floor = time.perf_counter() - start
                remote = await _lean_edit_once(session, base, png)
                if n >= 2:  # the first rounds warm the server, the codecs and the connection
                    floors.append(floor)
                    locals_.append(local)
                    remotes.append(remote)

    asyncio.run(rounds())
    return statistics.median(floors), statistics.median(locals_), statistics.median(remotes)


async def _lean_edit_once(session: aiohttp.ClientSession, base: str, png: bytes) -> float:
    form = aiohttp.FormData(CLASSIC_FORM)
    form.add_field("image", png, filename="a.png", content_type="image/png")
    start = time.perf_counter()
    async with session.post(f"{base}/v1/images/edits", data=form) as r:
        r.raise_for_status()
        orjson.loads(await r.read())
    return time.perf_counter() - start


def lean_http_edit(base: str, key: str, png: bytes) -> float:
    """`http_edit` sent with aiohttp, whose C parser takes the 4 MB answer in a few ms where httpx
    takes tens: what the gateway adds, less what the client itself costs."""

    async def rounds() -> list[float]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            return [await _lean_edit_once(session, base, png) for _ in range(ROUNDS)]

    return statistics.median(asyncio.run(rounds()))


def http_edit(base: str, key: str, png: bytes) -> float:
    times = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            r = client.post(
                "/v1/images/edits",
                data=CLASSIC_FORM,
                files=[("image", ("a.png", png, "image/png"))],
            )
            r.raise_for_status()
            r.json()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def tiny_edit(base: str, key: str, png: bytes, query: str) -> float:
    times = []
    form = {"model": "dall-e-2", "prompt": "invert", "size": "256x256", "response_format": "url"}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for _ in range(ROUNDS * 2):
            start = time.perf_counter()
            r = client.post(f"/v1/images/edits{query}", data=form, files=[("image", ("a.png", png, "image/png"))])
            r.raise_for_status()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    if sys.argv[1:] == ["memory"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(memory_under_attack(Path(tmp)))
        return
    if sys.argv[1:] == ["bookkeeping"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(bookkeeping(Path(tmp)))
        return
    if sys.argv[1:] == ["relay-cost"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(relay_cost(Path(tmp)))
        return
    if sys.argv[1:] == ["local"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(local_engine_overhead(Path(tmp)))
        return
    if sys.argv[1:] == ["slow"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(slow_relay(Path(tmp)))
        return
    if sys.argv[1:] == ["takeover"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(takeover(Path(tmp)))
        return
    if sys.argv[1:] == ["distributed"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(distributed_vs_embedded(Path(tmp)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        port = 18000 + os.getpid() % 1000
        proc, key = serve(Path(tmp) / "data", port)
        base = f"http://127.0.0.1:{port}"
        try:
            png = picture(1024, 1024)
            http_edit(base, key, png)
            floor, local, lean = classic_rounds(base, key, png)
            remote = http_edit(base, key, png)
            moving = transport_alone(base, key, png, Path(tmp))
            print(
                f"(a) gateway overhead, 1024² classic edit: HTTP {lean * 1000:.1f} ms / codec floor "
                f"{floor * 1000:.1f} ms = {lean / floor:.3f}x (target ≤ {TARGET_FLOOR:g}x); / the in-process edit "
                f"{local * 1000:.1f} ms = {lean / local:.3f}x (+{(lean - local) * 1000:.1f} ms)\n"
                f"    the same upload and answer to a minimal server, no gateway: {moving * 1000:.1f} ms; "
                f"in-process edit + that = {(local + moving) / floor:.3f}x the floor (the least (a) can read)\n"
                f"    with httpx as the client: {remote * 1000:.1f} ms = {remote / floor:.3f}x the floor"
            )

            small = picture(64, 64)
            tiny_edit(base, key, small, "?dry_run=true")
            dry = tiny_edit(base, key, small, "?dry_run=true")
            paid = tiny_edit(base, key, small, "")
            engine, _ = in_process_edit(small, "dall-e-2", "invert", 256)
            print(
                f"(c) bookkeeping, tiny paid edit: {paid * 1000:.1f} ms / its dry run {dry * 1000:.1f} ms = "
                f"{paid / dry:.3f}x (target ≤ {TARGET_BOOKKEEPING:g}x; +{(paid - dry) * 1000:.1f} ms)\n"
                f"    of which the engine's own run (in-process, 256² PNG out) {engine * 1000:.1f} ms; the rest, "
                f"{(paid - dry - engine) * 1000:.1f} ms, is the task's records, hold, file and settlement: "
                f"(paid - engine) / dry = {(paid - engine) / dry:.3f}x"
            )

            print(bookkeeping(Path(tmp)))

            big = picture(1825, 1825, level=0)
            upload = [("image[]", (f"{i}.png", big, "image/png")) for i in range(16)]
            total = len(big) * 16
            status: list[int] = []

            def send() -> None:
                with httpx.Client(timeout=300) as client:
                    r = client.post(
                        f"{base}/v1/images/edits",
                        headers={"Authorization": f"Bearer {key}"},
                        data={"prompt": "grayscale", "size": "2048x1152"},
                        files=upload,
                    )
                    status.append(r.status_code)

            before = psutil.Process(proc.pid).memory_info().rss
            with PeakRss(proc.pid) as rss:
                send()
            peak = rss.peak
            assert status == [200], status
            growth = peak - before
            print(
                f"(b) upload memory, 16 × {len(big) / 1e6:.1f} MB in one request: peak RSS growth "
                f"{growth / 1e6:.1f} MB / upload {total / 1e6:.1f} MB = {growth / total:.3f}x"
            )
        finally:
            proc.terminate()
            proc.wait(10)
        if sys.argv[1:] == ["classic"]:
            return
        print(relay_overhead(Path(tmp), picture(580, 580, level=0)))
        print(memory_under_attack(Path(tmp)))
        print(relay_cost(Path(tmp)))
        print(slow_relay(Path(tmp)))
        print(local_engine_overhead(Path(tmp)))
        print(distributed_vs_embedded(Path(tmp)))


if __name__ == "__main__":
    main()
