"""Files (inputs kept for async tasks, results): a local directory (embedded), S3-compatible object
storage (distributed), or memory (tests).

Names are opaque, unguessable ids with an extension; stores never interpret the bytes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

import anyio

from imagegate.owner_only import private_dir, private_writer

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client


SPOOL_IN_MEMORY = 1024 * 1024
WRITE_SIZE = 1024 * 1024
"""The most a file write hands the kernel at once."""


def checked_name(name: str) -> str:
    """`name` if it is a plain file name (no path, not hidden, 3+ characters); ValueError otherwise."""
    if "/" in name or "\\" in name or name.startswith(".") or len(name) < 3:
        raise ValueError(f"invalid blob name {name!r}")
    return name


class BlobStore(Protocol):
    """Where files live. `put` is durable when it returns; `get` answers None for unknown names."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        """Store the rest of `fp` (read in chunks, never whole in memory)."""
        ...

    async def get(self, name: str) -> bytes | None: ...

    async def open(self, name: str) -> IO[bytes] | None:
        """A readable binary file positioned at 0 that the caller closes, or None."""
        ...

    async def delete(self, name: str) -> None:
        """Remove `name`; a missing name is not an error."""
        ...

    def local_path(self, name: str) -> Path | None:
        """A filesystem path the web server may stream from, if the store has one."""
        ...

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        """A URL that serves `name` directly for `ttl_s` seconds, where the store can make one
        (computed locally: no request to the store)."""
        ...


class LocalBlobStore:
    """Files in one directory, sharded by the first two characters of the name."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / checked_name(name)

    async def put(self, name: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._write, self._path(name), data)

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        await anyio.to_thread.run_sync(self._copy, self._path(name), fp)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        view = memoryview(data)
        with private_writer(path) as out:  # in 1 MiB writes: one 2.5 MB write() took Linux 6× as long
            for start in range(0, len(view), WRITE_SIZE):
                out.write(view[start : start + WRITE_SIZE])

    @staticmethod
    def _copy(path: Path, fp: IO[bytes]) -> None:
        with private_writer(path) as out:
            shutil.copyfileobj(fp, out, 1024 * 1024)

    async def get(self, name: str) -> bytes | None:
        path = self.local_path(name)
        return None if path is None else await anyio.Path(path).read_bytes()

    async def open(self, name: str) -> IO[bytes] | None:
        path = self.local_path(name)
        return None if path is None else path.open("rb")

    async def delete(self, name: str) -> None:
        path = self.local_path(name)
        if path is not None:
            await anyio.Path(path).unlink(missing_ok=True)

    def local_path(self, name: str) -> Path | None:
        try:
            path = self._path(name)
        except ValueError:
            return None
        return path if path.is_file() else None

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        return None


class MemoryBlobStore:
    """Files in a dict; for tests and throwaway servers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> None:
        self.files[checked_name(name)] = data

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        self.files[checked_name(name)] = fp.read()

    async def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    async def open(self, name: str) -> IO[bytes] | None:
        data = self.files.get(name)
        return None if data is None else io.BytesIO(data)

    async def delete(self, name: str) -> None:
        self.files.pop(name, None)

    def local_path(self, name: str) -> Path | None:
        return None

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        return None


class S3BlobStore:
    """Objects under `prefix` in an S3-compatible bucket (boto3, run in worker threads)."""

    def __init__(self, bucket: str, prefix: str = "", client: S3Client | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3  # only S3 deployments pay for loading it

            client = boto3.client("s3")
        self.client: S3Client = client

    def _key(self, name: str) -> str:
        return self.prefix + checked_name(name)

    async def put(self, name: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(
            functools.partial(self.client.put_object, Bucket=self.bucket, Key=self._key(name), Body=data)
        )

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        await anyio.to_thread.run_sync(self.client.upload_fileobj, fp, self.bucket, self._key(name))

    async def _body(self, name: str) -> StreamingBody | None:
        try:
            key = self._key(name)
            answer = await anyio.to_thread.run_sync(
                functools.partial(self.client.get_object, Bucket=self.bucket, Key=key)
            )
        except (ValueError, self.client.exceptions.NoSuchKey):
            return None
        return answer["Body"]

    async def get(self, name: str) -> bytes | None:
        body = await self._body(name)
        if body is None:
            return None
        try:
            return await anyio.to_thread.run_sync(body.read)
        finally:
            body.close()

    async def open(self, name: str) -> IO[bytes] | None:
        """The object copied into a spooled (seekable) temporary file: in memory up to 1 MB, on disk beyond."""
        body = await self._body(name)
        if body is None:
            return None
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - the caller closes it
        try:
            await anyio.to_thread.run_sync(shutil.copyfileobj, body, spool, SPOOL_IN_MEMORY)
        except BaseException:
            spool.close()
            raise
        finally:
            body.close()
        spool.seek(0)
        return cast(IO[bytes], spool)

    async def delete(self, name: str) -> None:
        with contextlib.suppress(ValueError):
            key = self._key(name)
            await anyio.to_thread.run_sync(functools.partial(self.client.delete_object, Bucket=self.bucket, Key=key))

    def local_path(self, name: str) -> Path | None:
        return None

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(name)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)


def open_blob_store(storage_url: str | None, default_dir: Path) -> BlobStore:
    """The store `storage_url` names (`s3://bucket/prefix`, `file:///dir`), else `default_dir`.

    Raises ValueError for another scheme.
    """
    if not storage_url:
        return LocalBlobStore(default_dir)
    parts = urlsplit(storage_url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"storage URL {storage_url!r} names no bucket")
        return S3BlobStore(parts.netloc, parts.path)
    if parts.scheme == "file":
        return LocalBlobStore(Path(parts.path))
    raise ValueError(f"storage URL {storage_url!r}: use s3://bucket/prefix or file:///path")
