"""Runtime figures on SmolLM2-135M-Instruct: modifier switch vs base reload, batch throughput (one modifier vs
three mixed), `llora run` vs a plain transformers script, and a server load test from a second process.

Usage: python benchmarks/runtime_smollm2.py [--home DIR] [--rounds 3] [--requests 200] [--concurrency 8]
                                           [--skip-serial] [--only switch,batch,run,serve]
Set-up (skipped when --home already holds it): register SmolLM2, train three modifiers on it (automation,
code, reasoning; 20 steps each, fp32) and deploy base + modifiers. Every figure is a median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DOMAINS = ("automation", "code", "reasoning")
PROMPTS = [  # long answers, so that most rows run to max_tokens
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle works to a child.",
    "Describe the water cycle in detail.",
    "Write a poem about autumn leaves.",
    "List ten tips for learning a new language and explain each.",
    "Explain why the sky is blue.",
    "Describe a day in the life of a lighthouse keeper.",
    "Write a letter to a friend about a trip to the mountains.",
]

PLAIN = textwrap.dedent('''
    import json, sys, time, threading, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer
    t0 = time.perf_counter()
    base, adapter, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter != "-":
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    inputs = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    class First(BaseStreamer):
        def __init__(self): self.calls = 0; self.first = None
        def put(self, v):
            self.calls += 1
            if self.calls == 2: self.first = time.perf_counter()
        def end(self): pass
    s = First()
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, streamer=s,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
        end = time.perf_counter()
    k = out.shape[1] - inputs["input_ids"].shape[1]
    print(json.dumps({"ttft_ms": (s.first - start) * 1000, "latency_ms": (end - start) * 1000, "tokens_out": int(k),
                      "process_s": time.perf_counter() - t0}))
''')


def median(xs):
    return round(statistics.median(xs), 3)


def train_and_deploy(store, base_id: str, domains, steps: int, n_test: int) -> None:
    """One modifier per domain on ``base_id`` (96 generated rows, ``steps`` steps, fp32), deployed through
    `llora deploy`'s path (a GGUF base: converted to llama.cpp LoRA)."""
    from llora_cli.data import make_dataset
    from llora_cli.deploy import deploy
    from llora_cli.train import train
    from llora_cli.trainconfig import load_config

    for domain in domains:
        ds = make_dataset(store, domain, 96, seed=0, n_test=n_test, name=f"bench-{domain}")
        res = train(store, base_ref=base_id, data_ref=ds.id, kind="modifier", domain=domain, name=f"mod-{domain}",
                    config=load_config(None, [f"max_steps={steps}", "learning_rate=1e-3", "batch_size=4"]))
        deploy(store, res.artifact.id)
        print(f"trained mod-{domain}: {res.outcome['steps']} steps, {res.outcome['seconds']:.0f} s", flush=True)


def setup(home: Path, steps: int) -> None:
    os.environ["LLORA_HOME"] = str(home)
    from llora_store import open_store

    store = open_store()
    if any(a.kind == "modifier" and a.state == "deployed" for a in store.list()):
        return
    from llora_cli.bases import add_base

    base = add_base(store, "smollm2", name="smollm2")
    store.deploy(base.id)
    train_and_deploy(store, base.id, DOMAINS, steps, 8)


def timed_rounds(cmds: dict[str, list[str]], env: dict, rounds: int) -> dict:
    """Each command in its own process, the order alternating between rounds; each prints one JSON record
    (``llora run --json`` or a plain script) with ttft_ms, latency_ms, tokens_out. Medians per command."""
    res: dict[str, list] = {k: [] for k in cmds}
    for r in range(rounds):
        for name in (list(cmds) if r % 2 == 0 else list(cmds)[::-1]):
            t = time.perf_counter()
            out = subprocess.run(cmds[name], env=env, capture_output=True, text=True, check=True).stdout
            wall = time.perf_counter() - t
            rec = json.loads(out[out.index("{"):])
            decode = (rec["tokens_out"] - 1) / ((rec["latency_ms"] - rec["ttft_ms"]) / 1000)
            res[name].append({"ttft_ms": rec["ttft_ms"], "decode_tokens_per_s": decode, "tokens_out": rec["tokens_out"],
                              "process_s": wall})
            print(name, res[name][-1], flush=True)
    return {k: {m: median([x[m] for x in v]) for m in ("ttft_ms", "decode_tokens_per_s", "process_s")}
            | {"tokens_out": [x["tokens_out"] for x in v]} for k, v in res.items()}


def ratio(ours: dict, plain: dict) -> dict:
    return {"ttft": round(ours["ttft_ms"] / plain["ttft_ms"], 3),
            "decode_tokens_per_s": round(ours["decode_tokens_per_s"] / plain["decode_tokens_per_s"], 3)}


