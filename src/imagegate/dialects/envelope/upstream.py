"""The envelope dialect (seed 000), outbound: `POST {base_url}/images/edit` with the inputs as data
URLs, `{"code": 0, "data": {"images": [{"url"}]}}` back. It only edits."""

from __future__ import annotations

from typing import Any

import anyio

from imagegate.config import ChannelSettings
from imagegate.core.job import Job
from imagegate.core.request import Quality
from imagegate.core.sizing import native_size
from imagegate.core.upstream import RelayHosts, UpstreamAnswer, UpstreamImage
from imagegate.errors import EngineError
from imagegate.wire.outbound import Endpoint, HttpUpstream, data_url, decode_b64, revised_prompt


def parse_envelope(body: Any) -> UpstreamAnswer:
    """A success envelope's images; EngineError for a non-zero `code` or a missing image list."""
    if not isinstance(body, dict) or body.get("code") != 0:
        message = body.get("message") if isinstance(body, dict) else None
        raise EngineError(f"The upstream answered an error envelope: {message or body!r}")
    data = body.get("data")
    items = data.get("images") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise EngineError("The upstream's envelope has no 'data.images' list.")
    images = []
    for item in items:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str):
            image = UpstreamImage(data=decode_b64(url)) if url.startswith("data:") else UpstreamImage(url=url)
            image.revised_prompt = revised_prompt(item)
            images.append(image)
    return UpstreamAnswer(images)


class EnvelopeUpstream(HttpUpstream):
    """A seed-000 provider at `base_url` (the root its `/images/edit` hangs from, e.g. `https://host/v1`)."""

    images_per_call = 10
    can_generate = False

    async def run(self, job: Job, model: str) -> UpstreamAnswer:
        images = [await anyio.to_thread.run_sync(data_url, source) for source in job.images]
        body: dict[str, Any] = {
            "model": model,
            "prompt": job.request.prompt,
            "image": images,
            "size": str(native_size(job.size)),
        }
        if job.request.quality in (Quality.LOW, Quality.MEDIUM, Quality.HIGH):
            body["quality"] = job.request.quality.value
        if job.request.n != 1:
            body["n"] = job.request.n
        response = await self._http.post("/images/edit", json=body)
        return parse_envelope(self.answer(response))

    async def probe(self) -> str:
        response = await self._http.post("/images/edit", json={})
        if response.status_code in (401, 403):
            raise self.refused(response)
        return f"ok (answers {response.status_code} to an empty request)"


def client_for(channel: ChannelSettings, key: str, hosts: RelayHosts) -> EnvelopeUpstream:
    """A channel's seed-000 client (inputs go inline as data URLs)."""
    return EnvelopeUpstream(Endpoint.of(channel, key))
