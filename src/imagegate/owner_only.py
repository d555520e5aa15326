"""Files and directories only their owner may read: the data dir holds webhook secrets, signing keys
and every key's images, so it is 0700 and what the server writes in it is 0600."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) or tighten it so that only its owner may enter it (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> None:
    """Create `path` empty if it is missing, and make it readable by its owner only (0600)."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    path.chmod(0o600)


@contextmanager
def private_writer(path: Path) -> Iterator[IO[bytes]]:
    """A new owner-only file at `path` (0600, in a 0700 directory), written beside it and moved into
    place when the block ends without error."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with os.fdopen(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "wb") as out:
        yield out
    os.replace(tmp, path)
