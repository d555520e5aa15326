"""Channels that run on other machines (distributed mode): a local-model channel naming a procrastinate
`queue` is run by the workers that take that queue (`imagegate worker --queues gpu`, on the machines
with the GPU), and every other process hands it its engine calls.

On a process that does not take the queue, the channel's engine is a QueuedEngine: it stores the
call's inputs as blobs, defers one RUN_CHANNEL_JOB into the queue and waits for its outcome (a JSON
blob and the images), so the task, its credits and its dialect stay on the node the client called.
On the worker, `run_channel_job` opens those inputs, runs the channel's real engine and stores what
it made or the error it raised. A caller that goes away aborts the job, which stops the run at its
next step. Partial images do not cross machines: a streamed request gets only the final image.
"""

from __future__ import annotations

import logging
import re
import secrets
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import anyio
import orjson

from imagegate.config import ChannelSettings, Config
from imagegate.core.catalog import Catalog
from imagegate.core.job import ImageOut, Job, Made, Source
from imagegate.core.request import EditRequest, ImageRef, OutputFormat
from imagegate.core.sizing import parse_wxh
from imagegate.engines.base import Engine, Refusal, refusal
from imagegate.errors import BadRequest, EngineError, EngineTimeout, ImagegateError
from imagegate.net.fetch import SafeFetcher
from imagegate.service.inputs import open_inputs
from imagegate.stores.blobs import BlobStore

log = logging.getLogger("imagegate.queued")
RUN_CHANNEL_JOB = "imagegate.run_channel_job"
POLL_S = (0.05, 0.5)
"""The first and the longest wait between looks at a deferred job's status."""
HANDOVER = "rj_"
"""The prefix of the files a call hands to the workers and gets back (deleted when the call ends)."""
HANDOVER_FILE = re.compile(rf"^{HANDOVER}[0-9a-f]{{24}}(?:_in_\d+|_mask|_out_\d+|\.json)$")
"""One of those files' names, whole (a result's random id may begin with the prefix too)."""
_DONE = {"succeeded", "failed", "cancelled", "aborted"}


def _client_error(body: dict[str, Any]) -> ImagegateError:
    """The error a worker recorded, as the caller's engine raises it: the client's own mistakes stay
    400s, everything else is an engine failure."""
    status, message, param, code = body.get("status", 502), body["message"], body.get("param"), body.get("code")
    if status == 400:
        return BadRequest(message, param=param, code=code)
    blames = body.get("blames_channel", True)
    if status == 504:
        return EngineTimeout(message, param=param, code=code, retryable=False, blames_channel=blames)
    return EngineError(message, param=param, code=code, retryable=False, blames_channel=blames)


