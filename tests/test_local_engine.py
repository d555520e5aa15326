"""The local (diffusers) engine behind the real app, on tiny random-weight pipelines loaded from disk
by the engine's own `from_pretrained` code: every dialect, several references, generation, `n`,
streamed partials from the denoising, seeds, refusals, interruption, out-of-memory and health."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import openai
import orjson
import pybase64
import pytest
from PIL import Image

from imagegate.config import load_config
from imagegate.engines.local.engine import LocalEngine
from imagegate.stores import keys
from tests.conftest import LOOPBACK_ALLOW, Api, FileServer, decode, free_port, make_image, open_api, start_serve
from tests.waiting import record_info, wait_for_task_async

torch = pytest.importorskip("torch", reason="the local extra (torch, diffusers) is not installed")

PNG = make_image(96, 64)
MODELS = {
    "pix2pix": ["gpt-image-1", "dall-e-2"],
    "klein": ["gpt-image-2"],
    "kontext": ["gpt-image-2-image-to-image"],
    "sd": ["gpt-image-2-text-to-image", "gpt-image-1.5"],
}


def channel(name: str, path: Path, **settings: Any) -> dict[str, Any]:
    """A local channel; one failure opens its circuit, so a test sees when one counts against it."""
    base = {"name": name, "engine": "diffusers", "model": str(path), "models": MODELS[name], "steps": 2}
    return {**base, "breaker_failures": 1, **settings}


@pytest.fixture
async def local(tmp_path: Path, tiny_models: dict[str, Path]) -> AsyncIterator[Api]:
    channels = [channel(name, path) for name, path in tiny_models.items()]
    config = load_config(data_dir=tmp_path / "data", fetch_allow=LOOPBACK_ALLOW, channels=channels)
    async with open_api(config) as api:
        yield api


def engine_of(api: Api, name: str) -> LocalEngine:
    runtime = api.client._transport.app.state.runtime  # type: ignore[attr-defined]
    found = next(c.engine for c in runtime.channels if c.settings.name == name)
    assert isinstance(found, LocalEngine)
    return found


async def loaded(api: Api, name: str) -> Any:
    return await anyio.to_thread.run_sync(engine_of(api, name).model.load)


def sdk(api: Api) -> tuple[openai.AsyncOpenAI, httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=api.client._transport.app)  # type: ignore[attr-defined]
    http = httpx2.AsyncClient(transport=transport, base_url="http://testserver", timeout=60)
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=api.key, http_client=http, max_retries=0), http


async def last_call(api: Api) -> dict[str, Any]:
    """The engine report of the key's newest task (GET /v1/usage)."""
    usage = (await api.client.get("/v1/usage", headers=api.auth)).json()
    calls: list[dict[str, Any]] = usage["tasks"][0]["calls"]
    return calls[0]


