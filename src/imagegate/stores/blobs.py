"""Result files: a local directory (embedded) or memory (tests); S3-compatible storage later.

Names are opaque, unguessable ids with an extension; stores never interpret the bytes.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import IO, Protocol

import anyio


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


class LocalBlobStore:
    """Files in one directory, sharded by the first two characters of the name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if "/" in name or "\\" in name or name.startswith(".") or len(name) < 3:
            raise ValueError(f"invalid blob name {name!r}")
        return self.root / name[:2] / name

    async def put(self, name: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._write, self._path(name), data)

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        await anyio.to_thread.run_sync(self._copy, self._path(name), fp)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    @staticmethod
    def _copy(path: Path, fp: IO[bytes]) -> None:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with tmp.open("wb") as out:
            shutil.copyfileobj(fp, out, 1024 * 1024)
        os.replace(tmp, path)

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


class MemoryBlobStore:
    """Files in a dict; for tests and throwaway servers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> None:
        self.files[name] = data

    async def put_file(self, name: str, fp: IO[bytes]) -> None:
        self.files[name] = fp.read()

    async def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    async def open(self, name: str) -> IO[bytes] | None:
        data = self.files.get(name)
        return None if data is None else io.BytesIO(data)

    async def delete(self, name: str) -> None:
        self.files.pop(name, None)

    def local_path(self, name: str) -> Path | None:
        return None
