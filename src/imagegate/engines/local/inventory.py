"""Models on this machine for `imagegate models`: the Hub cache's pipelines and the directories local
channels name, with their size, family, what they can do and the channels that use them; and
downloading a checkpoint into the cache."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from imagegate.config import Config
from imagegate.engines.local.checkpoints import Checkpoint, CheckpointError, locate, read, size_on_disk


@dataclass
class OnDisk:
    """One model: a Hub repo id (with its cached revision) or a directory; `checkpoint` when it is a
    pipeline the engine runs, else `problem` says why not."""

    name: str
    path: Path | None
    size: int = 0
    checkpoint: Checkpoint | None = None
    problem: str = ""
    channels: list[str] = field(default_factory=list)


def _examined(name: str, path: Path, size: int | None = None) -> OnDisk:
    found = OnDisk(name, path, size if size is not None else size_on_disk(path))
    try:
        found.checkpoint = read(path)
    except CheckpointError as exc:
        found.problem = str(exc)
    return found


def inventory(config: Config) -> list[OnDisk]:
    """Every diffusers pipeline in the Hub cache, and every model a local channel names (one it cannot
    find included, with the reason)."""
    from huggingface_hub import scan_cache_dir

    found: dict[str, OnDisk] = {}
    try:
        cache = scan_cache_dir()
    except Exception:  # no cache directory yet
        repos = []
    else:
        repos = [repo for repo in cache.repos if repo.repo_type == "model"]
    for repo in repos:
        newest = max(repo.revisions, key=lambda revision: revision.last_modified, default=None)
        if newest is not None and (newest.snapshot_path / "model_index.json").is_file():
            found[repo.repo_id] = _examined(repo.repo_id, newest.snapshot_path, repo.size_on_disk)
    for channel in config.channels:
        if channel.engine != "diffusers" or not channel.model:
            continue
        if channel.model not in found:
            try:
                found[channel.model] = _examined(channel.model, locate(channel.model, channel.revision))
            except CheckpointError as exc:
                found[channel.model] = OnDisk(channel.model, None, problem=str(exc))
        found[channel.model].channels.append(channel.name)
    return sorted(found.values(), key=lambda item: item.name)


def _unreachable(endpoint: str) -> str | None:
    """Why `endpoint` cannot be connected to (in at most a few seconds), or None when it can."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=5).close()
    except OSError as exc:
        return f"cannot be reached ({exc.strerror or exc})"
    return None


class PullFailed(Exception):
    """The download did not happen; the message says why and what to do instead."""


def pull(repo_id: str, revision: str | None = None) -> Path:
    """Download the pipeline `repo_id` (at `revision`) into the Hub cache with a progress bar: its
    model_index.json and the folders of the components it names (not the single-file checkpoints
    some repos also carry). PullFailed at once when the Hub cannot be reached, saying how to copy a
    model in by hand."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    copy_in = (
        "On a machine without internet, copy the model's directory (the one holding model_index.json) here "
        "and set the channel's `model` to that directory."
    )
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PullFailed(f"cannot download {repo_id}: HF_HUB_OFFLINE is set. {copy_in}")
    unreachable = _unreachable(constants.ENDPOINT)
    if unreachable:
        raise PullFailed(f"cannot download {repo_id}: the Hub at {constants.ENDPOINT} {unreachable}. {copy_in}")
    try:
        index = json.loads(Path(hf_hub_download(repo_id, "model_index.json", revision=revision)).read_text())
        parts = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]
        patterns = ["model_index.json", *(f"{name}/*" for name in parts)]
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as exc:
        raise PullFailed(
            f"cannot download {repo_id}: the Hub cannot be reached ({exc.__cause__ or exc}). {copy_in}"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise PullFailed(f"cannot download {repo_id}: {type(exc).__name__} (a gated repo needs HF_TOKEN)") from None
    except EntryNotFoundError:
        raise PullFailed(f"{repo_id} has no model_index.json: it is not a diffusers pipeline") from None
    except OSError as exc:
        raise PullFailed(f"cannot download {repo_id}: {type(exc).__name__}: {exc}. {copy_in}") from None
