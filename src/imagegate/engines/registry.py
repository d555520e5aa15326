"""Engines register by name; built-ins use the same registry an outside plugin would."""

from __future__ import annotations

from collections.abc import Callable

from imagegate.config import Config
from imagegate.engines.base import Engine

EngineFactory = Callable[[Config], Engine]

_FACTORIES: dict[str, EngineFactory] = {}


def register(name: str, factory: EngineFactory) -> None:
    """Make `factory` available as engine `name`; a second registration of a name is an error."""
    if name in _FACTORIES:
        raise ValueError(f"engine '{name}' is already registered")
    _FACTORIES[name] = factory


def create(name: str, config: Config) -> Engine:
    """A new engine instance by name; raises KeyError listing the known names."""
    _register_builtins()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise KeyError(f"unknown engine '{name}'; known: {', '.join(sorted(_FACTORIES))}") from None
    return factory(config)


def _register_builtins() -> None:
    if "classic" not in _FACTORIES:
        from imagegate.engines.classic.engine import ClassicEngine

        register("classic", ClassicEngine.from_config)
