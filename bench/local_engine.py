"""(h) the local engine's own overhead: a tiny FLUX.2 klein edit through the HTTP API of a live server
(the OpenAI dialect, b64_json) divided by the same pipeline called directly in-process with the same
reference, prompt, steps and seed. The pipeline is tiny but run for enough steps that one call takes
about a second, as a small real model's does on a CPU (SD-Turbo, one step at 512²); what the server
adds (HTTP, inputs, the queue, resampling the 64² render to the requested 1024², PNG encoding,
bookkeeping) is the difference, printed in milliseconds beside the ratio, which depends on how long
the pipeline runs."""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.serving import serve

STEPS = 48
ROUNDS = 9
TARGET = 1.05
SIZE = "1024x1024"


def _reference() -> bytes:
    img = Image.effect_mandelbrot((64, 64), (-2.0, -1.2, 1.0, 1.2), 40).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _direct(model: Path, reference: bytes) -> Callable[[], float]:
    """One call of the pipeline, loaded as the engine loads it: its seconds."""
    import torch
    from diffusers import DiffusionPipeline

    loader: Any = DiffusionPipeline
    pipe = loader.from_pretrained(str(model), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(io.BytesIO(reference)).convert("RGB")
    layers = pipe.text_encoder.config.num_hidden_layers

    def once() -> float:
        started = time.perf_counter()
        pipe(
            prompt="a boat on a lake",
            image=[image],
            height=64,
            width=64,
            num_inference_steps=STEPS,
            guidance_scale=1.0,
            text_encoder_out_layers=(layers - 1,),
            generator=torch.Generator("cpu").manual_seed(1),
        )
        return time.perf_counter() - started

    return once


def _through_server(client: httpx.Client, reference: bytes) -> Callable[[], float]:
    """One edit through the server: its seconds."""
    form = {"model": "gpt-image-2", "prompt": "a boat on a lake", "size": SIZE, "seed": "1"}
    files = [("image", ("ref.png", reference, "image/png"))]

    def once() -> float:
        started = time.perf_counter()
        r = client.post("/v1/images/edits", data=form, files=files)
        r.raise_for_status()
        r.json()
        return time.perf_counter() - started

    return once


def settled(once: Callable[[], float]) -> float:
    """`once()` after a pause, so that neither side's leftover work overlaps the other's timing."""
    time.sleep(0.3)
    return once()


def local_engine_overhead(tmp: Path) -> str:
    """Rounds alternate between the server and the direct call (one process runs at a time); medians."""
    from tests.tiny_pipelines import save_tiny_pipelines

    model = save_tiny_pipelines(tmp / "models", only=("klein",))["klein"]
    config = tmp / "local.toml"
    config.write_text(
        f'[[channels]]\nname = "klein"\nengine = "diffusers"\nmodel = "{model}"\n'
        f'models = ["gpt-image-2"]\nsteps = {STEPS}\npreload = true\n'
    )
    reference = _reference()
    direct = _direct(model, reference)
    port = 19000 + os.getpid() % 1000
    proc, key = serve(tmp / "local-data", port, {**os.environ, "IMAGEGATE_CONFIG": str(config)})
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            served = _through_server(client, reference)
            served(), direct()
            pairs = [(settled(served), settled(direct)) for _ in range(ROUNDS)]
    finally:
        proc.terminate()
        proc.wait(10)
    http = statistics.median(pair[0] for pair in pairs)
    alone = statistics.median(pair[1] for pair in pairs)
    return (
        f"(h) local engine overhead, tiny FLUX.2 klein edit ({STEPS} steps, 64² native, {SIZE} PNG out): "
        f"HTTP {http * 1000:.0f} ms / the pipeline called directly {alone * 1000:.0f} ms = "
        f"{http / alone:.3f}x (target ≤ {TARGET:g}x; {(http - alone) * 1000:+.0f} ms)"
    )
