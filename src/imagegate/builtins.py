"""The built-in dialects and engines, registered through the same calls an outside one would use."""

from __future__ import annotations

from imagegate.dialects.envelope import ENVELOPE
from imagegate.dialects.jobs import JOBS
from imagegate.dialects.openai import OPENAI, SEED003
from imagegate.engines.base import EngineKind
from imagegate.engines.classic.engine import ClassicEngine
from imagegate.engines.local import LOCAL
from imagegate.registry import Registry


def builtin_registry() -> Registry:
    """A new registry holding every built-in dialect (each with its relaying engine kind) and the
    classic and local (diffusers) engines; an embedding application may add its own to it."""
    registry = Registry()
    for dialect in (OPENAI, SEED003, ENVELOPE, JOBS):
        registry.add_dialect(dialect)
    registry.add_engine(EngineKind("classic", lambda context: ClassicEngine.from_config(context.config)))
    registry.add_engine(LOCAL)
    return registry
