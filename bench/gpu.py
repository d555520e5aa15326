"""GPU figures for the local engine, on full-size architectures with random weights (speed does not
depend on the weight values), built from their published configurations in bf16:

    python -m bench.gpu             on a CUDA machine (about 5–10 minutes on an H100)
    python -m bench.gpu --tiny      the same code on tiny configurations, on the CPU, to check it runs

For FLUX.2 klein 4B (5 double + 20 single blocks, 24 heads × 128, 128 latent channels; its Qwen3-4B
text encoder's three hidden layers make 7680-wide prompt embeddings) and Qwen-Image-Edit-2511 (the
20B Qwen-Image transformer, diffusers' default configuration; true CFG: two passes per step):
seconds per step and per 1024² edit of one 1024² reference at the default steps and at 8 and 4, peak
GPU memory, each with and without `compile` (regional torch.compile of the repeated blocks).
Prompt embeddings are given as random tensors of the text encoders' width, so the text encoders
(Qwen3-4B, Qwen2.5-VL-7B) are neither built nor timed: they run once per request, not per step.

Then the engine itself: a queue of 8 requests through LocalEngine (its FIFO queue, worker thread,
one job at a time) on the klein pipeline, and the share of the wall time the GPU spent inside the
pipeline calls (target ≥ 95%: no idle gaps between jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imagegate.config import ChannelSettings, ImagingSettings
from imagegate.core.catalog import Catalog
from imagegate.core.job import Job
from imagegate.core.request import EditRequest, Size
from imagegate.engines.local.checkpoints import Checkpoint
from imagegate.engines.local.engine import LocalEngine
from imagegate.engines.local.families import family_of

TARGET_BUSY = 0.95


def diffusers() -> Any:
    """The diffusers package, untyped (its model and pipeline constructors carry no annotations)."""
    return importlib.import_module("diffusers")


def klein(tiny: bool, device: str, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """The FLUX.2 klein pipeline (a tiny text encoder beside it; prompts come as embeddings)."""
    from tests.tiny_pipelines import flux2_klein

    d = diffusers()
    small = flux2_klein()
    if tiny:
        transformer, vae, width = small.transformer, small.vae, 16
    else:
        transformer = d.Flux2Transformer2DModel(
            patch_size=1,
            in_channels=128,
            num_layers=5,
            num_single_layers=20,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=7680,
            timestep_guidance_channels=256,
            axes_dims_rope=(32, 32, 32, 32),
            guidance_embeds=False,
        )
        vae, width = d.AutoencoderKLFlux2(), 7680
    pipe = d.Flux2KleinPipeline(
        scheduler=d.FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=small.text_encoder,
        tokenizer=small.tokenizer,
        transformer=transformer,
        is_distilled=True,
    ).to(device, dtype)
    embeds = torch.randn(1, 512, width, device=device, dtype=dtype)
    return pipe, {"prompt_embeds": embeds, "guidance_scale": 1.0}


def qwen_edit(tiny: bool, device: str, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """Qwen-Image-Edit-Plus (2509/2511) with true CFG, prompts as embeddings (no VL encoder)."""
    d = diffusers()

    if tiny:
        transformer = d.QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            axes_dims_rope=(8, 4, 4),
        )
        vae = d.AutoencoderKLQwenImage(
            base_dim=24,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
        width = 16
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

        # the pipeline resizes references to ~1 MP for the VAE whatever the model: not for tiny ones
        pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE = 64 * 64
    else:
        transformer, vae, width = d.QwenImageTransformer2DModel(), d.AutoencoderKLQwenImage(), 3584
    pipe = d.QwenImageEditPlusPipeline(
        scheduler=d.FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        processor=None,
        transformer=transformer,
    ).to(device, dtype)
    embeds = torch.randn(1, 256, width, device=device, dtype=dtype)
    mask = torch.ones(1, 256, device=device, dtype=torch.long)
    return pipe, {
        "prompt_embeds": embeds,
        "prompt_embeds_mask": mask,
        "negative_prompt_embeds": embeds.clone(),
        "negative_prompt_embeds_mask": mask,
        "true_cfg_scale": 4.0,
    }


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(call: Callable[[], object], device: str, rounds: int) -> float:
    """Median seconds of `call` after one warm-up call."""
    call()
    times = []
    for _ in range(rounds):
        synchronize(device)
        started = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def architecture(name: str, pipe: Any, args: dict[str, Any], default_steps: int, side: int, device: str) -> None:
    reference = Image.new("RGB", (side, side), (120, 140, 160))
    rounds = 1 if device == "cpu" else 2
    pipe.set_progress_bar_config(disable=True)

    def edit(steps: int) -> Callable[[], object]:
        return lambda: pipe(image=[reference], height=side, width=side, num_inference_steps=steps, **args)

    for compiled in (False, True):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            if compiled:
                pipe.transformer.compile_repeated_blocks(fullgraph=True)
            seconds = {steps: timed(edit(steps), device, rounds) for steps in (4, 8)}
        except Exception as exc:  # compiling needs a C compiler and a supported graph
            print(f"  {name}{' compiled' if compiled else ''}: failed ({type(exc).__name__}: {exc})")
            continue
        per_step = (seconds[8] - seconds[4]) / 4
        seconds[default_steps] = seconds[4] + (default_steps - 4) * per_step
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        runs = ", ".join(f"{steps} steps {value:.2f} s" for steps, value in sorted(seconds.items()))
        print(
            f"  {name}{' compiled' if compiled else ''}: {per_step:.3f} s/step; {side}² edit: {runs}"
            f"{'' if default_steps in (4, 8) else f' (the default {default_steps} from the per-step time)'}; "
            f"peak GPU memory {peak:.1f} GiB"
        )


async def busy_share(pipe: Any, args: dict[str, Any], side: int, steps: int) -> tuple[float, float]:
    """(wall seconds, share of it inside pipeline calls) for 8 requests queued at once on LocalEngine."""
    family = family_of("Flux2KleinPipeline")
    assert family is not None
    channel = ChannelSettings(name="klein", engine="diffusers", model="in-memory", steps=steps, device=str(pipe.device))
    engine = LocalEngine(
        channel, Checkpoint(Path("in-memory"), "Flux2KleinPipeline", family, side * side, 16), ImagingSettings()
    )
    inside: list[float] = []
    call = pipe.__call__

    def measured(**kwargs: Any) -> Any:
        kwargs.pop("prompt", None)
        kwargs.pop("text_encoder_out_layers", None)
        started = time.perf_counter()
        out = call(**{**kwargs, **args})
        synchronize(str(pipe.device))
        inside.append(time.perf_counter() - started)
        return out

    engine.model.pipe, engine.model.state = measured_pipe(pipe, measured), "ready"
    spec = Catalog.from_config({}).get("gpt-image-2")
    jobs = [Job(EditRequest(prompt=f"request {i}", size=f"{side}x{side}"), spec, Size(side, side)) for i in range(8)]
    await engine.run(jobs[0])  # warm: a compiled model compiles for this call's shapes first
    inside.clear()
    started = time.perf_counter()
    await asyncio.gather(*(engine.run(job) for job in jobs))
    wall = time.perf_counter() - started
    return wall, sum(inside) / wall


class measured_pipe:
    """The pipeline with its call replaced by `call` (attributes pass through)."""

    def __init__(self, pipe: Any, call: Callable[..., Any]) -> None:
        self._pipe, self._call = pipe, call

    def __call__(self, **kwargs: Any) -> Any:
        return self._call(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configurations on the CPU (checks the script)")
    tiny = parser.parse_args().tiny
    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny to check the script on the CPU")
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.set_default_dtype(dtype)  # a 20B model built in float32 would not fit before its cast
    side = 64 if tiny else 1024
    print(f"local engine on {torch.cuda.get_device_name() if not tiny else 'cpu (tiny configurations)'}")
    with torch.device(device):
        pipe, args = klein(tiny, device, dtype)
    architecture("FLUX.2 klein 4B", pipe, args, 4, side, device)
    wall, share = asyncio.run(busy_share(pipe, args, side, 4))
    print(f"  queue of 8 klein requests: {wall:.2f} s wall, GPU busy {share:.1%} (target ≥ {TARGET_BUSY:.0%})")
    del pipe
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    with torch.device(device):
        pipe, args = qwen_edit(tiny, device, dtype)
    architecture("Qwen-Image-Edit-2511", pipe, args, 40, side, device)


if __name__ == "__main__":
    main()
