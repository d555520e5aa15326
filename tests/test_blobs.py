"""The blob store contract, run against every implementation (local directory, memory, S3 on a local
S3-compatible server), and the server on S3 storage: results streamed or presigned, inputs kept."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import httpx
import pytest

from imagegate.config import load_config
from imagegate.stores import blobs
from imagegate.stores.blobs import BlobStore, LocalBlobStore, MemoryBlobStore, S3BlobStore, open_blob_store
from tests.conftest import LOOPBACK_ALLOW, decode, make_image, open_api
from tests.receivers import webhook_receiver


@pytest.fixture(params=["local", "memory", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "files")
    elif request.param == "memory":
        yield MemoryBlobStore()
    else:
        yield S3BlobStore(request.getfixturevalue("s3_bucket"), "some/prefix")


async def test_put_get_open_delete(store: BlobStore) -> None:
    await store.put("abc.png", b"one")
    await store.put_file("def.png", io.BytesIO(b"two" * 100_000))
    assert await store.get("abc.png") == b"one"
    opened = await store.open("def.png")
    assert opened is not None
    with opened:
        assert opened.read() == b"two" * 100_000
        opened.seek(0)
        assert opened.read(3) == b"two", "opened files are seekable (images are opened from them)"
    await store.delete("abc.png")
    await store.delete("abc.png")
    assert await store.get("abc.png") is None and await store.open("abc.png") is None


async def test_written_before_lists_what_was_written_before_a_moment_in_batches(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs, "LISTED_AT_ONCE", 2)
    names = [f"{letter}{letter}old{n}.png" for letter in "ab" for n in range(3)]
    for name in names:
        await store.put(name, b"x")
    await asyncio.sleep(0.05)  # S3's LastModified has whole seconds: the moments are far apart below
    moment = time.time() + 1
    batches = [batch async for batch in store.written_before(moment)]
    assert sorted(name for batch in batches for name, _ in batch) == sorted(names)
    assert all(moment - 60 < written < moment for batch in batches for _, written in batch)
    assert all(0 < len(batch) <= 2 for batch in batches)
    assert [batch async for batch in store.written_before(moment - 3600)] == [], "nothing that old"
    for name in names:
        await store.delete(name)
    assert [batch async for batch in store.written_before(moment)] == [], "deleted ones are not listed"


async def test_names_cannot_escape(store: BlobStore) -> None:
    for bad in ("../x.png", "a/b.png", ".hidden"):
        with pytest.raises(ValueError, match="invalid blob name"):
            await store.put(bad, b"x")
        assert await store.get(bad) is None


def list_keys(bucket: str) -> list[str]:
    return [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_storage_urls_choose_the_store(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(None, tmp_path), LocalBlobStore)
    assert isinstance(open_blob_store(f"file://{tmp_path}/x", tmp_path), LocalBlobStore)
    with pytest.raises(ValueError, match="s3://bucket/prefix or file:///path"):
        load_config(data_dir=tmp_path, storage={"url": "ftp://x/y"})


@pytest.mark.parametrize("result_urls", ["api", "presigned"])
async def test_the_server_keeps_results_and_inputs_in_s3(s3_bucket: str, tmp_path: Path, result_urls: str) -> None:
    config = load_config(
        data_dir=tmp_path / "data",
        fetch_allow=LOOPBACK_ALLOW,
        storage={"url": f"s3://{s3_bucket}/results", "result_urls": result_urls},
    )
    png = make_image(320, 240)
    async with open_api(config) as api:
        r = await api.client.post(
            "/v1/images/edits",
            headers=api.auth,
            files=[("image", ("a.png", png, "image/png"))],
            data={"prompt": "invert", "size": "1024x1024", "response_format": "url"},
        )
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        file_path = f"/files/{httpx.URL(url).path.rsplit('/', 1)[-1]}"
        through_api = await api.client.get(file_path)
        with webhook_receiver() as receiver:
            later = await api.client.post(
                "/v1/images/edits",
                headers=api.auth,
                files=[("image", ("a.png", png, "image/png"))],
                data={"prompt": "invert", "callback_url": receiver.url},
            )
            (delivery,) = await asyncio.to_thread(receiver.wait_for, 1)
        after_async = len(list_keys(s3_bucket))
    if result_urls == "presigned":
        assert "Signature=" in url and not url.startswith("http://testserver"), "the URL is a presigned one"
        assert through_api.status_code == 307, "the API's /files/ URL redirects to a fresh presigned URL"
        async with httpx.AsyncClient() as direct:
            fetched = await direct.get(url)
    else:
        assert url.startswith("http://testserver/files/")
        fetched = through_api
    assert fetched.status_code == 200 and decode(fetched.content).size == (1024, 1024)
    name = url.split("?")[0].rsplit("/", 1)[-1]
    assert fetched.headers["content-type"] == "image/png", "a browser shows the image, not a download"
    if result_urls == "presigned":
        assert fetched.headers["content-disposition"] == f'inline; filename="{name}"'
        stored = boto3.client("s3").head_object(Bucket=s3_bucket, Key=f"results/{name}")
        assert (stored["ContentType"], stored["ContentDisposition"]) == ("image/png", f'inline; filename="{name}"')
    assert later.status_code == 200 and delivery.json["success"] is True, delivery.json
    keys = list_keys(s3_bucket)
    assert len(keys) == after_async == 2 and all(key.startswith("results/") for key in keys), (
        "two results; the async task's stored input was deleted once it ran"
    )
    assert not (tmp_path / "data" / "files").exists() or not list((tmp_path / "data" / "files").rglob("*.png"))
