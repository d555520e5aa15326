"""Checkpoints on disk: where a channel's `model` is, which family it is, its native pixel budget and
grid, all read from its JSON configs without loading any weights."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegate.engines.local.families import Family, family_of, supported_classes


class CheckpointError(ValueError):
    """The checkpoint is missing or is not one the local engine can run; the message says what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """A pipeline directory: its family, the pixel budget it was trained at and the grid every side of
    its output must be a multiple of."""

    path: Path
    class_name: str
    family: Family
    pixels: int
    grid: int

    def describe(self) -> str:
        """What it can do, in a few words."""
        family = self.family
        can = []
        if family.edits:
            can.append(f"edit ({family.references} reference{'s' if family.references > 1 else ''})")
        if family.generates:
            can.append("generate")
        side = math.isqrt(self.pixels)
        return f"{family.name}: {', '.join(can)}; renders about {side}x{side}, sides a multiple of {self.grid}"


def is_repo_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~"))


def locate(model: str, revision: str | None = None) -> Path:
    """The directory of `model`: a local directory holding `model_index.json`, or the cached snapshot
    of a Hub repo id. Never downloads; CheckpointError says how to get it when it is not on disk."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"'{model}' has no model_index.json: it is not a diffusers pipeline directory")
        return path
    if not is_repo_id(model):
        raise CheckpointError(f"'{model}' is not a directory, nor a Hub repo id like 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        found = Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception as exc:
        raise CheckpointError(
            f"'{model}' is not on this machine: download it with `imagegate models pull {model}`, or copy its "
            "directory (the one holding model_index.json) here and name that directory as the channel's model"
        ) from exc
    if not (found / "model_index.json").is_file():
        raise CheckpointError(f"'{model}' has no model_index.json: it is not a diffusers pipeline")
    return found


def _config(path: Path, component: str) -> dict[str, Any]:
    file = path / component / "config.json"
    if not file.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(file.read_text())
    return loaded


def read(path: Path) -> Checkpoint:
    """The checkpoint at `path` (a directory `locate` returned); CheckpointError when its configs
    cannot be read."""
    try:
        return _read(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: its configuration cannot be read ({type(exc).__name__}: {exc})") from exc


def _read(path: Path) -> Checkpoint:
    try:
        index = json.loads((path / "model_index.json").read_text())
        class_name = str(index["_class_name"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}/model_index.json cannot be read: {exc}") from exc
    family = family_of(class_name)
    if family is None:
        raise CheckpointError(
            f"{path} holds a {class_name}, which the local engine does not run; it runs {supported_classes()}"
        )
    vae = _config(path, "vae")
    if "temperal_downsample" in vae:
        vae_scale = 2 ** len(vae["temperal_downsample"])
    else:
        vae_scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    unet = _config(path, "unet")
    if unet:
        latent_grid = 2 ** (len(unet.get("block_out_channels", [0, 0, 0, 0])) - 1)
        side = int(unet.get("sample_size", 64)) * vae_scale
        return Checkpoint(path, class_name, family, side * side, vae_scale * latent_grid)
    side = int(vae["sample_size"]) if isinstance(vae.get("sample_size"), int) else math.isqrt(family.pixels)
    grid = vae_scale * (4 if family.name.startswith("qwen") else 2)
    return Checkpoint(path, class_name, family, side * side, grid)


def size_on_disk(path: Path) -> int:
    """Bytes under `path`, following the Hub cache's links to the blobs they name."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
