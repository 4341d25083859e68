"""Training throughput: `llora train` vs a plain PEFT + transformers Trainer script, same settings.

Usage: python benchmarks/train_throughput.py [--steps 20] [--batch 8] [--rounds 2]
Both train SmolLM2-135M-Instruct with LoRA r=16 on every linear projection,
fp32 on CPU, on the same generated reasoning rows (chat template applied),
and count the same thing: non-padding input tokens per second of train().
Each measurement runs in its own process; rounds alternate the order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap

PLAIN = textwrap.dedent('''
    import json, sys, time, torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    base, rows_path, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    rows = [json.loads(l) for l in open(rows_path)]
    enc = [tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"][:256] for r in rows]
    feats = [{"input_ids": e} for e in enc]
    def collate(fs):
        w = max(len(f["input_ids"]) for f in fs)
        ids = torch.full((len(fs), w), tok.pad_token_id or 0)
        mask = torch.zeros((len(fs), w), dtype=torch.long)
        for i, f in enumerate(fs):
            ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"]); mask[i, :len(f["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    args = TrainingArguments(output_dir=sys.argv[5], per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        remove_unused_columns=False, include_num_input_tokens_seen=True, seed=0, data_seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=feats, data_collator=collate)
    t = time.perf_counter(); trainer.train(); s = time.perf_counter() - t
    n = trainer.state.num_input_tokens_seen
    print(json.dumps({"tokens": int(n), "seconds": s, "tokens_per_s": n / s}))
''')

LLORA = textwrap.dedent('''
    import json, os, sys
    from llora_store import open_store
    from llora_cli.train import train
    from llora_cli.trainconfig import load_config
    store = open_store()
    res = train(store, base_ref="smollm2", data_ref=sys.argv[1], kind="adapter",
        config=load_config(None, [f"max_steps={sys.argv[2]}", f"batch_size={sys.argv[3]}", "r=16", "alpha=32",
                                  "learning_rate=2e-4", "save_steps=100000", "seed=0"]))
    o = res.outcome
    print(json.dumps({"tokens": o["tokens"], "seconds": o["seconds"], "tokens_per_s": o["tokens_per_s"]}))
''')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="llora-tp-")
    env = {**os.environ, "LLORA_HOME": home}
    from llora_cli.bases import add_base
    from llora_cli.data import make_dataset
    from llora_store import open_store

    os.environ["LLORA_HOME"] = home
    store = open_store()
    base = add_base(store, "smollm2")
    ds = make_dataset(store, "reasoning", args.steps * args.batch, seed=0, name="tp")
    rows_path = store.path_of(ds.id) / "train.jsonl"
    results: dict[str, list[float]] = {"plain": [], "llora": []}
    for rnd in range(args.rounds):
        order = ["plain", "llora"] if rnd % 2 == 0 else ["llora", "plain"]
        for which in order:
            if which == "plain":
                cmd = [sys.executable, "-c", PLAIN, str(store.path_of(base.id)), str(rows_path), str(args.steps),
                       str(args.batch), tempfile.mkdtemp()]
            else:
                cmd = [sys.executable, "-c", LLORA, ds.id, str(args.steps), str(args.batch)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            results[which].append(rec["tokens_per_s"])
            print(which, rec, flush=True)
    plain, ours = statistics.median(results["plain"]), statistics.median(results["llora"])
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                      "args": vars(args), "plain_tokens_per_s": round(plain, 1), "llora_tokens_per_s": round(ours, 1),
                      "ratio": round(ours / plain, 3), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
