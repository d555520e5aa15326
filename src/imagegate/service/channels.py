"""Channels from the configuration: checked at start (naming the bad key), opened into engines, and
grouped into one Router per model. With no channel configured, the default engine serves every model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping

from imagegate.config import ChannelSettings, Config, ConfigError
from imagegate.core.catalog import Catalog
from imagegate.core.upstream import RelayHosts
from imagegate.engines.base import Engine, EngineContext, EngineKind
from imagegate.engines.upstream import UpstreamEngine
from imagegate.metrics import Metrics
from imagegate.net.fetch import SafeFetcher
from imagegate.net.signed import UrlSigner, secret_for
from imagegate.service.callbacks_in import CallbackInbox
from imagegate.service.published import PublishedInputs
from imagegate.service.router import Channel, Router
from imagegate.stores.blobs import BlobStore
from imagegate.stores.db import Database


def _key(index: int, name: str) -> str:
    return f"channels.{index}.{name}"


def check_channels(
    config: Config, catalog: Catalog, kinds: Mapping[str, EngineKind], env: Mapping[str, str] = os.environ
) -> None:
    """Raise ConfigError naming `channels.<i>.<field>` for the first thing wrong with a channel."""
    known = {spec.id for spec in catalog}
    for index, channel in enumerate(config.channels):
        kind = kinds.get(channel.engine)
        if kind is None:
            raise ConfigError(
                f"invalid configuration key '{_key(index, 'engine')}': '{channel.engine}' is not one of "
                f"{', '.join(kinds)}"
            )
        unknown = [model for model in [*channel.models, *channel.model_map] if model not in known]
        if unknown:
            raise ConfigError(
                f"invalid configuration key '{_key(index, 'models')}': unknown model ids {', '.join(unknown)}"
            )
        if kind.relays:
            if not channel.base_url or not channel.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"invalid configuration key '{_key(index, 'base_url')}': an http(s) URL is required")
            if kind.calls_back(channel) and not config.public_url:
                raise ConfigError(
                    f"invalid configuration key '{_key(index, 'engine')}': this channel's provider calls this "
                    "server back (inputs or callbacks), so public_url (IMAGEGATE_PUBLIC_URL) must be set"
                )
            if channel.api_key_env and not env.get(channel.api_key_env):
                raise ConfigError(
                    f"invalid configuration key '{_key(index, 'api_key_env')}': "
                    f"the environment variable {channel.api_key_env} is not set"
                )


def channel_key(channel: ChannelSettings, env: Mapping[str, str]) -> str:
    """The channel's upstream key, read from the environment variable it names ('' without one)."""
    return env.get(channel.api_key_env, "") if channel.api_key_env else ""


Elsewhere = Callable[[ChannelSettings, Engine | None], Engine]
"""The engine standing in for a channel that runs on other machines, given the channel's own engine
when this process could open it (None when, say, its model is not on this machine)."""


def open_channels(
    config: Config,
    catalog: Catalog,
    kinds: Mapping[str, EngineKind],
    fetcher: SafeFetcher,
    hosts: RelayHosts,
    env: Mapping[str, str] = os.environ,
    elsewhere: Elsewhere | None = None,
    takes: Collection[str] = (),
) -> list[Channel]:
    """Every configured channel as a live Channel, its engine opened by the kind it names (the caller
    closes their engines). With `elsewhere`, a channel naming a `queue` this process does not take
    (`takes`) gets the engine `elsewhere` makes for it."""
    check_channels(config, catalog, kinds, env)
    opened = []
    for settings in config.channels:
        context = EngineContext(config, fetcher, hosts, settings, channel_key(settings, env))
        if elsewhere is not None and settings.queue and settings.queue not in takes:
            try:
                own: Engine | None = kinds[settings.engine].open(context)
            except ConfigError:
                own = None
            opened.append(Channel(settings, elsewhere(settings, own)))
            continue
        opened.append(Channel(settings, kinds[settings.engine].open(context)))
    return opened


def relay_hosts(config: Config, blobs: BlobStore, db: Database | None = None) -> tuple[PublishedInputs, CallbackInbox]:
    """Where inputs are published for providers to fetch, and where their callbacks land (shared
    through `db` between nodes); both sign their URLs with the configured or the data dir's secret."""
    signer = UrlSigner(secret_for(config.relay.signing_secret, config.data_dir))
    public_url = config.public_url or "http://127.0.0.1"
    return PublishedInputs(blobs, signer, public_url), CallbackInbox(signer, public_url, db)


def routes(
    catalog: Catalog, channels: list[Channel], default: Engine | None, metrics: Metrics | None = None
) -> dict[str, Engine]:
    """The engine of every served model: its Router, or `default` for all when no channel exists."""
    if not channels:
        return {spec.id: default for spec in catalog} if default is not None else {}
    served: dict[str, Engine] = {}
    for spec in catalog:
        serving = [channel for channel in channels if channel.serves(spec.id)]
        if serving:
            served[spec.id] = Router(spec.id, serving, metrics=metrics)
    return served


async def probe(channel: Channel) -> str:
    """A one-line health report of a channel; raises ImagegateError when it cannot be reached."""
    engine = channel.engine
    if isinstance(engine, UpstreamEngine):
        return await engine.probe()
    health = getattr(engine, "health", None)
    if health is not None:
        report = health()
        return f"{report['state']} ({engine.name} engine: {report.get('model', '')} on {report.get('device', '')})"
    return f"ok (built-in {engine.name} engine)"
