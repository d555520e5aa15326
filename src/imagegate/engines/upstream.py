"""The upstream engine: one attempt through a provider's dialect client, normalised into our images.

A dialect client (`dialects/<name>/upstream.py`, see `core/upstream.py`) speaks the wire format; this
engine bounds the attempt by the channel's timeout, maps the client's HTTP failures into our error
tree (once, for every client), downloads URL results under the §8 fetch rules, decodes b64 and data
URLs, and converts to the requested format and size where the provider did not. Retries and
failover across channels are the router's (service/router.py), not this engine's.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import anyio
import httpx

from imagegate.config import ChannelSettings, ConfigError, ImagingSettings
from imagegate.core.catalog import SizeMode
from imagegate.core.job import ImageOut, Job, Made
from imagegate.core.request import OutputFormat, Size
from imagegate.core.upstream import ClientFactory, UpstreamClient, UpstreamImage, scrub
from imagegate.engines.base import Engine, EngineContext, EngineKind
from imagegate.errors import EngineError, EngineTimeout, ImagegateError
from imagegate.imaging import alpha_in, encode, ends_whole, fit_cover, open_image, sniff
from imagegate.net.acyclic_client import AnswerTooLarge
from imagegate.net.fetch import SafeFetcher

MAX_RESULT_PIXELS = 100_000_000


class UpstreamEngine:
    """An Engine that relays to one channel's provider. Every string a provider sends back — an error's
    message, code and param, `revised_prompt`, `usage`, the task ids kept — is scrubbed of the
    channel's key here, the one place provider words become ours, before it is stored, logged or answered."""

    def __init__(
        self,
        channel: ChannelSettings,
        client: UpstreamClient,
        fetcher: SafeFetcher,
        imaging: ImagingSettings,
        secret: str = "",
    ) -> None:
        self.channel = channel
        self.client = client
        self.secret = secret
        self.fetcher = fetcher
        self.imaging = imaging
        self.name = channel.engine
        self.images_per_call = client.images_per_call
        self.can_generate = client.can_generate

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, job: Job) -> Made:
        """One attempt within the channel's timeout; EngineTimeout when it runs out."""
        model = self.channel.model_map.get(job.spec.id, job.spec.id)
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.channel.timeout_s), self._faults():
                answer = await self.client.run(job, model)
                if not answer.images:
                    raise EngineError("The upstream answered no image.")
                outs = [await self._normalise(job, image, index) for index, image in enumerate(answer.images)]
        except TimeoutError as exc:
            raise EngineTimeout(
                f"The upstream channel '{self.channel.name}' gave no complete answer within "
                f"{self.channel.timeout_s:g} s."
            ) from exc
        report = {
            "channel": self.channel.name,
            "engine": self.channel.engine,
            "model": model,
            "latency_ms": round((time.perf_counter() - started) * 1000),
            "usage": scrub(answer.usage, self.secret),
            **scrub(answer.extra, self.secret),
        }
        return Made(outs, report)

    async def probe(self) -> str:
        """The channel's one-line health report (scrubbed); raises what the client raises, scrubbed."""
        with self._faults():
            report: str = scrub(await self.client.probe(), self.secret)
            return report

    @contextmanager
    def _faults(self) -> Iterator[None]:
        """The one place a client's failures become ours: httpx's as EngineTimeout / EngineError (both
        worth retrying), and our own errors with the channel's key scrubbed from message, code and param."""
        name = self.channel.name
        try:
            yield
        except httpx.TimeoutException as exc:
            raise EngineTimeout(f"The upstream channel '{name}' timed out ({type(exc).__name__}).") from exc
        except AnswerTooLarge as exc:
            raise EngineError(f"The upstream channel '{name}' answered too much: {exc}.") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"The upstream channel '{name}' could not be reached ({type(exc).__name__}).") from exc
        except ImagegateError as exc:
            exc.message = scrub(exc.message, self.secret)
            exc.args = (exc.message,)
            exc.code = scrub(exc.code, self.secret)
            exc.param = scrub(exc.param, self.secret)
            raise

    async def _normalise(self, job: Job, image: UpstreamImage, index: int) -> ImageOut:
        if image.data is None:
            data = await self._download(image.url or "", index)
            return await anyio.to_thread.run_sync(self._convert, job, data, scrub(image.revised_prompt, self.secret))
        out = await anyio.to_thread.run_sync(self._convert, job, image.data, scrub(image.revised_prompt, self.secret))
        return replace(out, b64=image.b64) if out.data is image.data else out

    async def _download(self, url: str, index: int) -> bytes:
        try:
            fp = await self.fetcher.fetch(url, f"upstream result {index}")
        except ImagegateError as exc:
            raise EngineError(f"The upstream's result could not be downloaded: {exc.message}") from exc
        with fp:
            return fp.read()

    def _convert(self, job: Job, data: bytes, revised_prompt: str) -> ImageOut:
        """The provider's bytes as they are when they already match (and are not cut off); else
        re-encoded at the requested size (engine-sized models keep the provider's size). An image that
        cannot be decoded is the provider's fault (EngineError), not the client's."""
        fmt = sniff(data[:16])
        if fmt is None:
            raise EngineError("The upstream answered something that is not a png, jpeg or webp image.")
        want = job.request.output_format
        try:
            source = open_image(io.BytesIO(data), max_pixels=MAX_RESULT_PIXELS, param="upstream result")
        except ImagegateError as exc:
            raise EngineError(f"The upstream's image could not be read: {exc.message}") from exc
        native = Size(source.width, source.height)
        size = native if job.spec.size_mode is SizeMode.ENGINE else job.size
        if native == size and source.orientation == 1 and fmt is want and ends_whole(data, fmt):
            return ImageOut(data, want, size, alpha_in(source.image), revised_prompt)
        try:
            img = fit_cover(source.decode(), size)
        except ImagegateError as exc:
            raise EngineError(f"The upstream's image could not be decoded: {exc.message}") from exc
        encoded = encode(img, want, self.imaging, job.request.output_compression)
        transparent = want is not OutputFormat.JPEG and img.mode == "RGBA"
        return ImageOut(
            encoded, want, size, transparent, revised_prompt, resampled_from=None if native == size else native
        )


def relaying(name: str, client: ClientFactory, calls_back: Callable[[ChannelSettings], bool]) -> EngineKind:
    """The engine kind `name` that relays through the dialect client `client` makes for each channel."""

    def open_engine(context: EngineContext) -> Engine:
        channel = context.channel
        if channel is None:
            raise ConfigError(f"the '{name}' engine relays to a provider, so it serves channels only")
        relay = client(channel, context.key, context.hosts)
        return UpstreamEngine(channel, relay, context.fetcher, context.config.imaging, context.key)

    return EngineKind(name, open_engine, relays=True, calls_back=calls_back)