class QueuedEngine:
    """The engine of a channel whose model runs on the workers of `channel.queue`; it can do what the
    channel's engine on those workers can do (`known`, when this process can read the model's configs)."""

    def __init__(
        self, channel: ChannelSettings, known: Engine | None, queue_app: Any, blobs: BlobStore, deadline_s: float
    ) -> None:
        self.channel = channel
        self.known = known
        self.app = queue_app
        self.blobs = blobs
        self.deadline_s = deadline_s
        """The most a call may take, queue included (the workers' `handler_timeout_s`)."""
        self.name = known.name if known is not None else channel.engine
        self.images_per_call = known.images_per_call if known is not None else 10
        self.can_generate = known.can_generate if known is not None else True

    def refuses(self, request: EditRequest) -> Refusal | None:
        return refusal(self.known, request) if self.known is not None else None

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "state": f"on the workers of queue '{self.channel.queue}'"}

    async def aclose(self) -> None:
        return None

    async def run(self, job: Job) -> Made:
        call = f"{HANDOVER}{secrets.token_hex(12)}"
        names = [f"{call}_in_{index}" for index in range(len(job.images))]
        outputs = [f"{call}_out_{index}" for index in range(job.request.n)]
        async with AsyncExitStack() as cleanup:
            for name in [*names, f"{call}_mask", f"{call}.json", *outputs]:
                cleanup.push_async_callback(self.blobs.delete, name)
            images = [await self._keep(source, name) for source, name in zip(job.images, names, strict=True)]
            mask = await self._keep(job.mask, f"{call}_mask") if job.mask is not None else None
            request = replace(job.request, images=images, mask=mask, stream=False, partial_images=0)
            payload = {"call": call, "model": job.spec.id, "size": str(job.size), "request": request.to_record()}
            deferrer = self.app.configure_task(RUN_CHANNEL_JOB, queue=self.channel.queue)
            job_id = await deferrer.defer_async(channel=self.channel.name, payload=payload)
            try:
                with anyio.fail_after(self.deadline_s):
                    await self._wait(job_id)
            except TimeoutError:
                raise EngineTimeout(
                    f"No worker of queue '{self.channel.queue}' finished this request within {self.deadline_s:g} s.",
                    retryable=False,
                ) from None
            return await self._made(call)

    async def _keep(self, source: Source, name: str) -> ImageRef:
        def read() -> bytes:
            with source.lock:
                source.fp.seek(0)
                return source.fp.read()

        await self.blobs.put(name, await anyio.to_thread.run_sync(read))
        return ImageRef(param=source.param, blob=name)

    async def _wait(self, job_id: int) -> None:
        """Until the job ends; a cancelled wait aborts the job (the worker stops its run)."""
        from procrastinate.exceptions import NoResult

        manager, pause = self.app.job_manager, POLL_S[0]
        try:
            while True:
                try:
                    if (await manager.get_job_status_async(job_id)).value in _DONE:
                        return
                except NoResult:  # finished, and deleted by the worker
                    return
                await anyio.sleep(pause)
                pause = min(POLL_S[1], pause * 1.5)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await manager.cancel_job_by_id_async(job_id, abort=True)
            raise

    async def _made(self, call: str) -> Made:
        raw = await self.blobs.get(f"{call}.json")
        if raw is None:
            raise EngineError(f"The workers of queue '{self.channel.queue}' did not finish this request.")
        answer = orjson.loads(raw)
        if "error" in answer:
            raise _client_error(answer["error"])
        outs = []
        for index, item in enumerate(answer["images"]):
            data = await self.blobs.get(f"{call}_out_{index}")
            if data is None:
                raise EngineError(f"The workers of queue '{self.channel.queue}' lost an image of this request.")
            native = item.get("resampled_from")
            outs.append(
                ImageOut(
                    data,
                    OutputFormat(item["format"]),
                    parse_wxh(item["size"]),
                    item["transparent"],
                    item["revised_prompt"],
                    resampled_from=parse_wxh(native) if native else None,
                )
            )
        return Made(outs, answer.get("report"))


async def run_channel_job(
    engines: dict[str, Engine],
    catalog: Catalog,
    config: Config,
    fetcher: SafeFetcher,
    blobs: BlobStore,
    channel: str,
    payload: dict[str, Any],
) -> None:
    """On a worker: run one deferred call on `channel`'s engine (from `engines`, by channel name) and
    store its images and `{call}.json` (what was made, or the error). Cancellation (an abort) stops
    the engine and stores nothing."""
    call = payload["call"]
    try:
        engine = engines.get(channel)
        if engine is None:
            raise EngineError(f"This worker has no channel named '{channel}'.")
        request = EditRequest.from_record(payload["request"])
        spec = catalog.get(payload["model"])
        async with AsyncExitStack() as resources:
            sources = await open_inputs(request.images, fetcher, config.limits, resources, blobs)
            masks = await open_inputs([request.mask] if request.mask else [], fetcher, config.limits, resources, blobs)
            job = Job(request, spec, parse_wxh(payload["size"]), sources, masks[0] if masks else None)
            made = await engine.run(job)
        images = []
        for index, out in enumerate(made.images):
            await blobs.put(f"{call}_out_{index}", out.data)
            native = str(out.resampled_from) if out.resampled_from else None
            images.append(
                {
                    "format": out.format.value,
                    "size": str(out.size),
                    "transparent": out.transparent,
                    "revised_prompt": out.revised_prompt,
                    "resampled_from": native,
                }
            )
        answer: dict[str, Any] = {"images": images, "report": made.report}
    except ImagegateError as exc:
        answer = {"error": {"status": exc.status, "code": exc.code, "message": exc.message, "param": exc.param}}
        if isinstance(exc, EngineError):
            answer["error"]["blames_channel"] = exc.blames_channel
    except Exception as exc:
        log.error("a call on channel %s failed", channel, exc_info=exc)
        answer = {"error": {"status": 502, "code": "upstream_error", "message": "The worker's engine failed."}}
    await blobs.put(f"{call}.json", orjson.dumps(answer))
