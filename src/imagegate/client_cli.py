"""The command-line client: `imagegate edit | generate | tasks | usage` against a running server, through
its public HTTP API only (the OpenAI dialect, the task-jobs dialect for `--async`, `/v1/usage`).

A streamed request shows a progress bar with the partial images and images received and the time; an
async task shows a spinner with its state while it is polled. Results are written next to the first
input, named after it (`photo.edited.png`, numbered for n > 1), or to `-o OUT`. Any failure is one
line on stderr naming the server's error code, and a non-zero exit status.
"""

from __future__ import annotations

import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pybase64
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from imagegate import cli_output

POLL_S = 0.5
PARTIALS = 2
TIMEOUT_S = 600.0


@dataclass
class Server:
    """Where the server is and the key to use."""

    url: str
    key: str

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}", "User-Agent": "imagegate-cli"}
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=TIMEOUT_S)


class Failed(Exception):
    """The request failed; the message is the one line to show."""


def server_error(response: httpx.Response) -> Failed:
    """The server's error as one line: status, code and message, in whichever dialect's shape."""
    try:
        body = response.json()
    except ValueError:
        return Failed(f"{response.status_code}: {response.text[:200]}")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return Failed(f"{response.status_code} {error.get('code')}: {error.get('message')}")
    if isinstance(body, dict) and "msg" in body:
        return Failed(f"{response.status_code} {body.get('code')}: {body.get('msg')}")
    return Failed(f"{response.status_code}: {str(body)[:200]}")


def checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise server_error(response)
    body: dict[str, Any] = response.json()
    if body.get("code") not in (None, 0, 200):  # the task-jobs dialect's envelope
        raise server_error(response)
    return body


def output_paths(inputs: list[Path], out: Path | None, count: int, fmt: str) -> list[Path]:
    """Where `count` results go: `out` (numbered when several), else beside the first input
    (`photo.edited.png`), else `generated.png`, numbered for more than one."""
    suffix = f".{'jpg' if fmt == 'jpeg' else fmt}"
    if out is not None:
        stem, ext, folder = out.stem, out.suffix or suffix, out.parent
    elif inputs:
        stem, ext, folder = f"{inputs[0].stem}.edited", suffix, inputs[0].parent
    else:
        stem, ext, folder = "generated", suffix, Path(".")
    if count == 1:
        return [folder / f"{stem}{ext}"]
    return [folder / f"{stem}-{index}{ext}" for index in range(1, count + 1)]


def form_fields(prompt: str, model: str, size: str | None, quality: str | None, n: int, fmt: str) -> dict[str, str]:
    fields = {"prompt": prompt, "model": model, "n": str(n), "output_format": fmt}
    if size:
        fields["size"] = size
    if quality:
        fields["quality"] = quality
    return fields


def _events(response: httpx.Response) -> Any:
    """The JSON payloads of a server-sent event stream."""
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield orjson.loads(line[5:].strip())


def run_streamed(server: Server, path: str, fields: dict[str, str], files: list[Any] | None) -> list[bytes]:
    """One streamed request (`stream=true`, two partial images), with a progress bar counting the
    partial images and the images received; the images."""
    data = {**fields, "stream": "true", "partial_images": str(PARTIALS)}
    count = int(fields["n"])
    images: list[bytes] = []
    partials = 0
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with server.client() as client, Progress(*columns, console=cli_output.err, transient=True) as progress:
        bar = progress.add_task("working", total=PARTIALS + count, note="waiting for the server")
        with (
            client.stream("POST", path, data=data, files=files)
            if files
            else _json_stream(client, path, data) as response
        ):
            if response.status_code >= 400:
                response.read()
                raise server_error(response)
            for event in _events(response):
                kind = str(event.get("type", ""))
                if kind == "error":
                    error = event.get("error") or event
                    raise Failed(f"{error.get('code')}: {error.get('message')}")
                if kind.endswith("partial_image"):
                    partials += 1
                elif kind.endswith("completed"):
                    images.append(pybase64.b64decode(event["b64_json"]))
                note = f"partial images {partials}/{PARTIALS} · images {len(images)}/{count}"
                progress.update(bar, completed=partials + len(images), note=note)
    if not images:
        raise Failed("the server's stream ended without an image")
    return images


def _json_stream(client: httpx.Client, path: str, data: dict[str, str]) -> Any:
    body = {**data, "n": int(data["n"]), "partial_images": PARTIALS, "stream": True}
    return client.stream("POST", path, json=body)


def data_url(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{kind};base64,{pybase64.b64encode(path.read_bytes()).decode('ascii')}"


def run_async_task(
    server: Server, model: str, prompt: str, inputs: list[Path], size: str | None, quality: str | None, fmt: str
) -> list[bytes]:
    """Submit a task (the task-jobs dialect), poll it with a spinner showing its state; its images."""
    body: dict[str, Any] = {"prompt": prompt, "output_format": fmt}
    if inputs:
        body["image_urls"] = [data_url(path) for path in inputs]
    if size and size != "auto":
        if ":" not in size:
            raise Failed(f"--size {size}: an async task takes a ratio (16:9, 1:1, ...), not WxH")
        body["aspect_ratio"] = size
    if quality:
        body["quality"] = quality
    with server.client() as client:
        task_id = checked(client.post("/api/v1/jobs/createTask", json={"model": model, "input": body}))["data"][
            "taskId"
        ]
        started = time.monotonic()
        with cli_output.err.status(f"task {task_id}: waiting") as status:
            while True:
                data = checked(client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}))["data"]
                state = data["state"]
                status.update(f"task {task_id}: {state} · {time.monotonic() - started:.1f} s")
                if state == "fail":
                    raise Failed(f"task {task_id} failed: {data.get('failCode')}: {data.get('failMsg')}")
                if state == "success":
                    urls = orjson.loads(data["resultJson"])["resultUrls"]
                    return [fetch(client, url) for url in urls]
                time.sleep(POLL_S)


def fetch(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    if response.status_code >= 400:
        raise server_error(response)
    return response.content


def write(images: list[bytes], paths: list[Path]) -> None:
    for data, path in zip(images, paths, strict=False):
        path.write_bytes(data)
        print(path)


def show_tasks(server: Server, task_id: str | None) -> None:
    with server.client() as client:
        if task_id:
            task = checked(client.get(f"/v1/images/tasks/{task_id}"))
            print(orjson.dumps(task, option=orjson.OPT_INDENT_2).decode())
            return
        tasks = checked(client.get("/v1/usage"))["tasks"]
    table = Table("id", "state", "model", "kind", "images", "cost", "created")
    for task in tasks:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task["created_at"]))
        table.add_row(
            task["id"], task["state"], task["model"], task["kind"], str(task["images"]), task["cost"], created
        )
    Console(width=160).print(table)


def show_usage(server: Server) -> None:
    with server.client() as client:
        usage = checked(client.get("/v1/usage"))
    print(f"balance {usage['balance']} · held {usage['held']} · available {usage['available']} credits")
    print(f"recent tasks: {len(usage['tasks'])}; open holds: {len(usage['holds'])}")