def bench_switch(rt, rounds: int) -> dict:
    from peft import PeftModel
    from peft.utils.hotswap import hotswap_adapter

    from llora_cli.engine.batching import RowLora
    from llora_cli.loading import load_model

    ids = list(rt.adapters)
    setups, switches = [], []
    t = time.perf_counter()
    rows = RowLora(rt.model)
    hooks_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    rows.activate(ids[:1] * 8)
    first_ms = (time.perf_counter() - t) * 1000
    for i in range(1, 4):
        rows.activate(ids[i % 3:i % 3 + 1] * 8)
    for i in range(100):  # what a batch on another modifier costs before its first forward pass
        t = time.perf_counter()
        rows.activate([ids[(i + k) % len(ids)] for k in range(8)] if i % 2 else [ids[i % len(ids)]] * 8)
        setups.append((time.perf_counter() - t) * 1000)
    rows.remove()
    for i in range(100):  # PEFT's set_adapter, for reference
        t = time.perf_counter()
        rt.model.set_adapter(ids[i % len(ids)])
        switches.append((time.perf_counter() - t) * 1000)
    # request level: a 1-token request on the same modifier every time vs a different modifier every time
    same, alternating = [], []
    mods = rt.deployment.modifiers
    for i in range(30):
        same.append(rt.generate(PROMPTS[0], modifier=mods[0], max_tokens=1).latency_ms)
        alternating.append(rt.generate(PROMPTS[0], modifier=mods[i % len(mods)], max_tokens=1).latency_ms)
    # what a script without a resident adapter set does: load the base again with the other adapter
    base_path = rt.store.path_of(rt.deployment.base.id)
    reloads, hotswaps = [], []
    for r in range(rounds):
        t = time.perf_counter()
        _, fresh, _ = load_model(base_path)
        fresh = PeftModel.from_pretrained(fresh, str(rt.store.path_of(mods[r % len(mods)].id)))
        reloads.append((time.perf_counter() - t) * 1000)
    for r in range(rounds * 3):  # PEFT's hotswap: one resident adapter, weights replaced from disk
        t = time.perf_counter()
        hotswap_adapter(fresh, str(rt.store.path_of(mods[(r + 1) % len(mods)].id)), adapter_name="default",
                        torch_device="cpu")
        hotswaps.append((time.perf_counter() - t) * 1000)
    del fresh

    def p95(xs):
        return round(sorted(xs)[int(0.95 * len(xs)) - 1], 3)

    return {"row_lora_switch_ms": {"median": median(setups), "p95": p95(setups)},
            "row_lora_hooks_ms": round(hooks_ms, 3), "row_lora_first_use_of_an_adapter_set_ms": round(first_ms, 3),
            "peft_set_adapter_ms": {"median": median(switches), "p95": p95(switches)},
            "one_token_request_ms": {"same_modifier": median(same), "alternating_modifiers": median(alternating)},
            "request_switch_cost_ms": round(statistics.median(alternating) - statistics.median(same), 3),
            "reload_base_and_adapter_ms": median(reloads), "peft_hotswap_from_disk_ms": median(hotswaps)}


def run_batch(rt, picks, max_tokens: int) -> dict:
    with rt.batcher.cond:  # all eight wait together, so they form one batch
        start = time.perf_counter()
        jobs = [rt.submit(p, modifier=m, max_tokens=max_tokens) for p, m in zip(PROMPTS, picks)]
    for j in jobs:
        rt.batcher.wait(j)
    wall = time.perf_counter() - start
    assert all(j.error is None for j in jobs) and {j.batch_size for j in jobs} == {len(jobs)}
    n = sum(len(j.tokens) for j in jobs)
    return {"tokens": n, "seconds": wall, "tokens_per_s": n / wall}


def bench_batch(rt, rounds: int, max_tokens: int) -> dict:
    mods = rt.deployment.modifiers
    picks = {"single": [mods[0]] * 8, "mixed": [mods[i % 3] for i in range(8)],
             "mixed_with_base": [mods[i % 3] if i % 4 else None for i in range(8)], "base": [None] * 8}
    out: dict = {"max_tokens": max_tokens}
    for path in ("rows", "peft"):
        rt.runner.lora_path = path
        res: dict[str, list] = {k: [] for k in picks}
        for r in range(rounds):
            for which in (list(picks) if r % 2 == 0 else list(picks)[::-1]):
                res[which].append(run_batch(rt, picks[which], max_tokens))
        out[path] = {k: {"tokens_per_s": median([x["tokens_per_s"] for x in v]), "tokens": [x["tokens"] for x in v]}
                     for k, v in res.items()}
        out[path]["mixed_over_single"] = round(out[path]["mixed"]["tokens_per_s"]
                                               / out[path]["single"]["tokens_per_s"], 3)
        print(path, json.dumps(out[path]), flush=True)
    rt.runner.lora_path = "rows"
    start, n = time.perf_counter(), 0  # context: the same eight one at a time on one modifier
    for p in PROMPTS:
        n += rt.generate(p, modifier=mods[0], max_tokens=max_tokens).tokens_out
    out["sequential_single_tokens_per_s"] = round(n / (time.perf_counter() - start), 3)
    return out


