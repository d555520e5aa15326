"""MockEngine: an engine from a handler, served by the real app like any engine."""

from __future__ import annotations

from pathlib import Path

from imagegate.core.catalog import Catalog
from imagegate.core.job import Job, Made
from imagegate.core.request import EditRequest, OutputFormat, Size
from imagegate.engines.mock import MockEngine, plain_image
from tests.conftest import decode, open_api
from tests.test_accounts import DATA_URL, settings


async def test_a_handler_serves_requests_through_the_whole_stack(tmp_path: Path) -> None:
    seen: list[Job] = []

    async def handler(job: Job) -> Made:
        seen.append(job)
        return Made([plain_image(job, (255, 0, 0), "red") for _ in range(job.request.n)])

    engine = MockEngine(handler, images_per_call=1)
    async with open_api(settings(tmp_path), {"mock": engine}) as api:
        r = await api.client.post(
            "/v1/images/edits", headers=api.auth, json={"image": DATA_URL, "prompt": "make it red", "n": 2}
        )
    assert r.status_code == 200, r.text
    assert [item["revised_prompt"] for item in r.json()["data"]] == ["red", "red"]
    assert engine.calls == 2 and seen[0].request.prompt == "make it red" and seen[0].request.n == 1


async def test_the_default_handler_makes_n_plain_images_in_the_asked_format() -> None:
    req = EditRequest(prompt="anything", n=3, output_format=OutputFormat.JPEG)
    made = await MockEngine().run(Job(req, Catalog.from_config({}).get("gpt-image-2"), Size(64, 32)))
    assert len(made.images) == 3 and made.report is None
    image = decode(made.images[0].data)
    assert (image.format, image.size) == ("JPEG", (64, 32))
