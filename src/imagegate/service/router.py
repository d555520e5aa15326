"""Model -> channels: retries with backoff, failover by priority and weight, circuit breakers and
per-channel concurrency caps (SPEC §1 Channel, §5).

A Router is itself an Engine, so the task service runs a routed model exactly as it runs the
classic engine. One request tries the model's channels in order — lower `priority` first, channels
of equal priority shuffled by `weight` — skipping those whose circuit is open. On a channel, a
retryable fault (429, 5xx, timeout, connection) is tried again after a backoff (the provider's
`retry-after` when it gave one); any other provider fault moves on to the next channel; the
provider's rejection of the request itself (a BadRequest) ends the request at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from imagegate.config import ChannelSettings
from imagegate.core.job import Job, Made
from imagegate.core.request import EditRequest
from imagegate.engines.base import Engine, Refusal, refusal
from imagegate.errors import EngineError, ImagegateError
from imagegate.metrics import Metrics

log = logging.getLogger("imagegate.router")
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 30.0


class Breaker:
    """A channel's circuit: `failures` consecutive failed attempts open it for `rest_s`; then a single
    probe may go through (half-open) and its outcome closes or re-opens the circuit."""

    def __init__(self, failures: int, rest_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.rest_s = rest_s
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.rest_s else "open"

    def admits(self) -> bool:
        """Whether an attempt may go to the channel now."""
        state = self.state
        return state == "closed" or (state == "half-open" and not self.probing)

    def attempt(self) -> bool:
        """Count an attempt going out; True when it is the half-open circuit's one probe."""
        if self.state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.consecutive, self.opened_at, self.probing = 0, None, False

    def failed(self, probe: bool = False) -> None:
        """A failed attempt; a failed probe (or `failures` in a row) rests the channel again."""
        self.consecutive += 1
        if probe or self.consecutive >= self.failures:
            self.opened_at = self.clock()
        if probe:
            self.probing = False

    def settled(self, probe: bool) -> None:
        """An attempt ended, whatever the outcome (cancelled included): if it was the probe, the probe
        no longer holds the circuit, so a next request may probe."""
        if probe:
            self.probing = False


@dataclass
class Channel:
    """One configured channel, live: its engine, breaker and concurrency cap."""

    settings: ChannelSettings
    engine: Engine
    breaker: Breaker = field(init=False)
    slots: anyio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.breaker = Breaker(self.settings.breaker_failures, self.settings.breaker_rest_s)
        self.slots = anyio.CapacityLimiter(self.settings.max_concurrency)

    def serves(self, model_id: str) -> bool:
        return not self.settings.models or model_id in self.settings.models


def backoff_s(attempt: int, base_s: float, retry_after: float | None, rng: random.Random) -> float:
    """The wait before retry `attempt` (0-based): the provider's `retry-after` (capped), else full
    jitter over `base_s * 2**attempt` (capped at MAX_BACKOFF_S)."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_S)
    return rng.uniform(0, min(MAX_BACKOFF_S, base_s * 2**attempt))


class Router:
    """The Engine for one model: its channels, tried in order with retries and failover."""

    def __init__(
        self,
        model_id: str,
        channels: Sequence[Channel],
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not channels:
            raise ValueError(f"no channel serves model '{model_id}'")
        self.model_id = model_id
        self.channels = list(channels)
        self.rng = rng or random.Random()
        self.metrics = metrics
        kinds = {channel.engine.name for channel in self.channels}
        self.name = kinds.pop() if len(kinds) == 1 else "router"
        self.images_per_call = min(channel.engine.images_per_call for channel in self.channels)
        self.can_generate = any(channel.engine.can_generate for channel in self.channels)

    async def aclose(self) -> None:
        """Channels are shared between routers; the runtime closes their engines."""

    def refuses(self, request: EditRequest) -> Refusal | None:
        """None when some channel can serve `request`; else the first channel's reason."""
        reasons = [refusal(channel.engine, request) for channel in self.channels]
        if any(reason is None for reason in reasons):
            return None
        return reasons[0]

    def order(self) -> list[Channel]:
        """Channels by priority; equal priorities in a weighted random order."""
        ordered: list[Channel] = []
        for priority in sorted({c.settings.priority for c in self.channels}):
            group = [c for c in self.channels if c.settings.priority == priority]
            while group:
                pick = self.rng.choices(group, weights=[c.settings.weight for c in group])[0]
                group.remove(pick)
                ordered.append(pick)
        return ordered

    async def run(self, job: Job) -> Made:
        """Images from the first channel that makes them; the last fault when none does."""
        last: EngineError | None = None
        tried: list[str] = []
        for channel in self.order():
            if refusal(channel.engine, job.request) is not None:
                continue
            if not channel.breaker.admits():
                continue
            tried.append(channel.settings.name)
            try:
                made = await self._on(channel, job)
            except EngineError as exc:
                log.warning("channel %s failed for %s: %s", channel.settings.name, self.model_id, exc.message)
                last = exc
                continue
            made.report = {**(made.report or {}), "failovers": len(tried) - 1}
            return made
        if last is None:
            raise EngineError(
                f"Every channel serving '{self.model_id}' is resting after repeated failures; try again shortly."
            )
        raise last

    async def _on(self, channel: Channel, job: Job) -> Made:
        settings = channel.settings
        for attempt in range(settings.max_retries + 1):
            try:
                made = await self._attempt(channel, job)
            except EngineError as exc:
                final = attempt == settings.max_retries or not exc.retryable or not channel.breaker.admits()
                if final:
                    raise
                await anyio.sleep(backoff_s(attempt, settings.retry_backoff_s, exc.retry_after, self.rng))
                continue
            made.report = {"channel": settings.name, **(made.report or {}), "attempts": attempt + 1}
            return made
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(self, channel: Channel, job: Job) -> Made:
        """One call on `channel`, its outcome told to the channel's breaker on every way out: a fault
        counts against the channel, an answer (a refusal of the request included) for it, and an
        attempt cancelled before either (client gone, timeout, shutdown) releases a probe it held."""
        probe = channel.breaker.attempt()
        try:
            async with channel.slots:
                made = await channel.engine.run(job)
        except EngineError as exc:
            if exc.blames_channel:
                channel.breaker.failed(probe)
            self._count(channel, "retryable" if exc.retryable else "failed")
            raise
        except ImagegateError:
            channel.breaker.succeeded()  # the channel answered; the request itself was refused
            self._count(channel, "rejected")
            raise
        except Exception:
            channel.breaker.failed(probe)
            self._count(channel, "failed")
            raise
        finally:
            channel.breaker.settled(probe)
        channel.breaker.succeeded()
        self._count(channel, "ok")
        return made

    def _count(self, channel: Channel, result: str) -> None:
        if self.metrics is not None:
            name = channel.settings.name
            self.metrics.upstream_attempts.labels(name, result).inc()
            self.metrics.channel_open.labels(name).set(0 if channel.breaker.state == "closed" else 1)