def bench_run(home: Path, rounds: int, max_tokens: int) -> dict:
    from llora_store import open_store

    store = open_store()
    base = next(a for a in store.list(kind="base") if a.name == "smollm2")
    mod = next(a for a in store.list(kind="modifier") if a.name == "mod-automation")
    env = {**os.environ, "LLORA_HOME": str(home)}
    llora = str(Path(sys.executable).with_name("llora"))
    prompt = PROMPTS[0]
    cmds = {}
    for variant, m in (("base", None), ("modifier", mod)):
        cmds[f"llora-{variant}"] = [llora, "run", "--json", "--modifier", m.name if m else "none",
                                    "--max-tokens", str(max_tokens), prompt]
        cmds[f"plain-{variant}"] = [sys.executable, "-c", PLAIN, str(store.path_of(base.id)),
                                    str(store.path_of(m.id)) if m else "-", prompt, str(max_tokens)]
    out = timed_rounds(cmds, env, rounds)
    for variant in ("base", "modifier"):
        out[f"ratio-{variant}"] = ratio(out[f"llora-{variant}"], out[f"plain-{variant}"])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_test(home: Path, requests: int, concurrency: int, max_tokens: int, max_batch: int) -> dict:
    import httpx

    port = free_port()
    env = {**os.environ, "LLORA_HOME": str(home)}
    llora = str(Path(sys.executable).with_name("llora"))
    proc = subprocess.Popen([llora, "serve", "--port", str(port), "--max-batch", str(max_batch)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        models = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency))
        latencies, errors, tokens = [], [], [0]
        lock = threading.Lock()

        def one(i: int) -> None:
            body = {"model": models[i % len(models)], "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" ({i})"}]}
            t = time.perf_counter()
            try:
                r = client.post(f"{url}/v1/chat/completions", json=body)
                ok = r.status_code == 200
                n = r.json()["usage"]["completion_tokens"] if ok else 0
            except httpx.HTTPError as e:
                ok, n, r = False, 0, e
            with lock:
                latencies.append((time.perf_counter() - t) * 1000)
                tokens[0] += n
                if not ok:
                    errors.append(str(r))

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    os.environ["LLORA_HOME"] = str(home)
    from llora_store import open_store

    logs = open_store().request_logs(limit=requests)
    batches = [r["params"].get("batch") for r in logs]
    lat = sorted(latencies)
    return {"max_batch": max_batch, "requests": requests, "concurrency": concurrency, "max_tokens": max_tokens,
            "models": models, "errors": len(errors), "error_samples": errors[:3],
            "p50_ms": round(lat[len(lat) // 2], 1), "p95_ms": round(lat[int(0.95 * len(lat)) - 1], 1),
            "max_ms": round(lat[-1], 1), "wall_s": round(wall, 2), "requests_per_s": round(requests / wall, 2),
            "completion_tokens_per_s": round(tokens[0] / wall, 1),
            "mean_batch": round(statistics.mean(b for b in batches if b), 2), "logged": len(logs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--serve-max-tokens", type=int, default=32)
    ap.add_argument("--skip-serial", action="store_true", help="skip the --max-batch 1 load test")
    ap.add_argument("--only", default="switch,batch,run,serve")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="llora-rt-"))
    home.mkdir(parents=True, exist_ok=True)
    setup(home, args.train_steps)
    only = set(args.only.split(","))
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                    "args": {k: str(v) for k, v in vars(args).items()}}
    if only & {"switch", "batch"}:
        from llora_cli.engine import resolve_deployment
        from llora_cli.engine.transformers import TransformersEngine
        from llora_store import open_store

        store = open_store()
        rt = TransformersEngine(store, resolve_deployment(store))
        rt.generate(PROMPTS[0], max_tokens=4)  # warm-up
        if "switch" in only:
            result["switch"] = bench_switch(rt, args.rounds)
            print(json.dumps(result["switch"]), flush=True)
        if "batch" in only:
            result["batch"] = bench_batch(rt, args.rounds, args.max_tokens)
            print(json.dumps(result["batch"]), flush=True)
    if "run" in only:
        result["run"] = bench_run(home, args.rounds, 64)
    if "serve" in only:
        result["serve"] = [load_test(home, args.requests, args.concurrency, args.serve_max_tokens, 8)]
        print(json.dumps(result["serve"][-1]), flush=True)
        if not args.skip_serial:
            result["serve"].append(load_test(home, args.requests, args.concurrency, args.serve_max_tokens, 1))
            print(json.dumps(result["serve"][-1]), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
