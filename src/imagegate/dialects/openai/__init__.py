"""The OpenAI Images dialect, both directions: `inbound` serves it (OpenAI's service on `/v1`, seed
003's on its own prefixes), `upstream` calls providers that speak it."""

from __future__ import annotations

from imagegate.dialects.openai import inbound, seed003, upstream
from imagegate.registry import Dialect

OPENAI = Dialect(
    inbound.NAME,
    prefixes=(),
    router=lambda: inbound.router(("/v1",), seed003_service=False),
    error_response=inbound.error_response,
    callbacks=inbound.callback_renderer,
    client=upstream.client_for,
    calls_back=upstream.calls_back,
)
SEED003 = Dialect(
    "seed003",
    prefixes=seed003.PREFIXES,
    router=lambda: inbound.router(seed003.PREFIXES, seed003_service=True),
    error_response=inbound.seed003_error_response,
)
"""Seed 003's service: OpenAI's routes on `/v1/openai` and `/v1/v1`, its own bodies and error codes.
Its async tasks are recorded as OpenAI's (their callback body is seed 003's)."""
