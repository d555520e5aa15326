"""Files (inputs kept for async tasks, results): a local directory (embedded), S3-compatible object
storage (distributed), or memory (tests).

Names are opaque, unguessable ids with an extension; stores never interpret the bytes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import anyio

from imagegate.errors import StorageUnavailable
from imagegate.owner_only import private_dir, private_writer

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client


log = logging.getLogger("imagegate.storage")
T = TypeVar("T")
SPOOL_IN_MEMORY = 1024 * 1024
WRITE_SIZE = 1024 * 1024
"""The most a file write hands the kernel at once."""


S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 30
S3_ATTEMPTS = 3
"""botocore's defaults (60 s timeouts, 5 attempts) let one call to a store that stopped answering hang
for minutes; with these a request fails (503) within about a minute and a half instead."""
S3_PROBE_TIMEOUT_S = 5
"""`probe` makes one attempt with this timeout, so that the thread of a probe `/readyz` gave up on ends
soon after it instead of holding a worker thread for the whole retry schedule above."""
PROBE_NAME = "imagegate-ready-probe"
"""What `probe` writes and deletes (a name no stored file can have: those are ids with an extension)."""
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


LISTED_AT_ONCE = 1000
"""The most names `written_before` hands out in one batch."""


def _files_before(directory: str, moment_s: float) -> list[tuple[str, float]]:
    """The files of `directory` last written before `moment_s`, with when (a `.part` being written
    excluded)."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file() and not entry.name.endswith(".part"):
                written = entry.stat().st_mtime
                if written < moment_s:
                    found.append((entry.name, written))
    return found


def _batches(found: list[tuple[str, float]]) -> Iterator[list[tuple[str, float]]]:
    for start in range(0, len(found), LISTED_AT_ONCE):
        yield found[start : start + LISTED_AT_ONCE]


async def deleted(store: BlobStore, name: str) -> bool:
    """Delete `name` from `store`; False (the fault already logged by the store) when it refused."""
    try:
        await store.delete(name)
    except StorageUnavailable:
        return False
    return True


def content_type(name: str) -> str:
    """The media type of a stored file by its extension (`application/octet-stream` for inputs)."""
    return CONTENT_TYPES.get(name.rsplit(".", 1)[-1] if "." in name else "", "application/octet-stream")


def unavailable(store: str, exc: BaseException) -> StorageUnavailable:
    """The client's 503 for a storage fault (the detail goes to the log, not to the client)."""
    log.error("file storage failed (%s): %s", store, exc)
    return StorageUnavailable(f"The server's file storage failed ({type(exc).__name__}); please try again later.")


def checked_name(name: str) -> str:
    """`name` if it is a plain file name (no path, not hidden, 3+ characters); ValueError otherwise."""
    if "/" in name or "\\" in name or name.startswith(".") or len(name) < 3:
        raise ValueError(f"invalid blob name {name!r}")
    return name


class BlobStore(Protocol):
    """Where files live. `put` is durable when it returns; `get` answers None for unknown names.
    Every operation raises StorageUnavailable (503) when the store itself fails."""

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

    def written_before(self, moment_s: float) -> AsyncIterator[list[tuple[str, float]]]:
        """The files last written before `moment_s` (Unix seconds), as (name, when written), a batch
        at a time (at most LISTED_AT_ONCE each), never the whole store in memory."""
        ...

    def local_path(self, name: str) -> Path | None:
        """A filesystem path the web server may stream from, if the store has one."""
        ...

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        """A URL that serves `name` directly for `ttl_s` seconds, where the store can make one
        (computed locally: no request to the store)."""
        ...

    async def probe(self) -> None:
        """Write and delete a small object; StorageUnavailable naming the fault (for the operator:
        a missing bucket, refused credentials, an unwritable directory) when that fails."""
        ...

    def describe(self) -> str:
        """Where the files are, for logs (no credentials)."""
        ...


