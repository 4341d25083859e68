"""`llora serve` in a subprocess on a free loopback port, for tests that talk to it with real HTTP clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(llora_home: Path, *args: str, start_timeout: float = 300.0) -> Iterator[str]:
    """Start ``llora serve --port P *args`` with ``LLORA_HOME=llora_home``, wait until ``/health`` answers 200 and
    yield its base URL; on exit SIGTERM it (SIGKILL after 60 s, so a busy machine cannot fail the test here).
    AssertionError with the server's stderr when it exits or does not come up in ``start_timeout`` seconds."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "serve",
                             "--port", str(port), *args], env={**os.environ, "LLORA_HOME": str(llora_home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout
        while True:
            assert proc.poll() is None, f"server exited: {proc.stderr.read()[-2000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.time() < deadline, f"server did not come up in {start_timeout:.0f} s"
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
