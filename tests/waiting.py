"""Waiting in tests for something to finish (a task, a queued job, a database row), instead of
hand-written polling loops: poll at a short interval until done, and on timeout fail saying what was
awaited and what was seen last.

`wait_for_task` blocks (for sync tests and real servers); `wait_for_task_async` awaits (for async
tests, whose in-process app must keep running meanwhile). Each takes either an HTTP client and a
URL (by default a jobs-dialect `recordInfo` URL, done once the task's state is success or fail), or
a probe callable, a `done` predicate on what it returns (truthy by default) and `what` it waits for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar, overload

import httpx

T = TypeVar("T")

INTERVAL_S = 0.05
TIMEOUT_S = 30.0
FINISHED = ("success", "fail")
"""The states a task ends in (the jobs dialect shows every other state as `waiting`)."""


def record_info(task_id: str) -> str:
    """The jobs dialect's URL for a task's record (its state and, once finished, its result)."""
    return f"/api/v1/jobs/recordInfo?taskId={task_id}"


def task_state(response: httpx.Response) -> str:
    """The state in a jobs-dialect recordInfo answer."""
    return str(response.json()["data"]["state"])


def task_finished(response: httpx.Response) -> bool:
    return task_state(response) in FINISHED


def _describe(value: object) -> str:
    if isinstance(value, httpx.Response):
        return f"{value.status_code} {value.text[:2000]}"
    return repr(value)[:2000]


def _timed_out(what: str, timeout_s: float, last: object) -> AssertionError:
    return AssertionError(f"{what} was not done within {timeout_s:g} s; last seen: {_describe(last)}")


def _defaults(
    polls_url: bool, url: str, done: Callable[[Any], object] | None, what: str
) -> tuple[Callable[[Any], object], str]:
    """`done` and `what`, or their defaults: a URL's task finished, or a truthy answer."""
    if polls_url:
        return done or task_finished, what or f"GET {url}"
    return done or bool, what or "the condition"


@overload
def wait_for_task(
    source: httpx.Client,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    done: Callable[[httpx.Response], object] = task_finished,
    timeout_s: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str = "",
) -> httpx.Response: ...


@overload
def wait_for_task(
    source: Callable[[], T],
    *,
    what: str,
    done: Callable[[T], object] = bool,
    timeout_s: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
) -> T: ...


def wait_for_task(
    source: httpx.Client | Callable[[], Any],
    url: str = "",
    *,
    headers: Mapping[str, str] | None = None,
    done: Callable[[Any], object] | None = None,
    timeout_s: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str = "",
) -> Any:
    """Poll `GET url` on the client `source` (or call `source`) every `interval` s until `done` says
    so of the answer, and return that answer; AssertionError naming `what` after `timeout_s`."""
    probe: Callable[[], Any] = partial(source.get, url, headers=headers) if isinstance(source, httpx.Client) else source
    check, what = _defaults(isinstance(source, httpx.Client), url, done, what)
    deadline = time.monotonic() + timeout_s
    while True:
        last = probe()
        if check(last):
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, last)
        time.sleep(interval)


@overload
async def wait_for_task_async(
    source: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    done: Callable[[httpx.Response], object] = task_finished,
    timeout_s: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str = "",
) -> httpx.Response: ...


@overload
async def wait_for_task_async(
    source: Callable[[], Awaitable[T]],
    *,
    what: str,
    done: Callable[[T], object] = bool,
    timeout_s: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
) -> T: ...


async def wait_for_task_async(
    source: httpx.AsyncClient | Callable[[], Awaitable[Any]],
    url: str = "",
    *,
    headers: Mapping[str, str] | None = None,
    done: Callable[[Any], object] | None = None,
    timeout_s: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str = "",
) -> Any:
    """`wait_for_task` for async tests: the same polling, sleeping without blocking the event loop."""
    probe: Callable[[], Awaitable[Any]] = (
        partial(source.get, url, headers=headers) if isinstance(source, httpx.AsyncClient) else source
    )
    check, what = _defaults(isinstance(source, httpx.AsyncClient), url, done, what)
    deadline = time.monotonic() + timeout_s
    while True:
        last = await probe()
        if check(last):
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, last)
        await asyncio.sleep(interval)
