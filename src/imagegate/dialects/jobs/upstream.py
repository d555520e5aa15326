"""The task-jobs dialect (seed 002), outbound: `POST {base_url}/jobs/createTask`, then poll
`GET {base_url}/jobs/recordInfo` with a growing interval until the task ends (the engine's timeout
bounds the whole wait). Inputs go as signed, expiring URLs the provider fetches from us."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import orjson

from imagegate.config import ChannelSettings
from imagegate.core.job import Job
from imagegate.core.request import Quality
from imagegate.core.sizing import ratio_and_tier
from imagegate.core.upstream import InputHost, RelayHosts, UpstreamAnswer, UpstreamImage
from imagegate.errors import EngineError
from imagegate.wire.outbound import Endpoint, HttpUpstream, published

EDIT_MODEL = "gpt-image-2-image-to-image"
GENERATE_MODEL = "gpt-image-2-text-to-image"
MAX_POLL_INTERVAL_S = 10.0


def job_model(model: str, is_edit: bool) -> str:
    """The provider's model id: one of its two gpt-image-2 task models unless mapped to another."""
    if model.startswith("gpt-image-2") and model not in (EDIT_MODEL, GENERATE_MODEL):
        return EDIT_MODEL if is_edit else GENERATE_MODEL
    return model


def parse_record(body: Any) -> tuple[UpstreamAnswer | None, str | None]:
    """(the answer when the task succeeded, the failure when it failed) of a recordInfo answer;
    (None, None) while it is still waiting."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise EngineError("The upstream's recordInfo answer has no 'data'.")
    state = str(data.get("state") or "waiting")
    if state == "success":
        raw = data.get("resultJson")
        try:
            result = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError as exc:
            raise EngineError("The upstream's resultJson is not JSON.") from exc
        urls = result.get("resultUrls") if isinstance(result, dict) else None
        if not isinstance(urls, list) or not urls:
            raise EngineError("The upstream's task succeeded without resultUrls.")
        images = [UpstreamImage(url=str(url)) for url in urls]
        return UpstreamAnswer(images, extra={"upstream_task": data.get("taskId")}), None
    if state == "fail":
        return None, f"{data.get('failCode') or 'failed'}: {data.get('failMsg') or 'no message'}"
    return None, None


class JobsUpstream(HttpUpstream):
    """A seed-002 provider at `base_url` (the root of `/jobs/...`, e.g. `https://host/api/v1`)."""

    images_per_call = 1
    can_generate = True

    def __init__(self, endpoint: Endpoint, inputs: InputHost, *, poll_interval_s: float) -> None:
        super().__init__(endpoint)
        self._inputs = inputs
        self._poll_s = poll_interval_s

    async def run(self, job: Job, model: str) -> UpstreamAnswer:
        async with published(self._inputs) as inputs:
            urls = [await inputs.url(source) for source in job.images]
            task_id = await self._create(job, job_model(model, bool(urls)), urls)
            return await self._wait(task_id)

    async def _create(self, job: Job, model: str, urls: list[str]) -> str:
        ratio, tier = ratio_and_tier(job.size)
        given: dict[str, Any] = {"prompt": job.request.prompt, "aspect_ratio": ratio, "resolution": tier}
        if urls:
            given["image_urls"] = urls
        if job.request.quality in (Quality.LOW, Quality.MEDIUM, Quality.HIGH):
            given["quality"] = job.request.quality.value
        given["output_format"] = job.request.output_format.value
        response = await self._http.post("/jobs/createTask", json={"model": model, "input": given})
        body = self._json(response)
        data = body.get("data") if isinstance(body, dict) else None
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str):
            raise EngineError(f"The upstream channel '{self.channel}' created no task: {body!r}"[:300])
        return task_id

    async def _wait(self, task_id: str) -> UpstreamAnswer:
        interval = self._poll_s
        while True:
            await anyio.sleep(interval)
            response = await self._http.get("/jobs/recordInfo", params={"taskId": task_id})
            answer, failure = parse_record(self._json(response))
            if answer is not None:
                return answer
            if failure is not None:
                raise EngineError(f"The upstream task failed: {failure}", retryable=False)
            interval = min(MAX_POLL_INTERVAL_S, interval * 1.5)

    def _json(self, response: httpx.Response) -> Any:
        body = self.answer(response)
        if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"] >= 300:
            raise self.refused(response)
        return body

    async def probe(self) -> str:
        response = await self._http.get("/jobs/recordInfo", params={"taskId": "probe"})
        if response.status_code in (401, 403):
            raise self.refused(response)
        return f"ok (answers {response.status_code} to an unknown task)"


def client_for(channel: ChannelSettings, key: str, hosts: RelayHosts) -> JobsUpstream:
    """A channel's seed-002 client; its inputs are always published as URLs, results polled."""
    return JobsUpstream(Endpoint.of(channel, key), hosts.inputs, poll_interval_s=channel.poll_interval_s)


def calls_back(channel: ChannelSettings) -> bool:
    """Always: the provider fetches the inputs from this server."""
    return True
