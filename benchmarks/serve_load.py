"""Load test of `llora serve` on loopback: concurrent streaming clients, disconnects mid-stream, a modifier retired
while requests for it are in flight.

Usage::

    .venv/bin/python benchmarks/serve_load.py [--clients 16] [--seconds 60] [--max-batch 8]

A fresh home gets a tiny Llama base (tests/tiny.py, hidden 64, 4 layers: this measures the server's machinery, not
a model's speed) and two LoRA modifiers (PEFT, random weights), deployed; the server runs in its own process
(`llora serve --engine transformers`). Each client loops until the deadline: 60% streaming chat, 30% whole chat,
10% a stream read for one chunk and then dropped (a disconnect), each on the base or one of the two modifiers. At
a third of the run `llora retire mod2` runs; a request for `tiny:mod2` may then get 404 (expected, counted
apart). Reported: requests by outcome, latency p50/p95 of completed requests, RSS of the server process after
warm-up, at every tenth of the run and at the end (VmRSS), `pending_jobs` from /health once the clients stopped (jobs leaked on the model
thread: must be 0), and whether the server still answers. Exit 1 if any unexpected error, a leaked job or a dead
server. Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def server_pid(port: str) -> int:
    """The pid of the `llora serve --port PORT` process (from /proc/*/cmdline)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and b"--port" in argv and port.encode() in argv:
            return int(proc.name)
    raise SystemExit(f"no server process on port {port}")


def llora(home: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", *args, "--json"],
                         env={**os.environ, "LLORA_HOME": str(home)}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llora {' '.join(args)} failed: {out.stderr}")
    return json.loads(out.stdout)


def setup(home: Path) -> None:
    import tiny

    base = tiny.build_tiny_llama(home.parent / "base", hidden=64, layers=4)
    llora(home, "bases", "add", str(base), "--name", "tiny")
    llora(home, "deploy", "tiny")
    for i, name in enumerate(("mod1", "mod2")):
        adapter = tiny.build_tiny_adapter(base, home.parent / name, seed=i + 1)
        llora(home, "modifiers", "import", str(adapter), "--base", "tiny", "--domain", f"d{i}", "--name", name)
        llora(home, "deploy", name)


async def client(url: str, deadline: float, rng: random.Random, state: dict, results: list) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        while time.monotonic() < deadline:
            model = rng.choice(["tiny", "tiny:mod1", "tiny:mod2"])
            kind = rng.choices(["stream", "whole", "drop"], [6, 3, 1])[0]
            body = {"model": model, "messages": [{"role": "user", "content": f"say {rng.randint(0, 999)}"}],
                    "max_tokens": rng.randint(4, 24), "stream": kind != "whole"}
            start = time.perf_counter()
            outcome = "ok"
            try:
                if kind == "whole":
                    r = await http.post("/v1/chat/completions", json=body)
                    status = r.status_code
                    if status == 200:
                        assert r.json()["choices"][0]["message"]["content"] is not None
                else:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                        status = r.status_code
                        if status == 200:
                            events = []
                            async for line in r.aiter_lines():
                                if kind == "drop":
                                    outcome = "dropped"
                                    break  # leaving the block closes the connection mid-stream
                                events += [line] if line else []
                            if kind != "drop":
                                assert events[-1:] == ["data: [DONE]"], f"stream ended without [DONE]: {events[-2:]}"
                        else:
                            await r.aread()
            except Exception as e:  # a transport error is an unexpected outcome, recorded with its text
                results.append({"outcome": "error", "detail": f"{type(e).__name__}: {e}", "model": model})
                continue
            if status != 200:
                expected = status == 404 and model == "tiny:mod2" and state["retiring"]
                outcome = "expected_404" if expected else f"http_{status}"
            results.append({"outcome": outcome, "seconds": time.perf_counter() - start, "model": model,
                            "kind": kind})


async def run(url: str, clients: int, seconds: float, home: Path, pid: int) -> tuple[list, dict]:
    state: dict = {"retiring": False, "rss": []}
    results: list = []
    deadline = time.monotonic() + seconds

    async def sample_rss():  # the server's VmRSS at every tenth of the run, to see growth level off or not
        start = time.monotonic()
        for i in range(1, 11):
            await asyncio.sleep(max(0.0, start + seconds * i / 10 - time.monotonic()))
            state["rss"].append([round(time.monotonic() - start, 1), round(rss_kib(pid) / 1024, 1), len(results)])

    async def retire_later():
        await asyncio.sleep(seconds / 3)
        state["retiring"] = True  # from here a 404 for tiny:mod2 is expected (the retire may commit any moment)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "retire", "mod2",
            env={**os.environ, "LLORA_HOME": str(home)}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        state["retire_exit"] = proc.returncode
        state["retire_stderr"] = err.decode()[-500:]

    rngs = [random.Random(i) for i in range(clients)]
    await asyncio.gather(retire_later(), sample_rss(),
                         *(client(url, deadline, rngs[i], state, results) for i in range(clients)))
    return results, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--probe", action="store_true",
                    help="break the server's memory down every 10 s (benchmarks/memprobe/sitecustomize.py)")
    args = ap.parse_args()
    import httpx
    from live_server import live_server

    root = Path(tempfile.mkdtemp(prefix="llora-load-"))
    home = root / "home"
    setup(home)
    probe = root / "memprobe.jsonl"
    if args.probe:  # the server process (only) loads the probe; it reads, never frees
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "benchmarks" / "memprobe"),
                                                                  os.environ.get("PYTHONPATH")]))
        os.environ["LLORA_MEMPROBE"] = str(probe)
    with live_server(home, "--engine", "transformers", "--max-tokens", "64", "--max-batch", str(args.max_batch)) as url:
        health = httpx.get(f"{url}/health").json()
        pid = server_pid(url.rsplit(":", 1)[1])
        warm = [httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": m, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 8}).status_code
            for m in ("tiny", "tiny:mod1", "tiny:mod2")]
        rss_before = rss_kib(pid)
        t0, run_start_unix = time.perf_counter(), time.time()
        results, state = asyncio.run(run(url, args.clients, args.seconds, home, pid))
        wall = time.perf_counter() - t0
        time.sleep(2.0)
        after = httpx.get(f"{url}/health").json()
        alive = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": "tiny:mod1", "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 4})
        rss_after = rss_kib(pid)
    outcomes: dict = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    done = sorted(r["seconds"] for r in results if r["outcome"] == "ok")
    unexpected = {k: v for k, v in outcomes.items() if k not in ("ok", "dropped", "expected_404")}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "clients": args.clients, "seconds": round(wall, 1), "max_batch": args.max_batch, "warm_up": warm,
        "engine": health.get("engine"), "requests": len(results), "outcomes": outcomes,
        "unexpected": unexpected, "errors": [r["detail"] for r in results if r["outcome"] == "error"][:5],
        "p50_s": round(statistics.median(done), 3) if done else None,
        "p95_s": round(done[int(0.95 * (len(done) - 1))], 3) if done else None,
        "rss_mib_before": round(rss_before / 1024, 1), "rss_mib_after": round(rss_after / 1024, 1),
        "rss_mib_during": state["rss"],  # [seconds into the run, MiB, requests finished so far], every tenth
        "pending_jobs_after": after.get("pending_jobs"), "modifiers_after": after.get("modifiers"),
        "retire_exit": state.get("retire_exit"), "alive_after": alive.status_code,
    }
    if args.probe:
        report["memprobe"] = [{**rec, "t": round(rec["unix"] - run_start_unix, 1)}  # seconds into the run
                              for rec in map(json.loads, probe.read_text().splitlines())]
    print(json.dumps(report, indent=2))
    ok = (not unexpected and report["pending_jobs_after"] == 0 and alive.status_code == 200
          and state.get("retire_exit") == 0 and "mod2" not in (after.get("modifiers") or []))
    print(f"| {args.clients} | {report['seconds']} s | {len(results)} | {outcomes.get('ok', 0)} | "
          f"{outcomes.get('dropped', 0)} | {outcomes.get('expected_404', 0)} | {sum(unexpected.values())} | "
          f"{report['p50_s']} / {report['p95_s']} s | {report['rss_mib_before']} -> {report['rss_mib_after']} MiB | "
          f"{report['pending_jobs_after']} |")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
