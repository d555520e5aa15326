"""Renamed configuration keys: the grouped names, and the old ones still read for one release."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegate.config import ConfigError, WebhookSettings, load_config
from imagegate.core.catalog import Catalog


def test_storage_relay_and_webhook_settings_have_their_own_tables(tmp_path: Path) -> None:
    file = tmp_path / "imagegate.toml"
    file.write_text(
        '[storage]\nurl = "file:///srv/images"\nresult_urls = "presigned"\npresigned_url_ttl_s = 60\n'
        '[relay]\nsigning_secret = "s3cret"\n'
        "[webhooks]\nretry_delays = [1, 2]\n"
        "[limits]\nmax_input_images = 4\n"
        "[accounts]\nmax_output_images = 3\n"
    )
    config = load_config(file, data_dir=tmp_path)
    assert (config.storage.url, config.storage.result_urls, config.storage.presigned_url_ttl_s) == (
        "file:///srv/images",
        "presigned",
        60,
    )
    assert (config.relay.signing_secret, config.webhooks.retry_delays) == ("s3cret", [1.0, 2.0])
    assert (config.limits.max_input_images, config.accounts.max_output_images) == (4, 3)
    with pytest.raises(ConfigError, match=r"storage\.url"):
        load_config(data_dir=tmp_path, storage={"url": "ftp://x/y"})


def test_the_old_names_are_still_read_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "old.toml"
    file.write_text(
        'storage_url = "file:///srv/old"\nresult_urls = "presigned"\nsigning_secret = "old"\n'
        "[limits]\nmax_images = 5\n[accounts]\nmax_images_per_request = 2\n"
    )
    monkeypatch.setenv("IMAGEGATE_WEBHOOK_RETRY_DELAYS", "7,8")
    config = load_config(file, data_dir=tmp_path)
    assert (config.storage.url, config.storage.result_urls, config.relay.signing_secret) == (
        "file:///srv/old",
        "presigned",
        "old",
    )
    assert (config.limits.max_input_images, config.accounts.max_output_images) == (5, 2)
    assert config.webhooks.retry_delays == [7.0, 8.0]
    warned = " ".join(record.getMessage() for record in caplog.records)
    for old, new in [
        ("storage_url", "storage.url"),
        ("signing_secret", "relay.signing_secret"),
        ("webhook_retry_delays", "webhooks.retry_delays"),
        ("limits.max_images", "limits.max_input_images"),
        ("accounts.max_images_per_request", "accounts.max_output_images"),
    ]:
        assert f"'{old}' is now '{new}'" in warned


def test_a_current_name_wins_over_an_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_STORAGE_URL", "file:///srv/old")
    monkeypatch.setenv("IMAGEGATE_STORAGE__URL", "file:///srv/new")
    assert load_config(data_dir=tmp_path).storage.url == "file:///srv/new"


def test_an_old_key_merges_into_a_settings_object_and_a_models_max_images_is_read(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path, webhooks=WebhookSettings(timeout_s=1.5), webhook_retry_delays="0.1")
    assert (config.webhooks.timeout_s, config.webhooks.retry_delays) == (1.5, [0.1])
    config = load_config(data_dir=tmp_path, models={"gpt-image-2": {"max_images": 2}})
    assert Catalog.from_config(config.models).get("gpt-image-2").max_input_images == 2
    with pytest.raises(ConfigError, match="'storage'"):
        load_config(data_dir=tmp_path, storage=5, storage_url="s3://b/p")
