"""Merge benchmark: PEFT's path vs `llora merge` on a random ~0.9B Llama in bf16 (sharded safetensors).

Usage: python benchmarks/merge_1b.py [--layers 18] [--workdir DIR] [--rounds 3]
(a) transformers load (bf16) + PeftModel.from_pretrained + merge_and_unload + save_pretrained;
(b) `llora merge --dtype bf16 --verify tensors`; (b+) the same with `--verify full`.
Each runs in its own process; peak RSS is that process's VmHWM (ru_maxrss would
inherit the benchmark parent's peak through fork). Then the
output tensors of (a) and (b) are compared with an fp32 reference.
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
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PEFT_PATH = textwrap.dedent('''
    import json, sys, time, torch
    t = time.perf_counter()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base, adapter, out = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out, max_shard_size="500MB")
    s = time.perf_counter() - t
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"seconds": s, "peak_rss_mb": hwm / 1024}))
''')

LLORA_PATH = textwrap.dedent('''
    import json, sys, time
    t = time.perf_counter()
    from llora_store import open_store
    from llora_cli.merge import merge
    r = merge(open_store(), sys.argv[1], dtype="bf16", verify=sys.argv[2], keep_adapter=True)
    s = time.perf_counter() - t
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"seconds": s, "peak_rss_mb": hwm / 1024,
                      "merged": r.merged.id, "tensor_check": r.tensor_check, "full_check": r.full_check}))
''')


def run(code: str, *args: str, env: dict) -> dict:
    os.sync()  # each timed run starts with no dirty pages left by the previous one (not counted)
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def build(work: Path, layers: int) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    import tiny

    base, adapter = work / "base", work / "adapter"
    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(base, max_shard_size="500MB")
    tiny.build_tokenizer(base)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.02)
    peft.save_pretrained(adapter)
    n_params = sum(p.numel() for p in model.parameters())
    return base, adapter, n_params


def compare(base: Path, adapter: Path, out_a: Path, out_b: Path) -> dict:
    import torch
    from safetensors import safe_open

    from llora_cli import mergeops
    from llora_cli.merge import read_adapter

    config, modules, _ = read_adapter(adapter)

    def find(d: Path, name: str):
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                if name in h.keys():
                    return h.get_tensor(name)
        raise KeyError(name)

    worst_ulps, err_a, err_b = 0.0, 0.0, 0.0
    for module in sorted(modules)[:: max(1, len(modules) // 12)]:
        name = f"{module}.weight"
        W = find(base, name).float()
        p = modules[module]
        ref = W + (torch.from_numpy(p["B"]) @ torch.from_numpy(p["A"])) * mergeops.lora_scale(config, module)
        a, b = find(out_a, name).float(), find(out_b, name).float()
        ulp = (ref.abs().clamp_min(1e-30).log2().floor() - 7).exp2()  # bf16 spacing at each value
        worst_ulps = max(worst_ulps, float(((a - b).abs() / ulp).max()))
        err_a += float((a - ref).abs().mean())
        err_b += float((b - ref).abs().mean())
    return {"max_diff_a_vs_b_bf16_ulps": worst_ulps, "mean_abs_err_vs_fp32_a": err_a, "mean_abs_err_vs_fp32_b": err_b}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each path; medians are reported")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llora-merge-bench-"))
    base, adapter, n_params = build(work, args.layers)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)  # a rerun in the same --workdir starts from an empty store
    shutil.rmtree(work / "out_a", ignore_errors=True)
    env = {**os.environ, "LLORA_HOME": str(home)}
    os.environ["LLORA_HOME"] = str(home)
    from llora_cli.adapters import import_adapter
    from llora_cli.bases import add_base
    from llora_store import open_store

    store = open_store()
    add_base(store, str(base), name="big")
    runs_a, runs_b = [], []
    for i in range(args.rounds):  # alternate the paths so disk and cache conditions hit both alike
        shutil.rmtree(work / "out_a", ignore_errors=True)
        runs_a.append(run(PEFT_PATH, str(base), str(adapter), str(work / "out_a"), env=env))
        import_adapter(store, adapter, "big", name=f"ad-tensors-{i}")
        runs_b.append(run(LLORA_PATH, f"ad-tensors-{i}", "tensors", env=env))
    import_adapter(store, adapter, "big", name="ad-full")
    full = run(LLORA_PATH, "ad-full", "full", env=env)
    b = runs_b[-1]
    cmp = compare(base, adapter, work / "out_a", store.path_of(b["merged"]))
    a_s = statistics.median(r["seconds"] for r in runs_a)
    b_s = statistics.median(r["seconds"] for r in runs_b)
    a_rss = max(r["peak_rss_mb"] for r in runs_a)
    b_rss = max(r["peak_rss_mb"] for r in runs_b)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "parameters": n_params, "rounds": args.rounds,
        "peft_path": {"seconds_each": [round(r["seconds"], 2) for r in runs_a], "median_seconds": a_s,
                      "peak_rss_mb": a_rss},
        "llora_tensors": {"seconds_each": [round(r["seconds"], 2) for r in runs_b], "median_seconds": b_s,
                          "peak_rss_mb": b_rss, "tensor_check": b["tensor_check"]},
        "llora_full": {k: full[k] for k in ("seconds", "peak_rss_mb", "full_check")},
        "rss_ratio": b_rss / a_rss, "time_ratio": b_s / a_s, **cmp,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
