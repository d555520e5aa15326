"""n images from as many concurrent engine calls as the engine needs (SPEC §3): partial failures are
reported rather than fatal, and a provider that ignores `n` is called again for what it left out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial

from imagegate.core.job import CallReport, ImageOut, Job, Made
from imagegate.engines.base import Engine
from imagegate.errors import EngineError, ImagegateError
from imagegate.service.concurrently import run_all
from imagegate.service.records import failure_of

log = logging.getLogger("imagegate.tasks")


@dataclass
class FannedOut:
    """The images of every call that succeeded, one report per relayed call, and the failed calls."""

    images: list[ImageOut] = field(default_factory=list)
    reports: list[CallReport] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


async def fan_out(engine: Engine, job: Job, task_id: str) -> FannedOut:
    """`job.request.n` images from ceil(n / per-call) concurrent calls of `engine`; failed calls are
    reported, not fatal, while at least one call succeeds. A call that returns fewer images than it
    asked for (a provider that ignores `n`) is made up for by one more round of single-image calls."""
    n = job.request.n
    per_call = max(1, engine.images_per_call)
    counts = [min(per_call, n - start) for start in range(0, n, per_call)]
    result = FannedOut()
    errors = await _calls(engine, job, counts, result)
    shortfall = n - len(result.images) - sum(count for count, exc in zip(counts, errors, strict=True) if exc)
    if result.images and shortfall > 0:
        errors += await _calls(engine, replace(job, on_partial=None), [1] * shortfall, result)
    failed = [exc for exc in errors if exc is not None]
    if not result.images:
        raise failed[0] if failed else EngineError(f"The {engine.name} engine made no image.")
    for exc in failed:
        if not isinstance(exc, ImagegateError):
            log.error("an engine call of task %s failed", task_id, exc_info=exc)
    result.failures = [dict(zip(("code", "message"), failure_of(exc), strict=True)) for exc in failed]
    return result


async def _calls(engine: Engine, job: Job, counts: list[int], into: FannedOut) -> list[Exception | None]:
    """One concurrent engine call per entry of `counts` (images it asks for), their images and reports
    added to `into` in call order; each call's error (None where it succeeded). Only the first call
    streams partial images."""
    results: list[Made | None] = [None] * len(counts)
    errors: list[Exception | None] = [None] * len(counts)

    async def call(index: int) -> None:
        call_job = replace(
            job, request=replace(job.request, n=counts[index]), on_partial=job.on_partial if index == 0 else None
        )
        try:
            results[index] = await engine.run(call_job)
        except Exception as exc:  # kept per call; the caller decides
            errors[index] = exc

    await run_all([partial(call, index) for index in range(len(counts))])
    for made, count in zip(results, counts, strict=True):
        if made is not None:
            into.images += made.images[:count]
            if made.report is not None:
                into.reports.append(made.report)
    return errors
