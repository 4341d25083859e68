"""The llama.cpp engine on SmolLM2-135M-Instruct (GGUF Q8_0): `llora run` vs plain llama-cpp-python vs the
transformers engine, modifier switch cost and tokens/s with a modifier, parity with the transformers engine on
held-out prompts, and a server load test from a second process.

Usage: python benchmarks/llamacpp_smollm2.py [--home DIR] [--rounds 3] [--requests 200] [--concurrency 8]
                                            [--only run,switch,parity,serve]
Set-up (skipped when --home holds it): register SmolLM2, compress it to GGUF Q8_0, train two modifiers on the
compressed base (automation, code; 20 steps, fp32) and deploy them (converted to llama.cpp LoRA at deploy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from runtime_smollm2 import PROMPTS, load_test, median, ratio, timed_rounds, train_and_deploy  # noqa: E402

PLAIN = textwrap.dedent('''
    import json, sys, time
    t0 = time.perf_counter()
    from llama_cpp import Llama
    path, ids, n, eos = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    llm = Llama(model_path=path, n_ctx=4096, n_threads=2, n_batch=512, verbose=False)
    start = time.perf_counter(); first = None; k = 0
    for token in llm.generate(ids, temp=0.0, top_k=0, min_p=0.0, top_p=1.0, repeat_penalty=1.0):
        k += 1
        if first is None:
            first = time.perf_counter()
        if token == eos or k >= n:
            break
    end = time.perf_counter()
    print(json.dumps({"ttft_ms": (first - start) * 1000, "latency_ms": (end - start) * 1000, "tokens_out": k,
                      "process_s": time.perf_counter() - t0}))
''')


def setup(home: Path, steps: int) -> None:
    os.environ["LLORA_HOME"] = str(home)
    from llora_store import open_store

    store = open_store()
    if any(a.kind == "modifier" and a.state == "deployed" for a in store.list()):
        return
    from llora_cli.bases import add_base
    from llora_cli.compress import compress
    from llora_cli.deploy import deploy

    base = add_base(store, "smollm2", name="smollm2")
    c = compress(store, base.id, "gguf-q8_0", eval_n=0, name="smollm2-q8")
    deploy(store, c.compressed.id)
    train_and_deploy(store, c.compressed.id, ("automation", "code"), steps, 16)


def bench_run(home: Path, rounds: int, n: int) -> dict:
    from llora_store import open_store

    store = open_store()
    base = next(a for a in store.list(kind="compressed") if a.name == "smollm2-q8")
    env = {**os.environ, "LLORA_HOME": str(home)}
    llora = str(Path(sys.executable).with_name("llora"))
    prompt = PROMPTS[0]
    from llora_cli.loading import load_tokenizer

    tok = load_tokenizer(store.path_of(base.id))  # the same prompt tokens as llora's engines (chat template)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    cmds = {"plain-llama-cpp": [sys.executable, "-c", PLAIN, str(store.path_of(base.id) / "model.gguf"),
                                json.dumps(list(ids)), str(n), str(tok.eos_token_id)]}
    for engine in ("llamacpp", "transformers"):
        cmds[f"llora-{engine}"] = [llora, "run", "--json", "--engine", engine, "--modifier", "none",
                                   "--max-tokens", str(n), prompt]
    cmds["llora-llamacpp-modifier"] = [llora, "run", "--json", "--engine", "llamacpp", "--modifier", "mod-automation",
                                       "--max-tokens", str(n), prompt]
    out = timed_rounds(cmds, env, rounds)
    for k in ("llora-llamacpp", "llora-transformers"):
        out[f"{k}/plain"] = ratio(out[k], out["plain-llama-cpp"])
    return out


def bench_switch(rt, n: int) -> dict:
    ids = list(rt.adapters)
    times = []
    for i in range(200):
        t = time.perf_counter()
        rt._select(ids[i % 2] if i % 3 else None)
        times.append((time.perf_counter() - t) * 1000)
    speeds: dict[str, list] = {"base": [], **{rt.adapters[a].name: [] for a in ids}}
    for r in range(3):
        for label, mod in [("base", None), *[(rt.adapters[a].name, rt.adapters[a]) for a in ids]]:
            reply = rt.generate(PROMPTS[r % len(PROMPTS)], modifier=mod, max_tokens=n)
            speeds[label].append((reply.tokens_out - 1) / ((reply.latency_ms - reply.ttft_ms) / 1000))
    out = {"select_ms": {"median": median(times), "p95": round(sorted(times)[int(0.95 * len(times)) - 1], 3)},
           "decode_tokens_per_s": {k: median(v) for k, v in speeds.items()}}
    base = out["decode_tokens_per_s"]["base"]
    out["with_modifier_over_base"] = {k: round(v / base, 3) for k, v in out["decode_tokens_per_s"].items()
                                      if k != "base"}
    return out


def bench_parity(store, rt, n_prompts: int) -> dict:
    import numpy as np
    import torch

    from llora_cli.data import load_data
    from llora_cli.engine import resolve_deployment
    from llora_cli.engine.transformers import TransformersEngine

    tf = TransformersEngine(store, resolve_deployment(store))
    prompts = []
    for domain in ("automation", "code"):
        ds = next(a for a in store.list(kind="dataset") if a.name == f"bench-{domain}")
        prompts += [r["messages"][:-1] for r in load_data(store, ds.id).test[: n_prompts // 2]]  # system + user
    out = {}
    for label, adapter in [("base", None), *[(rt.adapters[a].name, a) for a in rt.adapters]]:
        kls, overlap, flips = [], [], 0
        for p in prompts:
            ids = rt.encode("", None, messages=p)
            with torch.inference_mode():
                if adapter is None:
                    with tf.model.disable_adapter():
                        t = tf.model(torch.tensor([ids])).logits[0, -1].double().numpy()
                else:
                    tf.model.set_adapter(adapter)
                    t = tf.model(torch.tensor([ids])).logits[0, -1].double().numpy()
            c = rt.next_token_logits(ids, adapter).astype(np.float64)
            pt, pc = np.exp(t - t.max()), np.exp(c - c.max())
            pt, pc = pt / pt.sum(), pc / pc.sum()
            kls.append(float(np.sum(pt * (np.log(pt + 1e-30) - np.log(pc + 1e-30)))))
            overlap.append(len(set(np.argsort(-t)[:5]) & set(np.argsort(-c)[:5])) / 5)
            flips += int(np.argmax(t) != np.argmax(c))
        out[label] = {"kl_mean": round(float(np.mean(kls)), 5), "kl_max": round(float(np.max(kls)), 5),
                      "top5_overlap": round(float(np.mean(overlap)), 3),
                      "greedy_first_token_divergence": f"{flips}/{len(prompts)}"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--parity-prompts", type=int, default=16)
    ap.add_argument("--only", default="run,switch,parity,serve")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="llora-lc-"))
    home.mkdir(parents=True, exist_ok=True)
    setup(home, args.train_steps)
    only = set(args.only.split(","))
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                    "args": {k: str(v) for k, v in vars(args).items()}}
    if "run" in only:
        result["run"] = bench_run(home, args.rounds, args.tokens)
        print(json.dumps(result["run"]), flush=True)
    if only & {"switch", "parity"}:
        from llora_cli.engine import resolve_deployment
        from llora_cli.engine.llamacpp import LlamaCppEngine
        from llora_store import open_store

        store = open_store()
        rt = LlamaCppEngine(store, resolve_deployment(store))
        if "switch" in only:
            result["switch"] = bench_switch(rt, args.tokens)
            print(json.dumps(result["switch"]), flush=True)
        if "parity" in only:
            result["parity"] = bench_parity(store, rt, args.parity_prompts)
            print(json.dumps(result["parity"]), flush=True)
    if "serve" in only:
        result["serve"] = load_test(home, args.requests, args.concurrency, 32, 1)
        print(json.dumps(result["serve"]), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
