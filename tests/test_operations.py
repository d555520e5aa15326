"""The operator's surface over HTTP: `/healthz`, `/metrics`, and `IMAGEGATE_PUBLIC_URL` in result URLs."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagegate.config import load_config
from imagegate.server import raise_descriptor_limit
from tests.conftest import LOOPBACK_ALLOW, Api, make_image, open_api

PNG = make_image(320, 240)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def test_healthz(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_metrics_count_requests_by_route_template_and_tasks_by_outcome(api: Api) -> None:
    files = [("image", ("a.png", PNG, "image/png"))]
    for _ in range(2):
        ok = await api.client.post("/v1/images/edits", headers=api.auth, data={"prompt": "sepia"}, files=files)
        assert ok.status_code == 200
    bad = await api.client.post(
        "/v1/images/edits", headers=api.auth, data={"prompt": "sepia", "image": "data:image/png;base64,AAAA"}
    )
    assert bad.status_code == 400
    await api.client.get("/files/AAAAAAAAAAAAAAAAAAAAAAAA.png")
    await api.client.get("/nowhere")

    r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    edits = {"method": "POST", "route": "/v1/images/edits"}
    assert value(text, "imagegate_http_requests_total", **edits, status="200") == 2
    assert value(text, "imagegate_http_requests_total", **edits, status="400") == 1
    assert value(text, "imagegate_http_requests_total", method="GET", route="/files/{name}", status="404") == 1
    assert value(text, "imagegate_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(text, "imagegate_http_request_duration_seconds_count", route="/v1/images/edits") == 3
    task = {"model": "gpt-image-2", "engine": "classic"}
    assert value(text, "imagegate_tasks_total", **task, state="success") == 2
    assert value(text, "imagegate_tasks_total", **task, state="fail") == 1
    assert value(text, "imagegate_task_failures_total", code=bad.json()["error"]["code"]) == 1
    assert value(text, "imagegate_images_total", **task) == 2
    assert value(text, "imagegate_task_duration_seconds_count", engine="classic") == 3
    assert value(text, "imagegate_engine_runs_in_progress", engine="classic") == 0
    assert "/files/AAAA" not in text, "raw paths must not become labels"


async def test_each_app_has_its_own_metrics(api: Api, tmp_path: Path) -> None:
    await api.client.get("/healthz")
    other = load_config(data_dir=tmp_path / "other", fetch_allow=LOOPBACK_ALLOW)
    async with open_api(other) as second:
        text = (await second.client.get("/metrics")).text
    assert value(text, "imagegate_http_requests_total", method="GET", route="/healthz", status="200") == 0


async def test_public_url_from_the_environment_is_the_base_of_result_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGATE_PUBLIC_URL", "https://images.example.com/gate/")
    config = load_config(data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW)
    async with open_api(config) as api:
        r = await api.client.post(
            "/v1/images/edits",
            headers=api.auth,
            data={"prompt": "sepia", "response_format": "url"},
            files=[("image", ("a.png", PNG, "image/png"))],
        )
        url = r.json()["data"][0]["url"]
        assert url.startswith("https://images.example.com/gate/files/") and url.endswith(".png")
        local = await api.client.get(url.removeprefix("https://images.example.com/gate"))
        assert local.status_code == 200 and local.headers["content-type"] == "image/png"


def test_serve_raises_its_open_files_limit_as_far_as_the_system_allows() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        now = raise_descriptor_limit(4096)
        expected = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        assert now == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raise_descriptor_limit(128) == expected, "never lowered"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
