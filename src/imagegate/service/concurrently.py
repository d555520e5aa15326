"""Run coroutines concurrently and surface the first failure as itself, not as an ExceptionGroup."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def run_all(calls: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Await every call concurrently; if any fails, cancel the rest and raise the first error."""
    if len(calls) == 1:
        await calls[0]()
        return
    try:
        async with anyio.create_task_group() as group:
            for call in calls:
                group.start_soon(call)
    except BaseExceptionGroup as exc:
        raise _first_leaf(exc) from None
