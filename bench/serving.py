"""Starting `imagegate serve` as a child process for the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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
    for _ in range(100):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc, key
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


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
