"""`imagegate models pull | list | check` as an operator runs them (real processes: the Hub client reads
its cache and offline settings from the environment when it is first imported)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, pipeline: Path) -> Path:
    """A Hugging Face cache holding `pipeline` as the `main` revision of `repo_id`, laid out as a
    download leaves it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(pipeline, repo / "snapshots" / COMMIT)
    return root


@pytest.fixture
def operator(tmp_path: Path, tiny_models: dict[str, Path]) -> dict[str, str]:
    """The environment of an operator whose cache holds tiny/klein and whose configuration has two
    local channels: one on that repo id, one on a directory."""
    cache = hub_cache(tmp_path / "hub", "tiny/klein", tiny_models["klein"])
    config = tmp_path / "imagegate.toml"
    config.write_text(
        f"""
[[channels]]
name = "klein"
engine = "diffusers"
model = "tiny/klein"
models = ["gpt-image-2"]

[[channels]]
name = "pix"
engine = "diffusers"
model = "{tiny_models["pix2pix"]}"
models = ["gpt-image-1"]
"""
    )
    return {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "IMAGEGATE_CONFIG": str(config),
        "IMAGEGATE_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "240",
    }


def test_list_shows_each_model_on_disk_with_its_family_abilities_and_channels(operator: dict[str, str]) -> None:
    done = run_cli("models", "list", env=operator)
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 5}
    rows.pop("", None)  # a cell's folded continuation
    assert len(rows) == 2 and "tiny/klein" in rows, done.stdout
    klein = rows["tiny/klein"]
    assert "flux2-klein" in klein and "edit (10 references), generate" in klein and "│ klein " in klein
    pix = next(line for name, line in rows.items() if name.endswith("pix2pix"))
    assert "instruct-pix2pix" in pix and "edit (1 reference)" in pix and "generate" not in pix and "MB" in pix


def test_check_loads_each_local_channel_and_runs_a_step(operator: dict[str, str]) -> None:
    done = run_cli("models", "check", env=operator)
    assert done.returncode == 0, done.stderr
    assert "klein: ok: flux2-klein on cpu" in done.stdout and "pix: ok: instruct-pix2pix on cpu" in done.stdout


def test_check_fails_naming_a_channel_whose_model_is_missing(operator: dict[str, str], tmp_path: Path) -> None:
    config = Path(operator["IMAGEGATE_CONFIG"])
    config.write_text(config.read_text() + '\n[[channels]]\nname = "gone"\nengine = "diffusers"\nmodel = "tiny/gone"\n')
    done = run_cli("models", "check", env=operator)
    assert done.returncode == 1
    assert "gone: failed" in done.stderr and "imagegate models pull tiny/gone" in done.stderr.replace("\n", " ")


def test_pull_fails_at_once_offline_and_says_how_to_copy_a_model_in(operator: dict[str, str]) -> None:
    offline = run_cli("models", "pull", "black-forest-labs/FLUX.2-klein-4B", env=operator)
    assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stderr
    assert "copy the model's directory" in offline.stderr.replace("\n", " ")
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = {**operator, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": closed}
    started = time.monotonic()
    failed = run_cli("models", "pull", "black-forest-labs/FLUX.2-klein-4B", env=unreachable)
    assert failed.returncode == 2 and "cannot be reached" in failed.stderr and "Traceback" not in failed.stderr
    assert time.monotonic() - started < 20, "no retries against a Hub that cannot be reached"