class LocalBlobStore:
    """Files in one directory, sharded by the first two characters of the name."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / checked_name(name)

    async def _guarded(self, work: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(work)
        except OSError as exc:
            raise unavailable(self.describe(), exc) from exc

    async def put(self, name: str, data: bytes) -> None:
        await self._guarded(functools.partial(self._write, self._path(name), data))

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        await self._guarded(functools.partial(self._copy, self._path(name), fp))

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
        return None if path is None else await self._guarded(path.read_bytes)

    async def open(self, name: str) -> IO[bytes] | None:
        path = self.local_path(name)
        return None if path is None else await self._guarded(lambda: path.open("rb"))

    async def delete(self, name: str) -> None:
        path = self.local_path(name)
        if path is not None:
            await self._guarded(functools.partial(path.unlink, missing_ok=True))

    async def written_before(self, moment_s: float) -> AsyncIterator[list[tuple[str, float]]]:
        shards = await self._guarded(lambda: sorted(entry.path for entry in os.scandir(self.root) if entry.is_dir()))
        for shard in shards:
            for batch in _batches(await self._guarded(functools.partial(_files_before, shard, moment_s))):
                yield batch

    def local_path(self, name: str) -> Path | None:
        try:
            path = self._path(name)
        except ValueError:
            return None
        return path if path.is_file() else None

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        return None

    async def probe(self) -> None:
        probe = self.root / PROBE_NAME
        try:
            await anyio.to_thread.run_sync(self._write, probe, b"ok", abandon_on_cancel=True)
            await anyio.Path(probe).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write files in {self.root}: {exc.strerror or exc}") from exc

    def describe(self) -> str:
        return f"directory {self.root}"


class MemoryBlobStore:
    """Files in a dict; for tests and throwaway servers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.written: dict[str, float] = {}

    async def put(self, name: str, data: bytes) -> None:
        self.files[checked_name(name)] = data
        self.written[name] = time.time()

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        self.files[checked_name(name)] = fp.read()
        self.written[name] = time.time()

    async def written_before(self, moment_s: float) -> AsyncIterator[list[tuple[str, float]]]:
        for batch in _batches([(name, when) for name, when in self.written.items() if when < moment_s]):
            yield batch

    async def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    async def open(self, name: str) -> IO[bytes] | None:
        data = self.files.get(name)
        return None if data is None else io.BytesIO(data)

    async def delete(self, name: str) -> None:
        self.files.pop(name, None)
        self.written.pop(name, None)

    def local_path(self, name: str) -> Path | None:
        return None

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        return None

    async def probe(self) -> None:
        return None

    def describe(self) -> str:
        return "memory"


