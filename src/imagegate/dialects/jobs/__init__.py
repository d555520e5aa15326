"""The task-jobs dialect (seed 002), both directions: `inbound` serves it, `upstream` calls providers that speak it."""

from __future__ import annotations

from imagegate.dialects.jobs import inbound, upstream
from imagegate.registry import Dialect

JOBS = Dialect(
    inbound.NAME,
    prefixes=(inbound.PREFIX,),
    router=inbound.router,
    error_response=inbound.error_response,
    callbacks=lambda catalog, links: inbound.callback_renderer(links),
    client=upstream.client_for,
    calls_back=upstream.calls_back,
)
