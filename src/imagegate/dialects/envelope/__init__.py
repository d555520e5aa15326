"""The envelope dialect (seed 000), both directions: `inbound` serves it, `upstream` calls providers that speak it."""

from __future__ import annotations

from imagegate.dialects.envelope import inbound, upstream
from imagegate.registry import Dialect

ENVELOPE = Dialect(
    inbound.NAME,
    prefixes=(),
    router=inbound.router,
    error_response=inbound.error_response,
    client=upstream.client_for,
)
