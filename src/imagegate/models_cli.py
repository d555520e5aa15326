"""`imagegate models`: the local engine's checkpoints on disk (pull, list, check)."""

from __future__ import annotations

import importlib.util

import typer
from rich.console import Console
from rich.table import Table

from imagegate.cli_output import fail, note
from imagegate.config import Config, ConfigError


def _needs_local_extra() -> None:
    if importlib.util.find_spec("huggingface_hub") is None or importlib.util.find_spec("diffusers") is None:
        raise fail(
            "local models need the local extra: install torch first "
            "(the CUDA build for a GPU), then `pip install 'imagegate[local]'`"
        )


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000  # type: ignore[assignment]
    return f"{count} B"


def pull_model(repo_id: str, revision: str | None) -> None:
    """Download a pipeline into the Hub cache and say what it is; exit 2 when it cannot be downloaded."""
    _needs_local_extra()
    from imagegate.engines.local.checkpoints import CheckpointError, read
    from imagegate.engines.local.inventory import PullFailed, pull

    try:
        path = pull(repo_id, revision)
    except PullFailed as exc:
        raise fail(str(exc)) from None
    try:
        print(f"{repo_id}: {read(path).describe()}")
    except CheckpointError as exc:
        print(f"{repo_id}: downloaded, but the local engine cannot run it: {exc}")
    print(f"in {path}")


def list_models(config: Config) -> None:
    """Print the models on disk as a table."""
    _needs_local_extra()
    from imagegate.engines.local.inventory import inventory

    found = inventory(config)
    if not found:
        print("No diffusers pipeline is on disk; download one with `imagegate models pull REPO_ID`.")
        return
    table = Table("model", "size", "family", "can do", "channels")
    table.add_column("where", overflow="fold")
    for item in found:
        if item.checkpoint is not None:
            family, _, can = item.checkpoint.describe().partition(": ")
        else:
            family, can = "", f"[red]{item.problem}[/red]"
        where = str(item.path) if item.path else ""
        table.add_row(item.name, _size(item.size) if item.path else "", family, can, ", ".join(item.channels), where)
    Console(width=240).print(table)


def check_models(config: Config) -> None:
    """Load each local channel's model and run one small step; exit 1 when any fails."""
    _needs_local_extra()
    from imagegate.engines.local import open_channel

    local = [channel for channel in config.channels if channel.engine == "diffusers"]
    if not local:
        print("No local (diffusers) channel is configured.")
        return
    failed = False
    for channel in local:
        try:
            print(f"{channel.name}: {open_channel(config, channel).check()}")
        except (ConfigError, Exception) as exc:
            failed = True
            note(f"{channel.name}: failed: {exc}")
    if failed:
        raise typer.Exit(1)
