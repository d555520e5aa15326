"""The local engine kind: open-weight diffusers pipelines on this machine (the `local` extra)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from imagegate.config import ChannelSettings, Config, ConfigError
from imagegate.engines.base import Engine, EngineContext, EngineKind

if TYPE_CHECKING:
    from imagegate.engines.local.engine import LocalEngine


def open_local(context: EngineContext) -> Engine:
    """The engine of a `diffusers` channel (see `open_channel`)."""
    if context.channel is None:
        raise ConfigError("the 'diffusers' engine runs a channel's model, so it serves channels only")
    return open_channel(context.config, context.channel)


def open_channel(config: Config, channel: ChannelSettings) -> LocalEngine:
    """The local engine of `channel`, its model not loaded yet; ConfigError naming the channel when
    its model is not on disk, is not a pipeline the engine runs, or the `local` extra is missing."""
    from imagegate.engines.local.checkpoints import CheckpointError, locate, read
    from imagegate.engines.local.engine import LocalEngine

    if not channel.model:
        raise ConfigError(f"channel '{channel.name}': a diffusers channel needs `model` (a directory or Hub repo id)")
    if importlib.util.find_spec("diffusers") is None or importlib.util.find_spec("torch") is None:
        raise ConfigError(
            f"channel '{channel.name}': the diffusers engine needs the local extra: install torch first "
            "(the CUDA build for a GPU), then `pip install 'imagegate[local]'`"
        )
    try:
        checkpoint = read(locate(channel.model, channel.revision))
    except CheckpointError as exc:
        raise ConfigError(f"channel '{channel.name}': {exc}") from None
    return LocalEngine(channel, checkpoint, config.imaging)


LOCAL = EngineKind("diffusers", open_local)
