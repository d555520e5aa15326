"""Multipart bodies read with a limit on every file part, enforced as the part streams in.

Starlette's parser bounds text fields but spools file parts of any size; here a file part is refused
(ImageTooLarge naming its field) the moment it passes the per-image limit, not after the whole body
has been written to disk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from imagegate.config import Limits
from imagegate.errors import BadRequest, ImageTooLarge, excerpt


class _PartTooLarge(MultiPartException):
    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"Image in '{field}' is larger than {limit:,} bytes.")
        self.field = field


class BoundedMultiPartParser(MultiPartParser):
    """MultiPartParser that stops at the first file part larger than `max_file_size` bytes."""

    def __init__(
        self,
        headers: Headers,
        stream: AsyncGenerator[bytes, None],
        *,
        max_files: int,
        max_fields: int,
        max_part_size: int,
        max_file_size: int,
    ) -> None:
        super().__init__(headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)
        self.max_file_size = max_file_size
        self._file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_size:
                raise _PartTooLarge(excerpt(self._current_part.field_name), self.max_file_size)
        super().on_part_data(data, start, end)


async def read_multipart(request: Request, limits: Limits) -> FormData:
    """The request's multipart form; its uploads are closed with `request.close()`.

    Raises ImageTooLarge for a file part past `limits.max_image_bytes` and BadRequest for a malformed body.
    """
    parser = BoundedMultiPartParser(
        request.headers,
        request.stream(),
        max_files=limits.max_input_images + 2,
        max_fields=limits.max_form_fields,
        max_part_size=limits.max_image_bytes * 4 // 3 + 1024,
        max_file_size=limits.max_image_bytes,
    )
    try:
        form = await parser.parse()
    except _PartTooLarge as exc:
        raise ImageTooLarge(exc.message, param=exc.field) from exc
    except MultiPartException as exc:
        raise BadRequest(f"Invalid multipart body: {exc.message}") from exc
    request._form = form  # Request.close() closes the uploads of the form it holds
    return form
