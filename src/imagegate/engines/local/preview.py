"""A cheap picture of intermediate latents, for streamed partial images: no VAE decode, just the
latent grid's channels folded into three colour planes and stretched to the full range."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image


def latent_grid(tokens: int, aspect: float) -> tuple[int, int]:
    """(rows, columns) of a packed latent sequence of `tokens` for an image of width/height `aspect`."""
    rows = max(1, round(math.sqrt(tokens / aspect)))
    while tokens % rows:
        rows -= 1
    return rows, tokens // rows


def preview(latents: Any, aspect: float) -> Image.Image:
    """An RGB image of the first latent of a batch: `latents` is (batch, channels, h, w), a video
    latent (batch, channels, frames, h, w), or a packed sequence (batch, tokens, channels)."""
    first = latents[0].detach().float().cpu()
    if first.dim() == 4:  # channels, frames, h, w
        first = first[:, 0]
    if first.dim() == 2:  # tokens, channels
        rows, columns = latent_grid(first.shape[0], aspect)
        first = first.T.reshape(first.shape[1], rows, columns)
    channels = first.shape[0]
    planes = []
    for part in range(3):
        start = part * channels // 3
        stop = max(start + 1, (part + 1) * channels // 3)
        plane = first[start:stop].mean(dim=0)
        low, high = float(plane.min()), float(plane.max())
        scaled = (plane - low) / (high - low) * 255 if high > low else plane * 0 + 128
        planes.append(Image.frombytes("L", (plane.shape[1], plane.shape[0]), scaled.byte().numpy().tobytes()))
    return Image.merge("RGB", planes)
