"""Engines for tests: real Engine implementations whose behaviour a test controls."""

from __future__ import annotations

import asyncio

from PIL import Image

from imagegate.config import ImagingSettings
from imagegate.core.job import ImageOut, Job, Made
from imagegate.errors import EngineError
from imagegate.imaging import encode


class OnePerCall:
    """Makes one plain image per call; fails the calls listed in `fail_calls`; with a `gate`, every
    call waits until the gate is set (so a test can hold tasks running)."""

    name = "one-per-call"
    images_per_call = 1
    can_generate = True

    def __init__(self, fail_calls: set[int] | None = None, gate: asyncio.Event | None = None) -> None:
        self.fail_calls = fail_calls or set()
        self.gate = gate
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.started = asyncio.Event()
        """Set when the first call starts."""

    async def run(self, job: Job) -> Made:
        index = self.calls
        self.calls += 1
        self.started.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)
            if self.gate is not None:
                await self.gate.wait()
            if index in self.fail_calls:
                raise EngineError("the upstream refused this one")
            img = Image.new("RGB", (job.size.width, job.size.height), (index * 40 % 255, 0, 0))
            data = encode(img, job.request.output_format, ImagingSettings())
            return Made([ImageOut(data, job.request.output_format, job.size, False, f"image {index}")])
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None
