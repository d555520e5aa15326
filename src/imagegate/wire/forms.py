"""Multipart bodies read with a limit on every file part, enforced as the part streams in, and with
one bound on the uploads all requests together keep in memory.

Starlette's parser bounds text fields but spools file parts of any size; here a file part is refused
(ImageTooLarge naming its field) the moment it passes the per-image limit, not after the whole body
has been written to disk. Starlette keeps each part up to 1 MiB in memory, whatever the number of
requests; here a part of up to 8 MiB stays in memory, but only while all of them together fit in
`UPLOADS_IN_MEMORY` (2,000 requests waiting on a slow provider would otherwise hold 2,000 inputs),
and goes to a temporary file past it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncGenerator
from tempfile import SpooledTemporaryFile
from typing import IO, Any, BinaryIO, cast

from fastapi import Request
from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from imagegate.config import Limits
from imagegate.errors import BadRequest, ImageTooLarge, PayloadTooLarge, excerpt

UPLOADS_IN_MEMORY = 32 * 1024 * 1024
"""The most bytes of uploaded files this process keeps in memory at once (each part at most 8 MiB)."""


class SpoolBudget:
    """Bytes that in-memory spools may hold together, at most `total`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Reserve `size` bytes if they fit; whether they did."""
        with self._lock:
            if self.held + size > self.total:
                return False
            self.held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size


UPLOADS = SpoolBudget(UPLOADS_IN_MEMORY)


class _Pieces:
    """The in-memory file of a spool: the pieces written, kept as they came until something else than
    `write` or `tell` is asked of it, then joined once into a BytesIO that does the rest. A BytesIO
    written in 64 KiB pieces grows by reallocation and copies what it holds each time: 1.2 ms for a
    3 MB upload, where keeping the pieces and joining them once costs a single copy."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0
        self._whole: io.BytesIO | None = None

    def write(self, data: Any) -> int:
        if self._whole is not None:
            return self._whole.write(data)
        piece = data if type(data) is bytes else bytes(data)
        self._pieces.append(piece)
        self._size += len(piece)
        return len(piece)

    def tell(self) -> int:
        return self._size if self._whole is None else self._whole.tell()

    @property
    def closed(self) -> bool:
        return self._whole is not None and self._whole.closed

    def close(self) -> None:
        """Closed as a BytesIO is: whatever is asked of it afterwards raises ValueError."""
        self._pieces, self._whole = [], self._whole or io.BytesIO()
        self._whole.close()

    def __getattr__(self, name: str) -> Any:
        if self._whole is None:
            self._whole = io.BytesIO(b"".join(self._pieces))
            self._whole.seek(self._size)
            self._pieces = []
        return getattr(self._whole, name)


class BudgetedSpool(SpooledTemporaryFile[bytes]):
    """A SpooledTemporaryFile that stays in memory only while `budget` has room for what it holds; it
    returns its bytes to the budget when it moves to disk or is closed."""

    def __init__(self, budget: SpoolBudget, max_size: int) -> None:
        super().__init__(max_size=max_size)
        self._file = cast(IO[bytes], _Pieces())
        self._budget = budget
        self._reserved = 0
        self._on_disk = False

    @property
    def on_disk(self) -> bool:
        """Whether it has moved to a temporary file."""
        return self._on_disk

    def write(self, s: Any) -> int:
        if not self._on_disk:
            if self._budget.take(len(s)):
                self._reserved += len(s)
            else:
                self.rollover()
        return super().write(s)

    def rollover(self) -> None:
        self._release()
        self._on_disk = True
        super().rollover()

    def close(self) -> None:
        self._release()
        super().close()

    def __del__(self) -> None:  # an upload nobody closed gives its bytes back all the same
        self._release()
        finalize = getattr(super(), "__del__", None)
        if finalize is not None:
            finalize()

    def _release(self) -> None:
        if self._reserved:
            self._budget.give(self._reserved)
            self._reserved = 0


class _PartTooLarge(MultiPartException):
    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"Image in '{field}' is larger than {limit:,} bytes.")
        self.field = field


class _TextTooLarge(MultiPartException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The form's text fields together are larger than {limit:,} bytes (they are held in memory); "
            "send images as file parts or URLs."
        )


class BoundedMultiPartParser(MultiPartParser):
    """MultiPartParser that stops at the first file part larger than `max_file_size` bytes, and once its
    text fields (held in memory, as a JSON body is) together pass `max_text_bytes`; that keeps a file
    part of up to `spool_max_size` in memory while the process's upload budget has room (a part on
    disk costs a thread hop for every piece of it that arrives); and that knows whether the body
    reached its closing boundary (`ended`)."""

    spool_max_size = 8 * 1024 * 1024

    def __init__(
        self,
        headers: Headers,
        stream: AsyncGenerator[bytes, None],
        *,
        max_files: int,
        max_fields: int,
        max_part_size: int,
        max_file_size: int,
        max_text_bytes: int,
    ) -> None:
        super().__init__(headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)
        self.max_file_size = max_file_size
        self.max_text_bytes = max_text_bytes
        self._file_bytes = 0
        self._text_bytes = 0
        self.ended = False

    def on_end(self) -> None:
        super().on_end()
        self.ended = True

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None:  # a file part: spooled within the process's budget (still empty here)
            spool = BudgetedSpool(UPLOADS, self.spool_max_size)
            upload.file.close()
            upload.file = cast(BinaryIO, spool)
            self._files_to_close_on_error[-1] = spool

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_size:
                raise _PartTooLarge(excerpt(self._current_part.field_name), self.max_file_size)
        else:
            self._text_bytes += end - start
            if self._text_bytes > self.max_text_bytes:
                raise _TextTooLarge(self.max_text_bytes)
        super().on_part_data(data, start, end)


async def read_multipart(request: Request, limits: Limits) -> FormData:
    """The request's multipart form; its uploads are closed with `request.close()`.

    Raises ImageTooLarge for a file part past `limits.max_image_bytes`, PayloadTooLarge when the text
    fields together pass `limits.json_bytes` (what a JSON body may hold), and BadRequest for a
    malformed body, one cut off before its closing boundary included.
    """
    parser = BoundedMultiPartParser(
        request.headers,
        request.stream(),
        max_files=limits.max_input_images + 2,
        max_fields=limits.max_form_fields,
        max_part_size=limits.max_image_bytes * 4 // 3 + 1024,
        max_file_size=limits.max_image_bytes,
        max_text_bytes=limits.json_bytes,
    )
    try:
        form = await parser.parse()
    except _PartTooLarge as exc:
        raise ImageTooLarge(exc.message, param=exc.field) from exc
    except _TextTooLarge as exc:
        raise PayloadTooLarge(exc.message) from exc
    except MultiPartException as exc:
        raise BadRequest(f"Invalid multipart body: {exc.message}") from exc
    request._form = form  # Request.close() closes the uploads of the form it holds
    if not parser.ended:
        raise BadRequest("Invalid multipart body: it ends before its closing boundary.")
    return form
