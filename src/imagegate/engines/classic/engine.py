"""The classic engine: built in, CPU only, offline and deterministic (SPEC §5)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import anyio
from PIL import Image

from imagegate.config import Config, ImagingSettings
from imagegate.core.job import ImageOut, Job, Made
from imagegate.core.request import Background, OutputFormat, Size
from imagegate.engines.classic import compose, draw
from imagegate.engines.classic.operations import GEOMETRIC, OPERATIONS, TextRenderer, remove_background
from imagegate.engines.classic.vocabulary import Plan, describe, plan
from imagegate.imaging import confine_to_mask, encode, fit_cover

PREVIEW_SCALES = {1: (8,), 2: (16, 4), 3: (16, 8, 4)}


@dataclass
class Rendered:
    image: Image.Image
    revised_prompt: str
    """What was done, what was kept and what could not be done."""


class ClassicEngine:
    """Edits by a documented vocabulary of instructions, and generates by drawing the colours, shapes and
    quoted text a prompt names (engines/classic/draw.py); says what it did in `revised_prompt`."""

    name = "classic"
    images_per_call = 10
    can_generate = True

    def __init__(self, imaging: ImagingSettings, threads: int | None = None) -> None:
        self.imaging = imaging
        self.text = TextRenderer(imaging.font_path)
        self._limiter = anyio.CapacityLimiter(threads or os.cpu_count() or 1)

    @classmethod
    def from_config(cls, config: Config) -> ClassicEngine:
        return cls(config.imaging)

    async def aclose(self) -> None:
        return None

    async def run(self, job: Job) -> Made:
        """Render once and return `n` copies (the engine is deterministic); previews go to `on_partial`."""
        data, previews, transparent, revised = await anyio.to_thread.run_sync(
            self._render_encoded, job, limiter=self._limiter
        )
        if job.on_partial is not None:
            for index, preview in enumerate(previews):
                await job.on_partial(index, preview)
        out = ImageOut(data, job.request.output_format, job.size, transparent, revised)
        return Made([out] * job.request.n)

    def _render_encoded(self, job: Job) -> tuple[bytes, list[bytes], bool, str]:
        rendered = self.render(job)
        img = rendered.image
        if img.mode == "RGBA" and img.getchannel("A").getextrema()[0] == 255:
            img = img.convert("RGB")
        req = job.request
        data = encode(img, req.output_format, self.imaging, req.output_compression)
        previews = []
        if job.on_partial is not None:
            for factor in PREVIEW_SCALES.get(req.partial_images, ()):
                small = img.resize((max(1, img.width // factor), max(1, img.height // factor)), Image.Resampling.BOX)
                coarse = small.resize(img.size, Image.Resampling.NEAREST)
                previews.append(encode(coarse, req.output_format, self.imaging, req.output_compression))
        transparent = img.mode == "RGBA" and req.output_format is not OutputFormat.JPEG
        return data, previews, transparent, rendered.revised_prompt

    def render(self, job: Job) -> Rendered:
        """The edited (or, without inputs, drawn) image at exactly `job.size`, and its `revised_prompt`."""
        if not job.images:
            return self._draw(job)
        the_plan = plan(job.request.prompt, len(job.images))
        notes: list[str] = []
        # Rotations and flips commute with a central crop, so they run on the fitted (small) image:
        # fit to the size the turns will bring to job.size, then turn.
        turned = sum(int(op.arg.split("°")[0]) // 90 for op in the_plan.ops if op.name == "rotate") % 2 == 1
        before_turns = Size(job.size.height, job.size.width) if turned else job.size
        base = self._compose(job, the_plan, notes, before_turns)
        fitted = fit_cover(base, before_turns)
        del base
        for op in the_plan.ops:
            if op.name in GEOMETRIC:
                fitted = OPERATIONS[op.name](fitted, op.arg)
        edited = fitted
        applied = [op for op in the_plan.ops if op.name in GEOMETRIC]
        for op in the_plan.ops:
            if op.name in GEOMETRIC:
                continue
            if op.name == "text":
                missing = self.text.missing_glyphs(op.arg)
                if missing:
                    the_plan.unperformed.append(f"{op.label} (the font has no glyphs for {missing})")
                    continue
                edited = self.text(edited, op.arg)
            else:
                edited = OPERATIONS[op.name](edited, op.arg)
            applied.append(op)
        the_plan.ops = applied
        if job.mask is not None:
            edited = confine_to_mask(fitted, edited, job.mask, job.size)
            notes.append("edits confined to the mask's transparent area")
        edited = self._background(edited, job.request.background, notes)
        return Rendered(edited, describe(the_plan, notes))

    def _draw(self, job: Job) -> Rendered:
        drawing = draw.read(job.request.prompt)
        transparent = job.request.background is Background.TRANSPARENT
        image, notes = draw.render(drawing, job.size, self.text, transparent)
        return Rendered(image, drawing.describe(notes))

    def _compose(self, job: Job, the_plan: Plan, notes: list[str], size: Size) -> Image.Image:
        """The input, or the inputs composed on a canvas of `size`; one full-size input decoded at a time."""
        images = job.images
        if len(images) == 1:
            return images[0].decode(at_least=size)
        labels = ", ".join(f"图{i + 1}" for i in the_plan.order)
        if the_plan.compose == "onto":
            fg, bg = the_plan.order[0], the_plan.order[1]
            notes.append(f"composed 图{fg + 1} onto 图{bg + 1}")
            unused = [f"图{i + 1}" for i in the_plan.order[2:]]
            if unused:
                the_plan.unperformed.append(f"use of {', '.join(unused)} beyond placing 图{fg + 1} onto 图{bg + 1}")
            return compose.onto(
                partial(images[fg].decode, at_least=size), partial(images[bg].decode, at_least=size), size
            )
        notes.append(f"composed {len(images)} images side by side in the order {labels}")
        decoded = (images[i].decode(at_least=size) for i in the_plan.order)
        return compose.side_by_side(decoded, len(images), size)

    @staticmethod
    def _background(img: Image.Image, background: Background, notes: list[str]) -> Image.Image:
        if background is Background.TRANSPARENT:
            if img.mode != "RGBA" or img.getchannel("A").getextrema()[0] == 255:
                notes.append("background made transparent by keying out the border colour")
                return remove_background(img)
            return img
        if background is Background.OPAQUE and img.mode == "RGBA":
            flat = Image.new("RGB", img.size, (255, 255, 255))
            flat.paste(img, mask=img.getchannel("A"))
            return flat
        return img