async def edit(api: Api, model: str, images: list[bytes], **fields: str) -> Any:
    files = [("image[]", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return await api.client.post("/v1/images/edits", headers=api.auth, data={"model": model, **fields}, files=files)


async def test_the_openai_sdk_edits_through_a_local_model_at_the_exact_size(local: Api) -> None:
    client, http = sdk(local)
    async with http:
        result = await client.images.edit(
            model="gpt-image-1",
            image=("a.png", PNG, "image/png"),
            prompt="make it look like winter",
            size="1536x1024",
            extra_body={"seed": 7},
        )
    assert result.data and result.data[0].b64_json
    image = decode(pybase64.b64decode(result.data[0].b64_json))
    assert image.size == (1536, 1024)
    call = await last_call(local)
    assert call["engine"] == "diffusers" and call["family"] == "instruct-pix2pix" and call["channel"] == "pix2pix"
    assert call["seed"] == 7 and call["steps"] == 2 and call["native_size"] == "40x28"
    usage = (await local.client.get("/v1/usage", headers=local.auth)).json()
    assert usage["tasks"][0]["resampled_from"] == "40x28"


async def test_a_seed_repeats_a_run_and_the_seed_of_an_unseeded_run_is_recorded(local: Api) -> None:
    first = await edit(local, "gpt-image-1", [PNG], prompt="x", seed="11")
    again = await edit(local, "gpt-image-1", [PNG], prompt="x", seed="11")
    other = await edit(local, "gpt-image-1", [PNG], prompt="x", seed="12")
    images = [r.json()["data"][0]["b64_json"] for r in (first, again, other)]
    assert images[0] == images[1] != images[2]
    unseeded = await edit(local, "gpt-image-1", [PNG], prompt="x")
    seed = (await last_call(local))["seed"]
    assert isinstance(seed, int)
    repeated = await edit(local, "gpt-image-1", [PNG], prompt="x", seed=str(seed))
    assert repeated.json()["data"][0]["b64_json"] == unseeded.json()["data"][0]["b64_json"]


async def test_several_references_go_to_a_model_that_takes_them_and_are_refused_by_one_that_does_not(
    local: Api,
) -> None:
    banner = make_image(2000, 20)  # cropped to 8:1 for the model, which refuses more
    many = await edit(
        local, "gpt-image-2", [PNG, make_image(50, 80), banner], prompt="图1 next to 图2", size="1024x1024"
    )
    assert many.status_code == 200, many.text
    assert (await last_call(local))["family"] == "flux2-klein"
    refused = await edit(local, "gpt-image-1", [PNG, PNG, PNG], prompt="x")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "image" and error["code"] == "model_not_supported"
    assert "takes 1 reference image; 3 were given" in error["message"]


async def test_generation_and_n_on_text_to_image_models_and_a_clear_400_on_an_edit_only_one(local: Api) -> None:
    client, http = sdk(local)
    async with http:
        made = await client.images.generate(model="gpt-image-1.5", prompt="a lighthouse", n=3, size="1024x1024")
        assert made.data is not None and len(made.data) == 3
        pictures = {item.b64_json for item in made.data}
        assert len(pictures) == 3, "n images from one batch differ"
        klein = await client.images.generate(model="gpt-image-2", prompt="a lighthouse", size="1536x1024")
        assert klein.data and decode(pybase64.b64decode(klein.data[0].b64_json or "")).size == (1536, 1024)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.generate(model="gpt-image-1", prompt="a lighthouse")
    assert refused.value.code == "model_not_supported"
    assert "edits images and needs at least one" in str(refused.value.message)


async def test_streamed_partials_are_previews_of_the_real_denoising(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    config = load_config(data_dir=tmp_path / "d", channels=[channel("klein", tiny_models["klein"], steps=6)])
    async with open_api(config) as api:
        form = {"prompt": "a boat", "stream": "true", "partial_images": "2", "size": "1024x1024"}
        r = await edit(api, "gpt-image-2", [PNG], **form)
        assert r.status_code == 200, r.text
        events = [orjson.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        assert [e["type"] for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
        previews = [decode(pybase64.b64decode(e["b64_json"])) for e in events[:2]]
        assert all(p.size == (1024, 1024) for p in previews)
        assert previews[0].tobytes() != previews[1].tobytes(), "each preview shows a later step"


async def test_the_envelope_and_jobs_dialects_run_local_models_with_their_seed(
    local: Api, file_server: FileServer
) -> None:
    url = file_server.put("in.png", PNG)
    body = {"model": "gpt-image-2-image-to-image", "prompt": "x", "image": url, "size": "16:9", "seed": 5}
    r = await local.client.post("/v1/images/edit", headers=local.auth, json=body)
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    call = await last_call(local)
    assert call["family"] == "flux-kontext" and call["seed"] == 5
    payload = {"model": "gpt-image-2-image-to-image", "input": {"prompt": "x", "image_urls": [url], "seed": 6}}
    created = await local.client.post("/api/v1/jobs/createTask", headers=local.auth, json=payload)
    task_id = created.json()["data"]["taskId"]
    info = (await wait_for_task_async(local.client, record_info(task_id), headers=local.auth)).json()["data"]
    assert info["state"] == "success", info
    assert (await last_call(local))["seed"] == 6


async def test_a_mask_keeps_the_pixels_outside_it(local: Api) -> None:
    mask = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 48, 64))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    files = [("image", ("a.png", PNG, "image/png")), ("mask", ("m.png", buf.getvalue(), "image/png"))]
    r = await local.client.post(
        "/v1/images/edits", headers=local.auth, data={"model": "gpt-image-1", "prompt": "x"}, files=files
    )
    assert r.status_code == 200, r.text
    out = decode(pybase64.b64decode(r.json()["data"][0]["b64_json"])).convert("RGB")
    original = decode(PNG).convert("RGB").resize(out.size, Image.Resampling.LANCZOS)
    right = (out.width * 3 // 4, out.height // 2)
    kept, was = out.getpixel(right), original.getpixel(right)
    assert isinstance(kept, tuple) and isinstance(was, tuple)
    assert max(abs(a - b) for a, b in zip(kept, was, strict=True)) <= 2


def counting(module: Any, monkeypatch: pytest.MonkeyPatch, before: Callable[[int], None] | None = None) -> list[int]:
    """Count the calls of `module`'s forward (one per denoising step); `before(count)` runs first."""
    calls = [0]
    forward = module.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if before is not None:
            before(calls[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(module, "forward", counted)
    return calls


async def test_a_timed_out_run_stops_at_the_next_step_and_frees_the_device(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = channel("kontext", tiny_models["kontext"], steps=5000, timeout_s=0.5)
    quick = channel("sd", tiny_models["sd"])
    config = load_config(data_dir=tmp_path / "d", channels=[slow, quick])
    async with open_api(config) as api:
        pipe = await loaded(api, "kontext")
        steps = counting(pipe.transformer, monkeypatch)
        r = await edit(api, "gpt-image-2-image-to-image", [PNG], prompt="x")
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert "did not finish within 0.5 s" in r.json()["error"]["message"]
        stopped_at = steps[0]
        after = await api.client.post(
            "/v1/images/generations", headers=api.auth, json={"model": "gpt-image-2-text-to-image", "prompt": "x"}
        )
        assert after.status_code == 200, "the device is free for the next job"
        assert 0 < stopped_at < 5000 and steps[0] <= stopped_at + 1


async def test_a_client_that_leaves_stops_the_run(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(data_dir=tmp_path / "d", channels=[channel("sd", tiny_models["sd"], steps=5000)])
    async with open_api(config) as api:
        pipe = await loaded(api, "sd")
        running = threading.Event()
        steps = counting(pipe.unet, monkeypatch, lambda count: running.set())
        body = {"model": "gpt-image-2-text-to-image", "prompt": "x"}
        request = asyncio.create_task(api.client.post("/v1/images/generations", headers=api.auth, json=body))
        await anyio.to_thread.run_sync(running.wait, 10)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(0.3)
        settled = steps[0]
        await asyncio.sleep(0.3)
        assert steps[0] == settled < 5000, "no step runs after the client left"
        usage = (await api.client.get("/v1/usage", headers=api.auth)).json()
        assert usage["tasks"][0]["state"] == "fail" and usage["held"] == "0"


async def test_out_of_memory_fails_that_request_clearly_and_the_engine_goes_on(
    local: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = await loaded(local, "pix2pix")

    def oom_once(count: int) -> None:
        if count == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    counting(pipe.unet, monkeypatch, oom_once)
    r = await edit(local, "gpt-image-1", [PNG], prompt="x", n="2")
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "out_of_memory" and "ran out of memory" in error["message"] and "20.00 GiB" not in r.text
    usage = (await local.client.get("/v1/usage", headers=local.auth)).json()
    assert usage["held"] == "0" and usage["tasks"][0]["state"] == "fail"
    assert (await edit(local, "gpt-image-1", [PNG], prompt="x")).status_code == 200


async def test_health_reports_loading_ready_and_failed_models(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for part in tiny_models["sd"].iterdir():
        if part.name != "unet":
            (broken / part.name).symlink_to(part)
    (broken / "unet").mkdir()
    (broken / "unet" / "config.json").write_text((tiny_models["sd"] / "unet" / "config.json").read_text())
    channels = [
        channel("klein", tiny_models["klein"], preload=True),
        {**channel("sd", broken, preload=True), "name": "broken"},
    ]
    config = load_config(data_dir=tmp_path / "d", channels=channels)
    async with open_api(config) as api:

        async def settled() -> dict[str, Any]:
            health: dict[str, Any] = (await api.client.get("/readyz")).json()["channels"]
            return health

        health = await wait_for_task_async(
            settled, done=lambda h: h["klein"]["state"] == "ready" and h["broken"]["state"] == "failed", what="loads"
        )
        assert health["klein"]["device"] == "cpu" and "error" not in health["klein"]
        assert health["broken"]["error"]
        r = await api.client.post(
            "/v1/images/generations", headers=api.auth, json={"model": "gpt-image-2-text-to-image", "prompt": "x"}
        )
        assert r.status_code == 502 and "failed" in r.json()["error"]["message"]


@pytest.mark.e2e
def test_the_real_server_serves_local_models_to_the_openai_sdk(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text(
        f"""
[[channels]]
name = "klein"
engine = "diffusers"
model = "{tiny_models["klein"]}"
models = ["gpt-image-2"]
steps = 4
preload = true
"""
    )
    env = {**os.environ, "IMAGEGATE_CONFIG": str(config), "IMAGEGATE_DATA_DIR": str(tmp_path / "data")}
    port = free_port()
    with (tmp_path / "serve.log").open("w+") as log:
        proc = start_serve(port, env, log)
        try:
            log.seek(0)
            key = next(line for line in log.read().splitlines() if line.startswith(keys.KEY_PREFIX))
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            two = [("a.png", PNG, "image/png"), ("b.png", make_image(64, 96), "image/png")]
            edited = client.images.edit(
                model="gpt-image-2", image=two, prompt="图1 in the style of 图2", size="1024x1536"
            )
            assert edited.data and decode(pybase64.b64decode(edited.data[0].b64_json or "")).size == (1024, 1536)
            stream = client.images.edit(
                model="gpt-image-2", image=two[0], prompt="a boat", stream=True, partial_images=2, size="1024x1024"
            )
            kinds = [event.type for event in stream]
            assert kinds == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
            made = client.images.generate(model="gpt-image-2", prompt="a lighthouse", size="1024x1024")
            assert made.data and made.data[0].b64_json
            health = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
            assert health["channels"]["klein"]["state"] == "ready"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def sd_lora(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    """A LoRA file for the tiny Stable Diffusion UNet (random, so it visibly changes the output)."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    loader: Any = DiffusionPipeline
    pipe = loader.from_pretrained(str(tiny_models["sd"]), local_files_only=True)
    torch.manual_seed(5)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets))
    with torch.no_grad():
        for name, weights in pipe.unet.named_parameters():
            if "lora_B" in name:  # a new LoRA's B is zero: it would change nothing
                weights.normal_(std=0.5)
    saver: Any = StableDiffusionPipeline
    saver.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return tmp_path / "lora" / "pytorch_lora_weights.safetensors"


async def test_a_lora_file_changes_the_model_and_brings_its_step_count(
    tmp_path: Path, tiny_models: dict[str, Path], sd_lora: Path
) -> None:
    plain = channel("sd", tiny_models["sd"], steps=3, models=["gpt-image-1.5"])
    styled = {
        **channel("sd", tiny_models["sd"], steps=None, models=["gpt-image-2-text-to-image"]),
        "name": "sd-lora",
        "lora": [{"path": str(sd_lora), "steps": 3}],
    }
    config = load_config(data_dir=tmp_path / "d", channels=[plain, styled])
    async with open_api(config) as api:
        body = {"prompt": "a lighthouse", "seed": 9}
        made: list[bytes] = []
        for model in ("gpt-image-1.5", "gpt-image-2-text-to-image"):
            r = await api.client.post("/v1/images/generations", headers=api.auth, json={**body, "model": model})
            assert r.status_code == 200, r.text
            item = r.json()["data"][0]
            if "b64_json" in item:
                made.append(decode(pybase64.b64decode(item["b64_json"])).tobytes())
            else:
                made.append(decode((await api.client.get(item["url"])).content).tobytes())
            call = await last_call(api)
            assert call["steps"] == 3, "the LoRA's step count is the channel's default"
        assert made[0] != made[1], "the same seed and steps with and without the LoRA"


async def test_waiting_for_ones_turn_is_not_part_of_the_timeout(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    config = load_config(data_dir=tmp_path / "d", channels=[channel("sd", tiny_models["sd"], steps=20, timeout_s=1.5)])
    async with open_api(config) as api:
        body = {"model": "gpt-image-2-text-to-image", "prompt": "x"}
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(api.client.post("/v1/images/generations", headers=api.auth, json=body) for _ in range(6))
        )
        took = time.perf_counter() - started
        assert [r.status_code for r in answers] == [200] * 6
        assert took > 1.5, "six runs one after another take longer than one run's timeout"


async def test_bad_seeds_and_masks_are_refused_before_anything_runs(
    local: Api, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = counting((await loaded(local, "pix2pix")).unet, monkeypatch)
    url = file_server.put("in.png", PNG)
    payload = {"model": "gpt-image-2-image-to-image", "input": {"prompt": "x", "image_urls": [url], "seed": -5}}
    r = await local.client.post("/api/v1/jobs/createTask", headers=local.auth, json=payload)
    assert r.status_code == 422 and "seed" in r.json()["msg"], "the task-jobs dialect answers a bad field with 422"
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (0, 0, 0)).save(buf, "PNG")
    files = [("image", ("a.png", PNG, "image/png")), ("mask", ("m.png", buf.getvalue(), "image/png"))]
    r = await local.client.post(
        "/v1/images/edits", headers=local.auth, data={"model": "gpt-image-1", "prompt": "x", "n": "3"}, files=files
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"
    assert steps[0] == 0, "no denoising step ran for a request that was going to be refused"
    usage = (await local.client.get("/v1/usage", headers=local.auth)).json()
    assert usage["held"] == "0"


def test_one_device_has_one_lock_whatever_its_spelling() -> None:
    from imagegate.engines.local.model import device_key, device_lock

    assert device_key("cpu") == device_key("cpu:0") == "cpu"
    assert device_lock("cpu") is device_lock("cpu:0")


@pytest.mark.parametrize(
    "settings",
    [{"offload": "sequential"}, {"compile": True, "preload": True}],
    ids=["offload-on-a-cpu", "compile"],
)
async def test_offload_and_compile_serve_like_the_plain_model(
    tmp_path: Path, tiny_models: dict[str, Path], settings: dict[str, Any]
) -> None:
    """Offload does nothing on a CPU (the weights are already there; accelerate's sequential offload
    would fail), and compile warms up the regional compile at load (here on the CPU, with its C++
    compiler): both serve what the plain model serves."""
    plain = channel("klein", tiny_models["klein"], models=["gpt-image-2"])
    tuned = {
        **channel("klein", tiny_models["klein"], models=["gpt-image-2-text-to-image"]),
        "name": "tuned",
        **settings,
    }
    config = load_config(data_dir=tmp_path / "d", channels=[plain, tuned])
    async with open_api(config) as api:
        made = []
        for model in ("gpt-image-2", "gpt-image-2-text-to-image"):
            body = {"model": model, "prompt": "a lighthouse", "seed": 4, "size": "1024x1024"}
            r = await api.client.post("/v1/images/generations", headers=api.auth, json=body)
            assert r.status_code == 200, r.text
            item = r.json()["data"][0]
            data = (
                pybase64.b64decode(item["b64_json"])
                if "b64_json" in item
                else (await api.client.get(item["url"])).content
            )
            made.append(decode(data).tobytes())
        assert engine_of(api, "tuned").model.state == "ready"
        assert made[0] == made[1], "the same seed makes the same picture with or without the setting"
