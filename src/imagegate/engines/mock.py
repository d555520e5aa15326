"""MockEngine: an engine built from a handler function, for tests and for anyone who wants to test their
own code against imagegate without making pixels (like httpx's MockTransport)."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

from PIL import Image

from imagegate.core.job import ImageOut, Job, Made

Handler = Callable[[Job], Awaitable[Made | list[ImageOut]]]
"""Makes the images of one call (or raises an EngineError / BadRequest leaf, as an engine would)."""


class MockEngine:
    """An Engine whose every `run` is `handler(job)`; a handler may return a bare list of images.
    `calls` counts the runs."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        name: str = "mock",
        images_per_call: int = 10,
        can_generate: bool = True,
    ) -> None:
        self.handler = handler or plain_images
        self.name = name
        self.images_per_call = images_per_call
        self.can_generate = can_generate
        self.calls = 0

    async def run(self, job: Job) -> Made:
        self.calls += 1
        made = await self.handler(job)
        return made if isinstance(made, Made) else Made(made)

    async def aclose(self) -> None:
        return None


def plain_image(job: Job, colour: tuple[int, int, int] = (128, 128, 128), revised_prompt: str = "") -> ImageOut:
    """One flat image of the job's size in its output format."""
    size, fmt = job.size, job.request.output_format
    buf = io.BytesIO()
    Image.new("RGB", (size.width, size.height), colour).save(buf, fmt.name)
    return ImageOut(buf.getvalue(), fmt, size, False, revised_prompt or job.request.prompt)


async def plain_images(job: Job) -> Made:
    """The default handler: `n` flat grey images."""
    return Made([plain_image(job) for _ in range(job.request.n)])
