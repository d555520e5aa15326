"""Starting `imagegate serve` as a child process for the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
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


class PeakRss:
    """The peak resident memory of process `pid` while the `with` block runs (sampled every 5 ms)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join()
