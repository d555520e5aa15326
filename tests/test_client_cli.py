"""The command-line client (`imagegate edit | generate | tasks | usage`) against a live server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import LiveServer, decode, invoke_cli, make_image


@pytest.fixture
def env(live_server: LiveServer) -> dict[str, str]:
    return {**os.environ, "IMAGEGATE_URL": live_server.base, "IMAGEGATE_API_KEY": live_server.key}


def test_edit_writes_files_named_after_the_input_numbered_for_n(tmp_path: Path, env: dict[str, str]) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(320, 240))
    other = tmp_path / "other.jpg"
    other.write_bytes(make_image(200, 200, "JPEG"))
    done = invoke_cli("edit", str(photo), str(other), "-p", "sepia", "--n", "2", "--size", "1536x1024", env=env)
    assert done.returncode == 0, done.stderr
    written = [tmp_path / "photo.edited-1.png", tmp_path / "photo.edited-2.png"]
    assert done.stdout.split() == [str(path) for path in written]
    assert all(decode(path.read_bytes()).size == (1536, 1024) for path in written)


def test_generate_and_an_async_edit(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    made = invoke_cli("generate", "-p", "a red circle on white", "--format", "jpeg", env=env)
    assert made.returncode == 0, made.stderr
    assert (
        made.stdout.split() == ["generated.jpg"] and decode((tmp_path / "generated.jpg").read_bytes()).format == "JPEG"
    )
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(320, 240))
    later = invoke_cli("edit", str(photo), "-p", "grayscale", "--async", "--size", "16:9", "-o", "out.png", env=env)
    assert later.returncode == 0, later.stderr
    width, height = decode((tmp_path / "out.png").read_bytes()).size
    assert abs(width / height - 16 / 9) < 0.02


def test_tasks_and_usage_show_the_keys_activity(env: dict[str, str], tmp_path: Path) -> None:
    made = invoke_cli("generate", "-p", "a blue square", "-o", str(tmp_path / "g.png"), env=env)
    assert made.returncode == 0, made.stderr
    usage = invoke_cli("usage", env=env)
    assert usage.returncode == 0 and "available" in usage.stdout
    listed = invoke_cli("tasks", env=env)
    assert listed.returncode == 0 and "success" in listed.stdout
    task_id = next(word for word in listed.stdout.split() if word.startswith("task_"))
    one = invoke_cli("tasks", task_id, env=env)
    assert one.returncode == 0 and task_id in one.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--key", "ig-not-a-key"], "401 invalid_api_key"),
        (["--size", "7x7"], "400 invalid_value: Invalid size '7x7'"),
        (["--server", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9"),
    ],
)
def test_a_failure_is_one_line_with_the_servers_code_and_a_nonzero_status(
    tmp_path: Path, env: dict[str, str], args: list[str], expected: str
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(64, 64))
    done = invoke_cli("edit", str(photo), "-p", "x", *args, env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.glob("photo.edited*"))
