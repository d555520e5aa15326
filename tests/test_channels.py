"""Upstream channels (SPEC §5): imagegate A relaying to imagegate B and to fault-injecting providers
on loopback — retries, failover, breakers, the provider's own rejections, and released holds."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegate.builtins import builtin_registry
from imagegate.config import Config, ConfigError, load_config
from imagegate.core.catalog import Catalog
from imagegate.service.channels import check_channels
from tests.conftest import (
    LOOPBACK_ALLOW,
    Api,
    FileServer,
    LiveServer,
    audit_ledgers,
    decode,
    free_port,
    invoke_cli,
    make_image,
    open_api,
    run_cli,
    start_serve,
)
from tests.test_accounts import DATA_URL, UNLIMITED
from tests.test_error_shapes import envelope_shape, openai_shape
from tests.upstreams import faulty_provider
from tests.waiting import record_info, wait_for_task, wait_for_task_async

PNG = make_image(320, 240)


def relay_config(tmp_path: Path, *channels: dict[str, object]) -> Config:
    return load_config(data_dir=tmp_path / "a", fetch_allow=LOOPBACK_ALLOW, accounts=UNLIMITED, channels=list(channels))


def b_key(live: LiveServer, *options: str) -> str:
    made = invoke_cli("keys", "create", "--credits", "100000", "--json", *options, env=live.env)
    key: str = json.loads(made.stdout.strip().splitlines()[-1])["key"]
    return key


def to_b(live: LiveServer, monkeypatch: pytest.MonkeyPatch, *options: str, **channel: object) -> dict[str, object]:
    """A channel to imagegate B over the OpenAI dialect (unless `engine` says otherwise), with a new
    key on B (created with `options`) in B_KEY."""
    monkeypatch.setenv("B_KEY", b_key(live, *options))
    return {"name": "b", "base_url": f"{live.base}/v1", "api_key_env": "B_KEY", **channel}


async def upload_edit(api: Api, form: dict[str, str]) -> httpx.Response:
    """A multipart edit of PNG on `api` with the fields `form`."""
    return await api.client.post(
        "/v1/images/edits", headers=api.auth, files=[("image", ("a.png", PNG, "image/png"))], data=form
    )


def task_result(config: Config, task_id: str) -> dict[str, Any]:
    with sqlite3.connect(config.data_dir / "imagegate.db") as db:
        (raw,) = db.execute("SELECT result FROM tasks WHERE id = ?", (task_id,)).fetchone()
    result: dict[str, Any] = json.loads(raw)
    return result


async def test_a_relays_sync_edits_to_b_through_the_openai_dialect(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = to_b(live_server, monkeypatch, timeout_s=60)
    config = relay_config(tmp_path, channel)
    async with open_api(config) as api:
        r = await upload_edit(api, {"prompt": "make it black and white", "size": "1536x1024", "output_format": "webp"})
        assert r.status_code == 200, r.text
        assert r.headers["x-imagegate-engine"] == "openai"
        image = decode(base64.b64decode(r.json()["data"][0]["b64_json"]))
        assert (image.format, image.size) == ("WEBP", (1536, 1024))
        red, green, blue = image.convert("RGB").getpixel((700, 500))  # type: ignore[misc]
        assert red == green == blue, "B's classic engine made it grayscale"
        assert "grayscale" in r.json()["data"][0]["revised_prompt"]
        (report,) = task_result(config, r.json()["task_id"])["upstream"]
        assert report["channel"] == "b" and report["attempts"] == 1 and report["failovers"] == 0
        assert report["usage"]["total_tokens"] > 0 and report["latency_ms"] >= 0
        assert r.json()["usage"] == report["usage"], "the client sees the provider's usage"

        models = (await api.client.get("/v1/models", headers=api.auth)).json()["data"]
        assert {m["engine"] for m in models} == {"openai"}


@pytest.mark.parametrize("engine", ["openai", "envelope"])
async def test_a_relays_async_tasks_from_urls(
    live_server: LiveServer, file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    channel = to_b(live_server, monkeypatch, timeout_s=60, engine=engine)
    config = relay_config(tmp_path, channel)
    url = file_server.put("in.png", PNG)
    async with open_api(config) as api:
        created = await api.client.post(
            "/api/v1/jobs/createTask",
            headers=api.auth,
            json={
                "model": "gpt-image-2-image-to-image",
                "input": {"prompt": "sepia", "image_urls": [url], "aspect_ratio": "16:9", "output_format": "jpg"},
            },
        )
        task_id = created.json()["data"]["taskId"]
        info = (await wait_for_task_async(api.client, record_info(task_id), headers=api.auth)).json()
        assert info["data"]["state"] == "success", info
        result_url = json.loads(info["data"]["resultJson"])["resultUrls"][0]
        image = decode((await api.client.get(httpx.URL(result_url).path)).content)
    assert (image.format, image.size) == ("JPEG", (1536, 864))


async def test_the_providers_rejection_reaches_the_client_in_its_dialect(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = to_b(live_server, monkeypatch, "--max-images", "1", timeout_s=60)
    config = relay_config(tmp_path, channel)
    async with open_api(config) as api:
        two = {"prompt": "sepia", "image": DATA_URL, "n": 2}
        openai_style = await api.client.post("/v1/images/edits", headers=api.auth, json=two)
        envelope_style = await api.client.post("/v1/images/edit", headers=api.auth, json=two)
        generation = await api.client.post(
            "/v1/images/generations", headers=api.auth, json={"prompt": "a red circle", "n": 2}
        )
    assert openai_style.status_code == 400, openai_style.text
    openai_shape(openai_style.json(), 400)
    error = openai_style.json()["error"]
    assert error["param"] == "n" and "at most 1 images" in error["message"], "B's own words"
    assert envelope_style.status_code == 400 and "at most 1 images" in envelope_style.json()["message"]
    envelope_shape(envelope_style.json(), 400)
    assert generation.status_code == 400 and "at most 1 images" in generation.json()["error"]["message"]
    audit_ledgers(config.data_dir / "imagegate.db")


async def test_100_concurrent_requests_survive_a_half_faulty_channel(tmp_path: Path) -> None:
    with faulty_provider(0.5, stall_s=1.5) as flaky, faulty_provider(0.0) as healthy:
        common = {"timeout_s": 0.8, "max_retries": 2, "retry_backoff_s": 0.05, "breaker_rest_s": 0.5}
        config = relay_config(
            tmp_path,
            {"name": "flaky", "base_url": flaky.base_url, "priority": 0, **common},
            {"name": "healthy", "base_url": healthy.base_url, "priority": 1, **common},
        )
        async with open_api(config) as api:

            async def edit() -> httpx.Response:
                body = {"model": "dall-e-2", "prompt": "x", "image": DATA_URL, "size": "256x256"}
                return await api.client.post("/v1/images/edits", headers=api.auth, json=body)

            responses = await asyncio.gather(*(edit() for _ in range(100)))
            metrics = (await api.client.get("/metrics")).text
        assert Counter(r.status_code for r in responses) == {200: 100}, [
            r.text for r in responses if r.status_code != 200
        ][:3]
        assert all(flaky.count(fault) > 0 for fault in ("429", "500", "drop", "stall")), flaky.seen
        assert healthy.count("ok") > 0, "failover reached the second channel"
    assert 'imagegate_upstream_attempts_total{channel="flaky",result="retryable"}' in metrics
    assert 'imagegate_upstream_attempts_total{channel="healthy",result="ok"}' in metrics
    audit_ledgers(config.data_dir / "imagegate.db")


async def test_with_every_channel_down_the_client_gets_502_or_504_in_time_and_its_hold_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("UP_KEY", "sk-upstream-secret-1234567890")
    caplog.set_level(logging.DEBUG)
    with faulty_provider(1.0, stall_s=1.0, seed=3) as down_one, faulty_provider(1.0, stall_s=1.0, seed=5) as down_two:
        common = {"timeout_s": 0.5, "max_retries": 1, "retry_backoff_s": 0.01, "api_key_env": "UP_KEY"}
        config = relay_config(
            tmp_path,
            {"name": "one", "base_url": down_one.base_url, "priority": 0, **common},
            {"name": "two", "base_url": down_two.base_url, "priority": 1, **common},
        )
        async with open_api(config) as api:
            started = time.monotonic()
            body = {"prompt": "x", "image": DATA_URL, "size": "1024x1024"}
            openai_style = await api.client.post("/v1/images/edits", headers=api.auth, json=body)
            envelope_style = await api.client.post("/v1/images/edit", headers=api.auth, json=body)
            elapsed = time.monotonic() - started
            created = await api.client.post(
                "/api/v1/jobs/createTask",
                headers=api.auth,
                json={"model": "gpt-image-2-text-to-image", "input": {"prompt": "x"}},
            )
            task_id = created.json()["data"]["taskId"]
            info = await wait_for_task_async(api.client, record_info(task_id), headers=api.auth)
            usage = (await api.client.get("/v1/usage", headers=api.auth)).json()
        assert down_one.keys[0] == "Bearer sk-upstream-secret-1234567890", "the channel's key was sent"
    assert openai_style.status_code in (502, 504) and envelope_style.status_code in (502, 504)
    openai_shape(openai_style.json(), openai_style.status_code)
    envelope_shape(envelope_style.json(), envelope_style.status_code)
    assert elapsed < 2 * 2 * (0.5 + 0.1) * 2 + 1, "within the channels' timeouts and retries"
    assert info.json()["data"]["failCode"] in ("upstream_error", "upstream_timeout"), info.text
    assert usage["balance"] == "1000" and usage["held"] == "0"
    audit_ledgers(config.data_dir / "imagegate.db")
    everything = openai_style.text + envelope_style.text + info.text + caplog.text
    assert "sk-upstream-secret" not in everything, "upstream keys never reach responses or logs"


def test_bad_channel_config_fails_naming_the_key(tmp_path: Path) -> None:
    catalog = Catalog.from_config({})
    cases = [
        ({"name": "x", "engine": "telepathy", "base_url": "http://h/v1"}, "channels.0.engine"),
        ({"name": "x", "base_url": "http://h/v1", "models": ["gpt-9"]}, "channels.0.models"),
        ({"name": "x"}, "channels.0.base_url"),
        ({"name": "x", "base_url": "http://h/v1", "api_key_env": "IMAGEGATE_TEST_UNSET"}, "channels.0.api_key_env"),
    ]
    for channel, key in cases:
        config = load_config(data_dir=tmp_path, channels=[channel])
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_channels(config, catalog, builtin_registry().engines, env={})
    with pytest.raises(ConfigError, match="unique"):
        load_config(data_dir=tmp_path, channels=[{"name": "x"}, {"name": "x"}])


def test_channels_check_probes_each_channel_and_serve_refuses_a_bad_one(
    live_server: LiveServer, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = tmp_path / "channels.toml"
    config.write_text(
        f'[[channels]]\nname = "b"\nbase_url = "{live_server.base}/v1"\napi_key_env = "B_KEY"\n'
        f'[[channels]]\nname = "gone"\nbase_url = "{dead}"\ntimeout_s = 2\n'
    )
    env = {**live_server.env, "IMAGEGATE_DATA_DIR": str(tmp_path / "d"), "B_KEY": b_key(live_server)}
    checked = invoke_cli("channels", "check", "--config", str(config), env=env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    rows = {line.split()[1]: line for line in checked.stdout.splitlines() if line.startswith("│")}
    assert "ok" in rows["b"] and "down" in rows["gone"] and "ConnectError" in rows["gone"]
    assert env["B_KEY"] not in checked.stdout

    config.write_text('[[channels]]\nname = "x"\nbase_url = "http://h/v1"\napi_key_env = "IMAGEGATE_UNSET_KEY"\n')
    refused = run_cli("serve", "--config", str(config), "--port", str(free_port()), env=env)
    assert refused.returncode == 2 and "channels.0.api_key_env" in refused.stderr


async def test_a_relays_to_b_through_the_envelope_dialect(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = to_b(live_server, monkeypatch, engine="envelope")
    config = relay_config(tmp_path, channel)
    async with open_api(config) as api:
        r = await upload_edit(api, {"prompt": "invert the colors", "size": "1024x1536", "n": "2"})
        generation = await api.client.post(
            "/v1/images/generations", headers=api.auth, json={"prompt": "a red circle", "n": 2}
        )
    assert r.status_code == 200, r.text
    assert [decode(base64.b64decode(item["b64_json"])).size for item in r.json()["data"]] == [(1024, 1536)] * 2
    (report,) = task_result(config, r.json()["task_id"])["upstream"]
    assert report["engine"] == "envelope" and report["channel"] == "b"
    assert generation.status_code == 400, "an envelope channel only edits"


@contextmanager
def relay_server(live: LiveServer, tmp_path: Path, channel_toml: str) -> Iterator[tuple[str, str, Path]]:
    """Imagegate A as a real process (B must reach it back) with one channel to B; yields its base
    URL, a key with credits, and its data dir."""
    port = free_port()
    config = tmp_path / "a.toml"
    config.write_text(f'[[channels]]\nname = "b"\napi_key_env = "B_KEY"\ntimeout_s = 60\n{channel_toml}')
    data_dir = tmp_path / "a"
    env = {
        **live.env,
        "IMAGEGATE_DATA_DIR": str(data_dir),
        "IMAGEGATE_CONFIG": str(config),
        "IMAGEGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "B_KEY": b_key(live),
    }
    key = json.loads(invoke_cli("keys", "create", "--credits", "100", "--json", env=env).stdout)["key"]
    with (data_dir / "serve.log").open("w") as log:
        server = start_serve(port, env, log)
        try:
            yield f"http://127.0.0.1:{port}", key, data_dir
        finally:
            server.terminate()
            server.wait(10)


def relayed_edit(base: str, key: str, **form: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/images/edits",
        headers={"Authorization": f"Bearer {key}"},
        files=[("image", ("a.png", PNG, "image/png"))],
        data=form,
        timeout=60,
    )


def async_task(base: str, key: str, image_url: str) -> httpx.Response:
    """A createTask on `base` for a 4:3 edit of `image_url`, polled until it ends; its last recordInfo."""
    auth = {"Authorization": f"Bearer {key}"}
    body = {
        "model": "gpt-image-2-image-to-image",
        "input": {"prompt": "blur", "image_urls": [image_url], "aspect_ratio": "4:3"},
    }
    with httpx.Client(base_url=base, headers=auth) as client:
        task_id = client.post("/api/v1/jobs/createTask", json=body).json()["data"]["taskId"]
        return wait_for_task(client, record_info(task_id), timeout_s=60, interval=0.1)


def test_a_relays_to_b_through_the_jobs_dialect_with_signed_input_urls(
    live_server: LiveServer, file_server: FileServer, tmp_path: Path
) -> None:
    channel = f'engine = "jobs"\nbase_url = "{live_server.base}/api/v1"\npoll_interval_s = 0.1\n'
    with relay_server(live_server, tmp_path, channel) as (base, key, data_dir):
        r = relayed_edit(base, key, prompt="mirror it", size="2048x1152", output_format="jpeg")
        forged = httpx.get(f"{base}/inputs/relay.x.png~9999999999~{'0' * 32}")
        later = async_task(base, key, file_server.put("in.png", PNG))
    assert later.json()["data"]["state"] == "success", later.text
    assert r.status_code == 200, r.text
    image = decode(base64.b64decode(r.json()["data"][0]["b64_json"]))
    assert (image.format, image.size) == ("JPEG", (2048, 1152))
    assert forged.status_code == 404
    assert not list(data_dir.glob("files/*/relay.*")), "published inputs are withdrawn after the attempt"


def test_a_relays_to_b_by_callback_in_seed_003s_async_mode(
    live_server: LiveServer, file_server: FileServer, tmp_path: Path
) -> None:
    channel = f'base_url = "{live_server.base}/v1"\ncallback = true\n'
    with relay_server(live_server, tmp_path, channel) as (base, key, data_dir):
        r = relayed_edit(base, key, prompt="cartoon style", size="1024x1024")
        later = async_task(base, key, file_server.put("in.png", PNG))
        stray = httpx.post(f"{base}/relay/callbacks/cb.x~9999999999~{'0' * 32}", json={"success": True})
    assert r.status_code == 200, r.text
    assert later.json()["data"]["state"] == "success", later.text
    assert decode(base64.b64decode(r.json()["data"][0]["b64_json"])).size == (1024, 1024)
    with sqlite3.connect(data_dir / "imagegate.db") as db:
        (raw,) = db.execute("SELECT result FROM tasks ORDER BY created_at").fetchone()
    (report,) = json.loads(raw)["upstream"]
    assert report["upstream_task"].startswith("task_"), "B's task id, from its callback"
    assert stray.status_code == 404


def test_openai_channels_may_send_inputs_as_signed_urls_in_json(live_server: LiveServer, tmp_path: Path) -> None:
    channel = f'base_url = "{live_server.base}/v1"\nsend_inputs = "urls"\n'
    with relay_server(live_server, tmp_path, channel) as (base, key, data_dir):
        r = relayed_edit(base, key, prompt="invert", size="1536x1024")
    assert r.status_code == 200, r.text
    assert decode(base64.b64decode(r.json()["data"][0]["b64_json"])).size == (1536, 1024)
    assert not list(data_dir.glob("files/*/relay.*"))


async def test_openai_channels_may_send_inputs_as_data_urls_in_json(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = to_b(live_server, monkeypatch, send_inputs="data_urls")
    async with open_api(relay_config(tmp_path, channel)) as api:
        r = await api.client.post("/v1/images/edits", headers=api.auth, json={"prompt": "emboss", "image": DATA_URL})
    assert r.status_code == 200, r.text
    assert "emboss" in r.json()["data"][0]["revised_prompt"]


async def test_a_streams_b_partials_through_to_a_streaming_client(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = to_b(live_server, monkeypatch)
    config = relay_config(tmp_path, channel)
    async with open_api(config) as api:
        r = await upload_edit(api, {"prompt": "sepia", "size": "1024x1024", "stream": "true", "partial_images": "2"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    kinds = [event["type"] for event in events]
    assert kinds == ["image_edit.partial_image"] * 2 + ["image_edit.completed"], kinds
    assert [event["partial_image_index"] for event in events[:2]] == [0, 1]
    final = decode(base64.b64decode(events[-1]["b64_json"]))
    assert final.size == (1024, 1024) and events[-1]["usage"]["total_tokens"] > 0


async def test_results_are_converted_to_the_requested_format_and_size_when_the_provider_did_not(
    tmp_path: Path,
) -> None:
    with faulty_provider(0.0, size=300) as provider:
        config = relay_config(tmp_path, {"name": "p", "base_url": provider.base_url})
        async with open_api(config) as api:
            r = await api.client.post(
                "/v1/images/generations",
                headers=api.auth,
                json={"prompt": "x", "size": "1536x1024", "output_format": "webp", "n": 2},
            )
    assert r.status_code == 200, r.text
    images = [decode(base64.b64decode(item["b64_json"])) for item in r.json()["data"]]
    assert [(image.format, image.size) for image in images] == [("WEBP", (1536, 1024))] * 2
    assert r.json()["usage"] == {"total_tokens": 14}, "two provider calls (it ignores n), their usage summed"


async def test_an_answer_that_already_fits_reaches_the_client_as_the_providers_own_base64(tmp_path: Path) -> None:
    image = make_image(1024, 1024)
    with faulty_provider(0.0, image=image) as provider:
        config = relay_config(tmp_path, {"name": "p", "base_url": provider.base_url})
        async with open_api(config) as api:
            r = await upload_edit(api, {"prompt": "x", "size": "1024x1024"})
            url = await upload_edit(api, {"prompt": "x", "size": "1024x1024", "response_format": "url"})
            stored = await api.client.get(url.json()["data"][0]["url"])
            streamed = await upload_edit(api, {"prompt": "x", "size": "1024x1024", "stream": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["b64_json"] == base64.b64encode(image).decode(), "passed through untouched"
    events = [json.loads(line[5:]) for line in streamed.text.splitlines() if line.startswith("data:")]
    assert [event["type"] for event in events] == ["image_edit.completed"], "a provider that did not stream"
    assert events[0]["b64_json"] == base64.b64encode(image).decode()
    assert r.headers["content-length"] == str(len(r.content))
    files = list((config.data_dir / "files").rglob("*.png"))
    assert len(files) == 3 and all(path.read_bytes() == image for path in files), "stored as the provider's bytes"
    assert stored.status_code == 200 and stored.content == image


async def test_a_listed_size_off_the_16_grid_is_asked_of_the_provider_on_it_and_cropped(tmp_path: Path) -> None:
    with faulty_provider(0.0, follow_size=True) as provider:
        config = relay_config(tmp_path, {"name": "p", "base_url": provider.base_url})
        async with open_api(config) as api:
            r = await api.client.post(
                "/v1/images/generations", headers=api.auth, json={"prompt": "x", "size": "1920x1080"}
            )
    assert r.status_code == 200, r.text
    assert json.loads(provider.bodies[0])["size"] == "1920x1088", "providers get a size they accept"
    assert decode(base64.b64decode(r.json()["data"][0]["b64_json"])).size == (1920, 1080)
    assert r.json()["size"] == "1920x1080"
    assert task_result(config, r.json()["task_id"])["resampled_from"] == "1920x1088"
