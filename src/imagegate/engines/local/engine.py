"""The local engine (`engine = "diffusers"`): open-weight models on this machine's GPU (or CPU).

One job at a time per device: a channel's jobs wait their turn in a first-come queue (channels that
share a device then take turns on its lock), and the running one is
stopped at its next denoising step when its request is cancelled, times out or its client leaves.
The model renders at its native size (its pixel budget and grid, at the request's aspect ratio) and
the result is resampled to the exact size asked for, as SPEC §4 says; the seed, steps and native size
go on the task's report.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
from PIL import Image

from imagegate.config import ChannelSettings, ImagingSettings
from imagegate.core.job import ImageOut, Job, Made
from imagegate.core.request import EditRequest, Quality, Size
from imagegate.engines.base import Refusal
from imagegate.engines.local.checkpoints import Checkpoint
from imagegate.engines.local.families import (
    MAX_REFERENCE_ASPECT,
    TURBO_STEPS,
    native_size,
    reference_size,
    within_aspect,
)
from imagegate.engines.local.model import LocalModel, OutOfMemory, Stopped, Work
from imagegate.errors import BadRequest, EngineError, EngineTimeout, ModelNotSupported
from imagegate.imaging import check_mask, confine_to_mask, encode, fit_cover

log = logging.getLogger("imagegate.local")
STEP_SHARE = {Quality.LOW: 0.5, Quality.MEDIUM: 0.75}
MAX_SEED = 2**63 - 1


def seed_of(request: EditRequest) -> int | None:
    """The request's `seed` (an extra field in every dialect), or None; BadRequest when it is not a
    whole number from 0 to 2**63 - 1."""
    raw = request.extra.get("seed")
    if raw is None or raw == "":
        return None
    try:
        seed = int(raw) if not isinstance(raw, float) or raw.is_integer() else -1
    except (TypeError, ValueError):
        seed = -1
    if not 0 <= seed <= MAX_SEED or isinstance(raw, bool):
        raise BadRequest(f"Invalid 'seed': {raw!r}; it must be a whole number from 0 to {MAX_SEED}.", param="seed")
    return seed


def preview_steps(steps: int, partial_images: int) -> list[int]:
    """The steps (0-based) after which `partial_images` previews are taken: evenly spaced, the last
    one before the final step."""
    if partial_images <= 0 or steps < 2:
        return []
    count = min(partial_images, steps - 1)
    return sorted({max(0, (steps * (index + 1)) // (count + 1) - 1) for index in range(count)})


class LocalEngine:
    """Runs one channel's checkpoint; see the module docstring."""

    name = "diffusers"
    images_per_call = 10

    def __init__(self, channel: ChannelSettings, checkpoint: Checkpoint, imaging: ImagingSettings) -> None:
        self.channel = channel
        self.checkpoint = checkpoint
        self.imaging = imaging
        self.model = LocalModel(checkpoint, channel)
        self.can_generate = checkpoint.family.generates
        self._queue = anyio.CapacityLimiter(1)
        turbo = "turbo" in str(channel.model).lower() and checkpoint.family.name.startswith("stable-diffusion")
        lora_steps = next((lora.steps for lora in channel.lora if lora.steps), None)
        self.steps = channel.steps or lora_steps or (TURBO_STEPS if turbo else checkpoint.family.steps)
        self.guidance = (
            channel.guidance if channel.guidance is not None else (0.0 if turbo else checkpoint.family.guidance)
        )

    def refuses(self, request: EditRequest) -> Refusal | None:
        """Why this model cannot serve `request`, if it cannot (a bad `seed` included)."""
        try:
            seed_of(request)
        except BadRequest as exc:
            return Refusal(exc.message, "seed", exc.code)
        family = self.checkpoint.family
        given = len(request.images)
        if given and not family.edits:
            return Refusal(
                f"This model ({family.name}, channel '{self.channel.name}') generates images from text only; "
                f"{given} image{'s were' if given > 1 else ' was'} given.",
                "image",
            )
        if not given and not family.generates:
            return Refusal(
                f"This model ({family.name}, channel '{self.channel.name}') edits images and needs at least one; "
                "none was given.",
                "image",
            )
        if given > family.references:
            takes = f"{family.references} reference image{'s' if family.references > 1 else ''}"
            return Refusal(
                f"This model ({family.name}, channel '{self.channel.name}') takes {takes}; {given} were given.",
                "image",
            )
        return None

    def health(self) -> dict[str, Any]:
        """The model's state: `not loaded`, `loading`, `ready` or `failed` (with its error)."""
        model = self.model
        report: dict[str, Any] = {"engine": self.name, "state": model.state, "device": model.device}
        report["model"] = str(self.channel.model)
        if model.error and model.state == "failed":
            report["error"] = model.error
        return report

    def small_work(self, prompt: str) -> Work:
        """One step of one small image (a grey reference for a model that only edits): for warming up
        a compiled model and for `imagegate models check`."""
        family = self.checkpoint.family
        side = max(self.checkpoint.grid * 4, family.min_reference_side)
        size = Size(side, side)
        references = [] if family.generates else [Image.new("RGB", (side, side), (128, 128, 128))]
        return Work(prompt, references, size, 1, 1, self.guidance, 0)

    def check(self) -> str:
        """Load the model and run one small step (in a worker thread); what it took, in words.
        Raises what loading or running raised."""
        self.model.load()
        started = time.perf_counter()
        self.model.render(self.small_work("check"), threading.Event(), None)
        step = time.perf_counter() - started
        loaded = self.model.load_seconds or 0.0
        return (
            f"ok: {self.checkpoint.family.name} on {self.model.device}, loaded in {loaded:.1f} s, one step {step:.2f} s"
        )

    async def start(self) -> None:
        """With `preload`, load the model now (and warm up a compiled one); a failure is kept in the
        health report and tried again by the next request."""
        if not self.channel.preload:
            return
        try:
            await anyio.to_thread.run_sync(self.model.warm_up, self.small_work("warm-up"))
        except Exception:
            log.exception("channel %s: the model did not load", self.channel.name)

    async def aclose(self) -> None:
        self.model.pipe = None

    async def run(self, job: Job) -> Made:
        req = job.request
        refused = self.refuses(req)
        if refused is not None:
            raise ModelNotSupported(refused.message, param=refused.param, code=refused.code)
        if job.mask is not None:
            check_mask(job.mask)
        seed = seed_of(req)
        seed = secrets.randbelow(2**31) if seed is None else seed
        steps = max(1, round(self.steps * STEP_SHARE.get(req.quality, 1.0)))
        native = native_size(job.size, self.checkpoint.family, self.checkpoint.pixels, self.checkpoint.grid)
        references = await anyio.to_thread.run_sync(self._references, job, native)
        work = Work(
            req.prompt,
            references,
            native,
            req.n,
            steps,
            self.guidance,
            seed,
            preview_after=preview_steps(steps, req.partial_images) if job.on_partial else [],
        )
        images = await self._render(job, work)
        outs = await anyio.to_thread.run_sync(self._finish, job, images, native)
        report = {
            "channel": self.channel.name,
            "engine": self.name,
            "model": str(self.channel.model),
            "family": self.checkpoint.family.name,
            "seed": seed,
            "steps": steps,
            "native_size": str(native),
            "device": self.model.device,
        }
        return Made(outs, report)

    def _references(self, job: Job, native: Size) -> list[Image.Image]:
        """The inputs at the sizes the model takes: the one reference of a model that keeps its input's
        size is cropped to the output's native size; others keep their aspect ratio within the budget."""
        family = self.checkpoint.family
        images = []
        for source in job.images:
            img = source.decode().convert("RGB")
            if family.name.startswith("instruct-pix2pix"):
                images.append(fit_cover(img, native))
                continue
            img = within_aspect(img, MAX_REFERENCE_ASPECT)
            size = reference_size(img, self.checkpoint.pixels, self.checkpoint.grid, family.min_reference_side)
            images.append(img if img.size == (size.width, size.height) else fit_cover(img, size))
        return images

    async def _render(self, job: Job, work: Work) -> list[Image.Image]:
        stop = threading.Event()
        on_preview = partial(self._send_preview, job) if work.preview_after else None
        try:
            async with self._queue:  # the wait for one's turn is not part of the run's time
                with anyio.fail_after(self.channel.timeout_s):
                    return await anyio.to_thread.run_sync(
                        self.model.render, work, stop, on_preview, abandon_on_cancel=True
                    )
        except TimeoutError:
            stop.set()
            raise EngineTimeout(
                f"The local model (channel '{self.channel.name}') did not finish within {self.channel.timeout_s:g} s.",
                retryable=False,
                blames_channel=False,
            ) from None
        except OutOfMemory:
            raise EngineError(
                f"The GPU ran out of memory for this request ({work.native} at {work.count} image"
                f"{'s' if work.count > 1 else ''}); ask for fewer images or a smaller size.",
                code="out_of_memory",
                retryable=False,
                blames_channel=False,
            ) from None
        except Stopped:
            raise EngineError("The local model was stopped.", retryable=False) from None
        except BaseException as exc:
            stop.set()
            if isinstance(exc, Exception) and not isinstance(exc, anyio.get_cancelled_exc_class()):
                log.error("channel %s: the model failed", self.channel.name, exc_info=exc)
                raise EngineError(
                    f"The local model (channel '{self.channel.name}') failed: {type(exc).__name__}.", retryable=False
                ) from None
            raise

    def _send_preview(self, job: Job, index: int, image: Image.Image) -> None:
        """In the worker thread: the preview at the requested size and format, sent on the event loop."""
        req = job.request
        data = encode(fit_cover(image, job.size), req.output_format, self.imaging, req.output_compression)
        sink = job.on_partial
        if sink is not None:

            async def deliver() -> None:
                await sink(index, data)

            anyio.from_thread.run(deliver)

    def _finish(self, job: Job, images: list[Image.Image], native: Size) -> list[ImageOut]:
        req = job.request
        original = fit_cover(job.images[0].decode().convert("RGB"), job.size) if job.mask and job.images else None
        outs = []
        for image in images:
            result = fit_cover(image, job.size)
            if job.mask is not None and original is not None:
                result = confine_to_mask(original, result, job.mask, job.size)
            data = encode(result, req.output_format, self.imaging, req.output_compression)
            resampled = None if native == job.size else native
            outs.append(ImageOut(data, req.output_format, job.size, False, req.prompt, resampled_from=resampled))
        return outs
