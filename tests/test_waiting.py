"""The tests' own polling helper: it returns what it waited for, and fails saying what and what it saw last."""

from __future__ import annotations

import itertools

import httpx
import pytest

from tests.waiting import record_info, wait_for_task, wait_for_task_async


def test_it_returns_the_first_answer_that_is_done() -> None:
    counter = itertools.count()
    assert wait_for_task(lambda: next(counter), done=lambda n: n >= 3, interval=0.001, what="three") == 3


def test_it_fails_naming_what_it_waited_for_and_the_last_answer() -> None:
    with pytest.raises(AssertionError, match=r"the moon was not done within 0\.05 s; last seen: 'cheese'"):
        wait_for_task(lambda: "cheese", done=lambda s: s == "rock", timeout_s=0.05, interval=0.01, what="the moon")


async def test_the_async_client_form_polls_a_task_until_it_finishes() -> None:
    states = iter(["waiting", "waiting", "success"])

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.params["taskId"] == "task_1" and request.headers["authorization"] == "Bearer k"
        return httpx.Response(200, json={"data": {"state": next(states)}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://x") as client:
        done = await wait_for_task_async(client, record_info("task_1"), headers={"authorization": "Bearer k"})
    assert done.json() == {"data": {"state": "success"}}


def test_the_client_form_reports_the_last_answer_on_timeout() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": {"state": "waiting"}})

    with (
        httpx.Client(transport=httpx.MockTransport(answer), base_url="http://x") as client,
        pytest.raises(AssertionError, match=r"GET /api/v1/jobs/recordInfo\?taskId=t was not done .* 200 .*waiting"),
    ):
        wait_for_task(client, record_info("t"), timeout_s=0.05, interval=0.01)
