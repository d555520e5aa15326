"""The Engine protocol: who makes pixels. Our types in, our types out (DESIGN principle 1)."""

from __future__ import annotations

from typing import Protocol

from imagegate.core.job import Job, Made


class Engine(Protocol):
    """Makes images. `run` returns exactly `job.request.n` images (or fewer, when a provider ignored
    `n`; the service asks again) or raises an EngineError leaf (or a BadRequest leaf for input the
    engine cannot use); nothing from a provider escapes."""

    name: str
    images_per_call: int
    """How many images one `run` may return; the service fans out beyond this (SPEC §3)."""
    can_generate: bool

    async def run(self, job: Job) -> Made: ...

    async def aclose(self) -> None: ...
