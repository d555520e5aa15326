"""The router's rules on scripted engines: order by priority and weight, retries only for retryable
faults, failover, the breaker resting a failing channel and probing it back, concurrency caps."""

from __future__ import annotations

import random
from collections import Counter

import anyio
import pytest

from imagegate.config import ChannelSettings
from imagegate.core.catalog import Catalog
from imagegate.core.job import ImageOut, Job, Made
from imagegate.core.request import EditRequest, OutputFormat, Size
from imagegate.errors import BadRequest, EngineError
from imagegate.service.router import Breaker, Channel, Router, backoff_s

SPEC = Catalog.from_config({}).get("gpt-image-2")


class Scripted:
    """Answers each call with the next scripted outcome (an error to raise, or None for an image)."""

    images_per_call = 1
    can_generate = True

    def __init__(self, name: str, script: list[Exception | None] | None = None, delay: float = 0) -> None:
        self.name = name
        self.script = list(script or [])
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.most_running = 0

    async def run(self, job: Job) -> Made:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await anyio.sleep(self.delay)
            outcome = self.script.pop(0) if self.script else None
            if outcome is not None:
                raise outcome
            return Made([ImageOut(b"img", OutputFormat.PNG, job.size, False, self.name)])
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        return None


def channel(engine: Scripted, **settings: object) -> Channel:
    values: dict[str, object] = {"name": engine.name, "retry_backoff_s": 0, **settings}
    return Channel(ChannelSettings.model_validate(values), engine)


def job() -> Job:
    return Job(EditRequest(prompt="p"), SPEC, Size(1024, 1024))


async def test_lower_priority_first_and_weights_share_the_rest() -> None:
    main, heavy, light = Scripted("main"), Scripted("heavy"), Scripted("light")
    router = Router(
        "m", [channel(heavy, priority=1, weight=3), channel(light, priority=1), channel(main)], random.Random(1)
    )
    firsts = Counter(router.order()[0].settings.name for _ in range(200))
    assert firsts == {"main": 200}
    seconds = Counter(router.order()[1].settings.name for _ in range(2000))
    assert 1300 < seconds["heavy"] < 1700, seconds


async def test_retryable_faults_are_retried_then_failed_over() -> None:
    flaky = Scripted("flaky", [EngineError("503"), EngineError("503"), EngineError("503")])
    backup = Scripted("backup")
    router = Router("m", [channel(flaky, max_retries=2), channel(backup, priority=1)])
    made = await router.run(job())
    (out,) = made.images
    assert (flaky.calls, backup.calls, out.revised_prompt) == (3, 1, "backup")
    assert made.report is not None and made.report["failovers"] == 1 and made.report["attempts"] == 1


async def test_a_non_retryable_fault_fails_over_at_once_and_a_rejection_ends_the_request() -> None:
    misconfigured = Scripted("bad-key", [EngineError("401", retryable=False)])
    backup = Scripted("backup")
    made = await Router("m", [channel(misconfigured), channel(backup, priority=1)]).run(job())
    assert made.images[0].revised_prompt == "backup"
    assert misconfigured.calls == 1

    picky = Scripted("picky", [BadRequest("size is not allowed", param="size")])
    spare = Scripted("spare")
    with pytest.raises(BadRequest, match="size is not allowed"):
        await Router("m", [channel(picky), channel(spare, priority=1)]).run(job())
    assert spare.calls == 0, "the provider's verdict on the request is not shopped around"


async def test_the_breaker_rests_a_failing_channel_and_probes_it_back() -> None:
    now = [0.0]
    breaker = Breaker(failures=2, rest_s=10, clock=lambda: now[0])
    breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.admits()
    now[0] = 10
    assert breaker.state == "half-open" and breaker.admits()
    assert breaker.attempt(), "the first attempt after the rest is the probe"
    assert not breaker.admits(), "one probe at a time"
    breaker.failed(probe=True)
    assert breaker.state == "open", "a failed probe rests it again"
    now[0] = 20
    assert breaker.attempt()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.admits()


def resting(engine: Scripted, now: list[float]) -> Channel:
    """A channel whose circuit is open and whose rest is over (the next request is its probe)."""
    rested = channel(engine, max_retries=0, breaker_failures=1, breaker_rest_s=10)
    rested.breaker = Breaker(failures=1, rest_s=10, clock=lambda: now[0])
    rested.breaker.failed()
    now[0] = 10
    assert rested.breaker.state == "half-open" and rested.breaker.admits()
    return rested


async def test_a_cancelled_probe_leaves_the_channel_usable() -> None:
    now = [0.0]
    slow = Scripted("slow", delay=60)
    rested = resting(slow, now)
    router = Router("m", [rested])
    with anyio.move_on_after(0.05):  # the client went away (or a handler timed out) mid-probe
        await router.run(job())
    assert slow.calls == 1 and rested.breaker.admits(), "the cancelled probe must not hold the circuit"
    slow.delay = 0
    made = await router.run(job())
    assert made.images[0].revised_prompt == "slow" and rested.breaker.state == "closed"


async def test_an_attempt_that_was_not_the_probe_never_frees_the_probe() -> None:
    now = [0.0]
    breaker = Breaker(failures=1, rest_s=10, clock=lambda: now[0])
    early = breaker.attempt()  # a request goes out while the circuit is closed
    breaker.failed()  # another one fails: the circuit opens
    now[0] = 10
    probe = breaker.attempt()
    assert (early, probe) == (False, True)
    breaker.settled(early)  # the early request is cancelled (its client went away)
    assert not breaker.admits(), "the probe in flight still holds the circuit"
    breaker.failed(early)
    assert not breaker.admits(), "nor does a failure of a request that was not the probe free it"
    breaker.settled(probe)
    assert breaker.probing is False


async def test_a_probe_that_crashes_rests_the_channel_again_and_probes_later() -> None:
    now = [0.0]
    buggy = Scripted("buggy", [RuntimeError("a bug in the engine")])
    rested = resting(buggy, now)
    router = Router("m", [rested])
    with pytest.raises(RuntimeError):
        await router.run(job())
    assert rested.breaker.state == "open", "a crash counts against the channel"
    now[0] = 20
    assert rested.breaker.admits()
    assert (await router.run(job())).images[0].revised_prompt == "buggy"


async def test_an_open_circuit_is_skipped_and_all_open_is_a_clear_502() -> None:
    broken = Scripted("broken", [EngineError("500")] * 10)
    router = Router("m", [channel(broken, max_retries=0, breaker_failures=2, breaker_rest_s=60)])
    for _ in range(2):
        with pytest.raises(EngineError, match="500"):
            await router.run(job())
    with pytest.raises(EngineError, match="resting"):
        await router.run(job())
    assert broken.calls == 2


async def test_concurrency_is_capped_per_channel() -> None:
    slow = Scripted("slow", delay=0.02)
    router = Router("m", [channel(slow, max_concurrency=3)])
    async with anyio.create_task_group() as group:
        for _ in range(12):
            group.start_soon(router.run, job())
    assert slow.calls == 12 and slow.most_running == 3


def test_backoff_honours_retry_after_and_grows_with_jitter() -> None:
    rng = random.Random(0)
    assert backoff_s(0, 0.5, 2.5, rng) == 2.5 and backoff_s(0, 0.5, 999, rng) == 30
    waits = [backoff_s(attempt, 0.5, None, rng) for attempt in range(6) for _ in range(50)]
    assert all(0 <= wait <= 8 for wait in waits) and max(waits[250:]) > 4
