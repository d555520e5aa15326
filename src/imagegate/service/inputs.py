"""Turning ImageRefs into opened images: uploads, fetched URLs and inline base64, all bounded."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from functools import partial
from typing import IO

from imagegate.config import Limits
from imagegate.core.request import ImageRef
from imagegate.errors import ImageTooLarge, InvalidImage
from imagegate.imaging import SourceImage, open_image
from imagegate.net.fetch import SafeFetcher, decode_inline
from imagegate.service.concurrently import run_all
from imagegate.stores.blobs import BlobStore


def check_size(fp: IO[bytes], param: str, limits: Limits) -> None:
    """Raise ImageTooLarge when `fp` holds more than the per-image byte limit; leaves `fp` rewound."""
    size = fp.seek(0, os.SEEK_END)
    fp.seek(0)
    if size > limits.max_image_bytes:
        raise ImageTooLarge(
            f"Image in '{param}' is {size:,} bytes; the limit is {limits.max_image_bytes:,}.", param=param
        )


async def _bytes_of(ref: ImageRef, fetcher: SafeFetcher, limits: Limits, blobs: BlobStore | None) -> IO[bytes]:
    if ref.blob is not None:
        stored = await blobs.open(ref.blob) if blobs is not None else None
        if stored is None:
            raise InvalidImage(f"The stored copy of '{ref.param}' is gone.", param=ref.param)
        return stored
    if ref.upload is not None:
        check_size(ref.upload, ref.param, limits)
        return ref.upload
    if ref.url is not None:
        return await fetcher.fetch(ref.url, ref.param)
    return decode_inline(ref.inline or "", param=ref.param, max_bytes=limits.max_image_bytes)


async def open_inputs(
    refs: list[ImageRef],
    fetcher: SafeFetcher,
    limits: Limits,
    stack: AsyncExitStack,
    blobs: BlobStore | None = None,
) -> list[SourceImage]:
    """Open every reference concurrently (URLs are fetched in parallel), in order.

    `blob` references are read from `blobs`. Files created here are closed when `stack` closes.
    Raises the first client error met.
    """
    opened: list[SourceImage | None] = [None] * len(refs)
    if not refs:
        return []

    async def one(index: int, ref: ImageRef) -> None:
        fp = await _bytes_of(ref, fetcher, limits, blobs)
        if fp is not ref.upload:
            stack.callback(fp.close)
        source = open_image(fp, max_pixels=limits.max_image_pixels, param=ref.param)
        stack.callback(source.image.close)
        opened[index] = source

    await run_all([partial(one, index, ref) for index, ref in enumerate(refs)])
    return [image for image in opened if image is not None]
