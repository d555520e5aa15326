"""Starting `imagegate serve` and `imagegate worker` as child processes for the benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil


def serve(data_dir: Path, port: int, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`imagegate serve` on `port`; returns the process and its first-start key."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=os.environ if env is None else env,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    key = proc.stdout.readline().decode().strip()
    wait_ready(port)
    return proc, key


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(env: dict[str, str], *args: str) -> str:
    """`imagegate ARGS` as a process with `env`; its stdout (CalledProcessError when it fails)."""
    done = subprocess.run(
        [sys.executable, "-m", "imagegate", *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def wait_ready(port: int) -> None:
    """Return once the process on `port` answers `/readyz` with 200 (RuntimeError after 30 s)."""
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the node on port {port} did not become ready")


@contextmanager
def started(commands: list[list[str]], env: dict[str, str]) -> Iterator[None]:
    """The commands as processes with `env` (output discarded), stopped on the way out."""
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for command in commands
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def base_env(data_dir: Path) -> dict[str, str]:
    """This environment without its IMAGEGATE_* variables, on `data_dir`, with no per-key limits."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMAGEGATE_")}
    env.update(
        IMAGEGATE_DATA_DIR=str(data_dir),
        IMAGEGATE_ACCOUNTS__REQUESTS_PER_MINUTE="0",
        IMAGEGATE_ACCOUNTS__MAX_ACTIVE_TASKS="0",
    )
    return env


def new_key(env: dict[str, str]) -> str:
    """A new key with 10^6 credits, made by the CLI."""
    return str(json.loads(cli(env, "keys", "create", "--credits", "1000000", "--json"))["key"])


class Peak:
    """The peak of `read()` while the `with` block runs, sampled every `every_s` seconds."""

    def __init__(self, read: Callable[[], int], every_s: float) -> None:
        self.read = read
        self.every_s = every_s
        self.peak = read()
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            self.peak = max(self.peak, self.read())

    def __enter__(self) -> Peak:
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join()


class PeakRss(Peak):
    """The peak resident memory of process `pid` while the `with` block runs (sampled every 5 ms)."""

    def __init__(self, pid: int) -> None:
        process = psutil.Process(pid)
        super().__init__(lambda: int(process.memory_info().rss), 0.005)


class PeakDescriptors(Peak):
    """The peak number of open descriptors of process `pid` while the `with` block runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(psutil.Process(pid).num_fds, 0.05)
