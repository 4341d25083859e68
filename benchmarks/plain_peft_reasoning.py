"""Issue 12's reference point, run here: a plain PEFT + transformers Trainer script (no llora code in training or
generation) trained on reasoning word problems, scored on the hand-written set llora's modifiers are scored on.

The issue's writer reports a plain PEFT script (400 problems, a handful of templates) at 22/80 on their own set of
word problems, where llora's first modifier got 1/80. This script asks whether llora's pipeline (the Q8_0
compressed base, its 1e-3 / one-epoch modifier defaults, its training code) is what keeps the reasoning figure low,
or the model: it trains SmolLM2-135M-Instruct the way such scripts do (float32 weights of the embedded base, not
compressed; LoRA r=16, alpha 32, dropout 0.05 on every linear projection; learning rate 2e-4, linear decay; 3 epochs
of 400 rows; loss on the reply only), on llora's most varied reasoning data (every family and phrasing,
``llora_cli.tasks.make(..., all_families=True)``), then answers ``tests/data/reasoning_handwritten.jsonl`` greedily
with plain ``model.generate`` (chat template, 200 new tokens) and scores with llora's reasoning checker. The base
answers the same rows the same way, so the two are paired (exact McNemar test).

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/plain_peft_reasoning.py --home DIR [--n 400] [--epochs 3]
           [--lr 2e-4] [--limit N] [--out result.json]
``--home`` is a llora home used only to register the embedded base (``llora bases add smollm2``) and read its
weights. Prints one JSON object: accuracy k/n with the Wilson 95% interval for base and trained model, McNemar p,
training tokens and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANDWRITTEN = ROOT / "tests" / "data" / "reasoning_handwritten.jsonl"


def base_dir(home: str) -> str:
    """The embedded SmolLM2 base's directory in the llora home ``home`` (registered when missing)."""
    os.environ["LLORA_HOME"] = home
    from llora_cli.bases import add_base
    from llora_store import open_store

    store = open_store(home)
    found = [a for a in store.list(kind="base") if a.name == "smollm2"]
    art_id = found[0].id if found else add_base(store, "smollm2").id
    return str(store.path_of(art_id))


def answer_all(model, tok, rows: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy replies, one row at a time (no padding effects), with the chat template's generation prompt."""
    import torch

    out = []
    for r in rows:
        msgs = [m for m in r["messages"] if m["role"] != "assistant"]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--limit", type=int, help="only the first N hand-written rows (a quick look)")
    p.add_argument("--out")
    args = p.parse_args()

    from llora_cli import tasks
    from llora_cli.stats import mcnemar_exact, wilson
    from llora_cli.tasks.reasoning import check

    path = base_dir(args.home)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    test = [json.loads(line) for line in HANDWRITTEN.read_text().splitlines() if line.strip()]
    test = test[:args.limit] if args.limit else test

    t = time.perf_counter()
    base_replies = answer_all(model, tok, test, args.max_new_tokens)
    base_s = time.perf_counter() - t
    base_ok = [check(r, o) for r, o in zip(test, base_replies, strict=True)]

    rows = tasks.make("reasoning", args.n, seed=0, all_families=True).train
    feats = []
    for r in rows:
        prompt = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(r["messages"], tokenize=False)
        assert full.startswith(prompt), "the chat template does not extend the prompt"
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"][:256]
        feats.append({"input_ids": f_ids, "n_prompt": len(p_ids)})

    def collate(fs):
        w = max(len(f["input_ids"]) for f in fs)
        ids = torch.full((len(fs), w), tok.pad_token_id or 0)
        mask = torch.zeros((len(fs), w), dtype=torch.long)
        labels = torch.full((len(fs), w), -100)
        for i, f in enumerate(fs):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            mask[i, :n] = 1
            labels[i, f["n_prompt"]:n] = ids[i, f["n_prompt"]:n]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    model.train()
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    targs = TrainingArguments(
        output_dir=str(Path(args.home) / "plain-peft-out"), per_device_train_batch_size=args.batch,
        num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0.05,
        logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        remove_unused_columns=False, include_num_input_tokens_seen=True, seed=0, data_seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=feats, data_collator=collate)
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    model.eval()
    replies = answer_all(model, tok, test, args.max_new_tokens)
    ok = [check(r, o) for r, o in zip(test, replies, strict=True)]
    only_trained = sum(a and not b for a, b in zip(ok, base_ok, strict=True))
    only_base = sum(b and not a for a, b in zip(ok, base_ok, strict=True))
    n = len(test)
    result = {
        "set": str(HANDWRITTEN.relative_to(ROOT)), "n": n,
        "base": {"correct": sum(base_ok), "wilson95": wilson(sum(base_ok), n), "seconds": round(base_s, 1)},
        "plain_peft": {"correct": sum(ok), "wilson95": wilson(sum(ok), n)},
        "mcnemar": {"only_trained": only_trained, "only_base": only_base,
                    "p": mcnemar_exact(only_trained, only_base)},
        "training": {"rows": len(rows), "epochs": args.epochs, "lr": args.lr, "batch": args.batch,
                     "steps": trainer.state.global_step, "tokens": int(trainer.state.num_input_tokens_seen),
                     "seconds": round(train_s, 1), "first_loss": losses[:1], "last_loss": losses[-1:]},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "replies": [{"prompt": tasks.prompt_of(r),
                     "base": b, "trained": o, "base_ok": bo, "trained_ok": to}
                    for r, b, o, bo, to in zip(test, base_replies, replies, base_ok, ok, strict=True)],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "replies"}, indent=1))


if __name__ == "__main__":
    main()
