"""Starting `imagegate serve` as a child process for the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


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
