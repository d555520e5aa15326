"""One checkpoint on one device: loaded once (lazily or at start), running one job at a time.

Everything here runs in worker threads and imports torch and diffusers only when a model loads. A
device's lock is held for a whole run, so two channels on one GPU take turns; a run checks its stop
event after every denoising step, so a cancelled job frees the device within one step.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from imagegate.config import ChannelSettings
from imagegate.core.request import Size
from imagegate.engines.local.checkpoints import Checkpoint, is_repo_id
from imagegate.engines.local.families import call_arguments
from imagegate.engines.local.preview import preview

log = logging.getLogger("imagegate.local")
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def device_key(device: str) -> str:
    """One name per device whatever its spelling: `cuda` is `cuda:0` (the current one), `cpu:0` is `cpu`."""
    import torch

    found = torch.device(device)
    if found.type == "cpu":
        return "cpu"
    index = found.index
    if index is None and found.type == "cuda" and torch.cuda.is_available():
        index = torch.cuda.current_device()
    return f"{found.type}:{index or 0}"


def device_lock(device: str) -> threading.Lock:
    """The one lock of `device`, shared by every channel that runs on it (however each spells it)."""
    key = device_key(device)
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


class Stopped(Exception):
    """The run was stopped between steps (its request was cancelled, timed out or its client left)."""


class OutOfMemory(Exception):
    """The device ran out of memory during the run; the model stays loaded and usable."""


@dataclass
class Work:
    """One pipeline call: `count` images of `native` size from `references` (already at the model's
    sizes), seeded, with previews after the steps listed in `preview_after`. Every family takes
    `num_images_per_prompt`, so n images are one call."""

    prompt: str
    references: list[Image.Image]
    native: Size
    count: int
    steps: int
    guidance: float
    seed: int
    preview_after: list[int] = field(default_factory=list)


Previewer = Callable[[int, Image.Image], None]
"""Receives (partial index, preview) from the worker thread; raising stops the run."""


def resolve_device(wanted: str) -> str:
    """`auto` is the first CUDA device, else Apple's MPS, else the CPU."""
    if wanted != "auto":
        return wanted
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class LocalModel:
    """A checkpoint and how a channel wants it run; `state` is `not loaded`, `loading`, `ready` or
    `failed` (with `error`)."""

    def __init__(self, checkpoint: Checkpoint, settings: ChannelSettings) -> None:
        self.checkpoint = checkpoint
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.state = "not loaded"
        self.error = ""
        self.load_seconds: float | None = None
        self.pipe: Any = None
        self._loading = threading.Lock()

    def load(self) -> Any:
        """The pipeline, loaded on first use (thread-safe); raises what loading raised."""
        with self._loading:
            if self.pipe is not None:
                return self.pipe
            self.state, started = "loading", time.perf_counter()
            try:
                with device_lock(self.device):
                    self.pipe = self._load()
            except BaseException as exc:
                self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
                raise
            self.state, self.load_seconds = "ready", time.perf_counter() - started
            log.info("loaded %s on %s in %.1f s", self.checkpoint.path, self.device, self.load_seconds)
            return self.pipe

    def _load(self) -> Any:
        import torch
        from diffusers import DiffusionPipeline

        settings = self.settings
        on_gpu = self.device != "cpu"
        dtype_name = settings.dtype if settings.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        loader: Any = DiffusionPipeline
        pipe = loader.from_pretrained(
            str(self.checkpoint.path), dtype=getattr(torch, dtype_name), local_files_only=True
        )
        pipe.set_progress_bar_config(disable=True)
        for index, lora in enumerate(settings.lora):
            source, weight_name = Path(lora.path).expanduser(), lora.weight_name
            if source.is_file():
                source, weight_name = source.parent, source.name
            where = lora.path if is_repo_id(lora.path) and not source.exists() else str(source)
            pipe.load_lora_weights(where, weight_name=weight_name, adapter_name=f"lora{index}", local_files_only=True)
        if settings.lora:
            pipe.set_adapters([f"lora{i}" for i in range(len(settings.lora))], [lora.scale for lora in settings.lora])
        offload = settings.offload if on_gpu else "none"  # on the CPU the weights are where they run
        if offload != settings.offload:
            log.info("channel %s runs on the CPU: offload = %r does nothing there", settings.name, settings.offload)
        if offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if settings.compile:
            denoiser = getattr(pipe, "transformer", None) or pipe.unet
            denoiser.compile_repeated_blocks(fullgraph=True)
        return pipe

    def warm_up(self, work: Work) -> None:
        """Load, and with `compile` run `work` once so the first request does not pay for compiling."""
        self.load()
        if self.settings.compile:
            self.render(work, threading.Event(), None)

    def render(self, work: Work, stop: threading.Event, on_preview: Previewer | None) -> list[Image.Image]:
        """`work.count` images at `work.native` size; Stopped when `stop` is set between steps,
        OutOfMemory when the device runs out of memory."""
        pipe = self.load()
        with device_lock(self.device):
            if stop.is_set():
                raise Stopped()
            return self._call(pipe, work, stop, on_preview)

    def _call(self, pipe: Any, work: Work, stop: threading.Event, on_preview: Previewer | None) -> list[Image.Image]:
        import torch

        aspect = work.native.width / work.native.height
        previews = iter(enumerate(work.preview_after)) if on_preview else iter(())
        upcoming = next(previews, None)

        def each_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            nonlocal upcoming
            if stop.is_set():
                raise Stopped()
            if upcoming is not None and on_preview is not None and step == upcoming[1]:
                on_preview(upcoming[0], preview(tensors["latents"], aspect))
                upcoming = next(previews, None)
            return tensors

        family = self.checkpoint.family
        arguments = call_arguments(family, pipe, work.prompt, work.references, work.native, work.guidance, work.count)
        try:
            out = pipe(
                **arguments,
                num_inference_steps=work.steps,
                generator=torch.Generator("cpu").manual_seed(work.seed),
                callback_on_step_end=each_step,
                callback_on_step_end_tensor_inputs=["latents"],
            )
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            # Apple's MPS reports running out of memory as a plain RuntimeError
            if not isinstance(exc, torch.OutOfMemoryError) and "out of memory" not in str(exc).lower():
                raise
            del exc
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfMemory() from None
        return [image.convert("RGB") for image in out.images]