class S3BlobStore:
    """Objects under `prefix` in an S3-compatible bucket (boto3, run in worker threads). Stored files
    carry their Content-Type and an inline Content-Disposition with their name, so a browser shows a
    presigned URL's image rather than downloading `binary/octet-stream`."""

    def __init__(
        self, bucket: str, prefix: str = "", client: S3Client | None = None, probe_client: S3Client | None = None
    ) -> None:
        """`client` makes every call but `probe`'s, which `probe_client` makes (by default, clients built
        from the environment with the timeouts and attempts above; `client` for both if only it is given)."""
        from botocore.exceptions import BotoCoreError, ClientError  # only S3 deployments load boto

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            settings = BotoConfig(
                connect_timeout=S3_CONNECT_TIMEOUT_S,
                read_timeout=S3_READ_TIMEOUT_S,
                retries={"total_max_attempts": S3_ATTEMPTS, "mode": "standard"},
            )
            client = boto3.client("s3", config=settings)
            brief = BotoConfig(
                connect_timeout=S3_PROBE_TIMEOUT_S,
                read_timeout=S3_PROBE_TIMEOUT_S,
                retries={"total_max_attempts": 1, "mode": "standard"},
            )
            probe_client = probe_client or boto3.client("s3", config=brief)
        self.client: S3Client = client
        self.probe_client: S3Client = probe_client or client
        self._faults: tuple[type[Exception], ...] = (BotoCoreError, ClientError)

    def _key(self, name: str) -> str:
        return self.prefix + checked_name(name)

    @staticmethod
    def _headers(name: str) -> dict[str, str]:
        return {"ContentType": content_type(name), "ContentDisposition": f'inline; filename="{name}"'}

    async def _guarded(self, work: Callable[[], T], abandonable: bool = False) -> T:
        """`work` in a worker thread, its botocore faults as StorageUnavailable; an `abandonable` call
        (one that changes nothing) is left to finish alone when the caller is cancelled."""
        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=abandonable)
        except self._faults as exc:
            raise unavailable(self.describe(), exc) from exc

    async def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        await self._guarded(
            functools.partial(self.client.put_object, Bucket=self.bucket, Key=key, Body=data, **self._headers(name))  # type: ignore[arg-type]
        )

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        key, extra = self._key(name), self._headers(name)
        await self._guarded(functools.partial(self.client.upload_fileobj, fp, self.bucket, key, ExtraArgs=extra))

    async def _body(self, name: str) -> StreamingBody | None:
        try:
            key = self._key(name)
        except ValueError:
            return None
        try:
            answer = await anyio.to_thread.run_sync(
                functools.partial(self.client.get_object, Bucket=self.bucket, Key=key)
            )
        except self._faults as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise unavailable(self.describe(), exc) from exc
        return answer["Body"]

    async def get(self, name: str) -> bytes | None:
        body = await self._body(name)
        if body is None:
            return None
        try:
            return await self._guarded(body.read)
        finally:
            body.close()

    async def open(self, name: str) -> IO[bytes] | None:
        """The object copied into a spooled (seekable) temporary file: in memory up to 1 MB, on disk beyond."""
        body = await self._body(name)
        if body is None:
            return None
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - the caller closes it
        try:
            await self._guarded(functools.partial(shutil.copyfileobj, body, spool, SPOOL_IN_MEMORY))
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
            await self._guarded(functools.partial(self.client.delete_object, Bucket=self.bucket, Key=key))

    async def written_before(self, moment_s: float) -> AsyncIterator[list[tuple[str, float]]]:
        asked: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": LISTED_AT_ONCE}
        while True:
            page = await self._guarded(functools.partial(self.client.list_objects_v2, **asked), abandonable=True)
            names = [
                (item["Key"][len(self.prefix) :], item["LastModified"].timestamp())
                for item in page.get("Contents", [])
                if item["LastModified"].timestamp() < moment_s and "/" not in item["Key"][len(self.prefix) :]
            ]
            if names:
                yield names
            if not page.get("IsTruncated"):
                return
            asked["ContinuationToken"] = page["NextContinuationToken"]

    def local_path(self, name: str) -> Path | None:
        return None

    def presigned_url(self, name: str, ttl_s: int) -> str | None:
        overrides = {f"Response{header}": value for header, value in self._headers(name).items()}
        params = {"Bucket": self.bucket, "Key": self._key(name), **overrides}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)

    async def probe(self) -> None:
        key = self._key(PROBE_NAME)
        try:
            for call in (
                functools.partial(self.probe_client.head_bucket, Bucket=self.bucket),
                functools.partial(self.probe_client.put_object, Bucket=self.bucket, Key=key, Body=b"ok"),
                functools.partial(self.probe_client.delete_object, Bucket=self.bucket, Key=key),
            ):  # abandoned when the caller's deadline passes: a store that hangs must not hang /readyz
                await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except self._faults as exc:
            code = _error_code(exc)
            if code in ("404", "NoSuchBucket"):
                reason = "it does not exist (create it first)"
            elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                reason = f"access was refused ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            else:
                reason = " ".join(str(exc).split())
            raise StorageUnavailable(f"cannot write to bucket {self.bucket!r} at {self._endpoint()}: {reason}") from exc

    def _endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self._endpoint()}"


def _error_code(exc: BaseException | None) -> str:
    """The S3 error code of a botocore ClientError (`NoSuchBucket`, `404`...), else ''."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


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
