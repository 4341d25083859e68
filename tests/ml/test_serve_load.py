"""The load test (benchmarks/serve_load.py) in small: concurrent streaming clients, disconnects mid-stream and a
modifier retired mid-run end with no unexpected error, no job left queued and the server answering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_load_run_has_no_unexpected_errors_and_leaks_no_jobs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--clients", "6",
                          "--seconds", "12", "--probe"], capture_output=True, text=True, timeout=600)
    report = json.loads(out.stdout[:out.stdout.rindex("}") + 1])
    assert out.returncode == 0, (report, out.stderr[-2000:])
    assert report["unexpected"] == {} and report["pending_jobs_after"] == 0 and report["alive_after"] == 200
    assert report["outcomes"]["ok"] > 0 and report["outcomes"].get("dropped", 0) > 0
    assert report["retire_exit"] == 0 and report["modifiers_after"] == ["mod1"]
    probe = report["memprobe"]  # the server's memory, broken down every 10 s from its start
    assert len(probe) >= 2 and probe[-1]["t"] > 0 and probe[0]["t"] < 0  # before and during the run
    last = probe[-1]
    assert last["rss_kib"] > 100_000 and last["malloc_used_kib"] > 10_000 and last["py_blocks"] > 100_000
    assert last["sqlite_kib"] > 0 and last["threads"] >= 2
