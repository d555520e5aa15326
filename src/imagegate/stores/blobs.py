"""Result files: a local directory (embedded) or memory (tests); S3-compatible storage later.

Names are opaque, unguessable ids with an extension; stores never interpret the bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import anyio


class BlobStore(Protocol):
    """Where files live. `put` is durable when it returns; `get` answers None for unknown names."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes | None: ...

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

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def get(self, name: str) -> bytes | None:
        path = self.local_path(name)
        return None if path is None else await anyio.Path(path).read_bytes()

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

    async def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def local_path(self, name: str) -> Path | None:
        return None
