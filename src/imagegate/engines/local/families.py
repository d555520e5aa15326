"""The model families the local engine runs, told apart by the pipeline class a checkpoint's
`model_index.json` names: what each can do, its defaults, and how its pipeline is called.

Pure data and arithmetic: nothing here imports torch or diffusers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from imagegate.core.request import Size


@dataclass(frozen=True)
class Family:
    """One kind of pipeline. `references` is how many input images it takes (0: text-to-image only);
    `flexible` families render well over a range of sizes, the others only near their trained one."""

    name: str
    classes: tuple[str, ...]
    edits: bool
    generates: bool
    references: int
    steps: int
    guidance: float
    flexible: bool
    pixels: int = 1024 * 1024
    """The pixel budget of its trained size, when the checkpoint's configs do not say."""
    min_reference_side: int = 0


FAMILIES = (
    Family("stable-diffusion", ("StableDiffusionPipeline",), False, True, 0, 30, 7.5, False, 512 * 512),
    Family("stable-diffusion-xl", ("StableDiffusionXLPipeline",), False, True, 0, 30, 5.0, False),
    Family("instruct-pix2pix", ("StableDiffusionInstructPix2PixPipeline",), True, False, 1, 30, 7.5, False, 512 * 512),
    Family("instruct-pix2pix-xl", ("StableDiffusionXLInstructPix2PixPipeline",), True, False, 1, 30, 5.0, False),
    Family("flux-kontext", ("FluxKontextPipeline",), True, True, 1, 28, 2.5, True),
    Family("flux2-klein", ("Flux2KleinPipeline",), True, True, 10, 4, 4.0, True, min_reference_side=64),
    Family("qwen-image", ("QwenImagePipeline",), False, True, 0, 50, 4.0, True),
    Family("qwen-image-edit", ("QwenImageEditPipeline",), True, False, 1, 50, 4.0, True),
    Family("qwen-image-edit-plus", ("QwenImageEditPlusPipeline",), True, False, 3, 40, 4.0, True),
)
BY_CLASS = {cls: family for family in FAMILIES for cls in family.classes}
TURBO_STEPS = 2
"""Few-step (Turbo) Stable Diffusion checkpoints: their steps, with guidance off."""


def family_of(class_name: str) -> Family | None:
    return BY_CLASS.get(class_name)


def supported_classes() -> str:
    return ", ".join(sorted(BY_CLASS))


def native_size(want: Size, family: Family, pixels: int, grid: int) -> Size:
    """The size the model renders for a request of `want`: `want`'s aspect ratio (within 4:1) at the
    model's pixel budget (a flexible family may go down to a quarter of it for a small request), each
    side a multiple of `grid`."""
    area = min(pixels, max(want.pixels, pixels // 4)) if family.flexible else pixels
    ratio = min(4.0, max(0.25, want.width / want.height))
    width = math.sqrt(area * ratio)
    height = width / ratio
    return Size(max(grid, round(width / grid) * grid), max(grid, round(height / grid) * grid))


MAX_REFERENCE_ASPECT = 8.0
"""The longest side of a reference over its shortest, at most (FLUX.2 refuses more than 8:1)."""


def within_aspect(img: Image.Image, most: float) -> Image.Image:
    """`img`, centrally cropped to at most `most`:1 (either way)."""
    w, h = img.size
    if w > h * most:
        keep = int(h * most)
        return img.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
    if h > w * most:
        keep = int(w * most)
        return img.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
    return img


def reference_size(img: Image.Image, pixels: int, grid: int, min_side: int) -> Size:
    """A reference image's size for the model: its own aspect ratio, at most `pixels`, each side a
    multiple of `grid` and at least `min_side`."""
    w, h = img.size
    scale = min(1.0, math.sqrt(pixels / (w * h)))
    side = max(grid, min_side)
    width = max(side, math.ceil(w * scale / grid) * grid)
    height = max(side, math.ceil(h * scale / grid) * grid)
    return Size(width, height)


def call_arguments(
    family: Family,
    pipe: Any,
    prompt: str,
    references: list[Image.Image],
    size: Size,
    guidance: float,
    count: int,
) -> dict[str, Any]:
    """The family-specific keyword arguments of a pipeline call making `count` images (steps, seed
    and callbacks are added by the caller)."""
    args: dict[str, Any] = {"prompt": prompt, "num_images_per_prompt": count}
    name = family.name
    if name.startswith("instruct-pix2pix"):
        # pix2pix batches by prompt: one prompt and one image per output
        batch = {"prompt": [prompt] * count, "image": [references[0]] * count, "num_images_per_prompt": 1}
        return {**batch, "guidance_scale": guidance, "image_guidance_scale": 1.5}
    args.update(height=size.height, width=size.width)
    if name.startswith("stable-diffusion"):
        return {**args, "guidance_scale": guidance}
    if name == "flux-kontext":
        image = references[0] if references else None
        return {**args, "image": image, "guidance_scale": guidance, "max_area": size.pixels, "_auto_resize": False}
    if name == "flux2-klein":
        layers = pipe.text_encoder.config.num_hidden_layers
        wanted = tuple(layer for layer in (9, 18, 27) if layer < layers) or (layers - 1,)
        args.update(image=references or None, text_encoder_out_layers=wanted)
        distilled = getattr(pipe.config, "is_distilled", False)
        return {**args, "guidance_scale": 1.0 if distilled else guidance}  # step-distilled: no guidance
    args.update(negative_prompt=" ", true_cfg_scale=guidance)
    if name == "qwen-image-edit":
        return {**args, "image": references[0]}
    if name == "qwen-image-edit-plus":
        return {**args, "image": references}
    return args
