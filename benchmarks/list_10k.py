"""Start-up and list speed: `llora adapters list --json` over a catalog of 10,000 artifacts.

Usage: python benchmarks/list_10k.py [--n 10000] [--runs 15]
Builds a throw-away LLORA_HOME (bulk-inserted rows with lineage edges and
events, the same tables the CLI writes), then times fresh `llora` processes.
Prints medians; goal (issue 2): under 0.6 s for the 10k list on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path


def build_catalog(home: Path, n: int) -> None:
    from sqlalchemy import insert

    from llora_store import open_store
    from llora_store.models import Artifact, Event, Lineage

    store = open_store(home)
    t0 = datetime(2026, 1, 1)
    bases = [f"b{i:011x}" for i in range(10)]
    arts, edges, events = [], [], []
    for i, bid in enumerate(bases):
        arts.append(dict(id=bid, kind="base", name=f"base-{i}", state="ready", created_at=t0, updated_at=t0,
                         content_hash=f"{i:064x}", metadata={}))
    for i in range(n - len(bases)):
        aid = f"a{i:011x}"
        at = t0 + timedelta(seconds=i)
        base = bases[i % len(bases)]
        arts.append(dict(id=aid, kind="adapter", name=f"adapter-{i}", state="trained", created_at=at, updated_at=at,
                         content_hash=f"{i + 100:064x}", base_hash=f"{i % len(bases):064x}",
                         metadata={"peft": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}}))
        edges.append(dict(child_id=aid, parent_id=base, role="trained_on"))
        events.append(dict(artifact_id=aid, at=at, event="create", from_state=None, to_state="trained",
                           command="bench", reason=""))
    with store.writing() as s:
        s.execute(insert(Artifact.__table__), arts)
        s.execute(insert(Lineage.__table__), edges)
        s.execute(insert(Event.__table__), events)


def time_cmd(cmd: list[str], env: dict, runs: int) -> tuple[float, list[float], bytes]:
    times, out = [], b""
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(cmd, env=env, check=True, capture_output=True).stdout
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    llora = shutil.which("llora") or str(Path(sys.executable).parent / "llora")
    home = Path(tempfile.mkdtemp(prefix="llora-bench-"))
    try:
        build_catalog(home, args.n)
        env = {**os.environ, "LLORA_HOME": str(home)}
        py, _, _ = time_cmd([sys.executable, "-c", "pass"], env, args.runs)
        imp, _, _ = time_cmd([sys.executable, "-c", "import typer, sqlmodel"], env, args.runs)
        helpt, _, _ = time_cmd([llora, "--help"], env, args.runs)
        lst, times, out = time_cmd([llora, "adapters", "list", "--json"], env, args.runs)
        rows = len(json.loads(out))
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "artifacts": args.n, "rows_listed": rows, "runs": args.runs,
            "median_s": {"python -c pass": round(py, 3), "import typer, sqlmodel": round(imp, 3),
                         "llora --help": round(helpt, 3), "llora adapters list --json": round(lst, 3)},
            "list_min_max_s": [round(min(times), 3), round(max(times), 3)],
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
