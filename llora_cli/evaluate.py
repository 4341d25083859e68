"""`llora eval`: loss / perplexity on held-out rows and, for task data, accuracy by the task's checker.

Adapters and modifiers are evaluated on their own base (the parent they were
trained on / run on), loaded as PEFT adapters; a QLoRA-trained one on the base
quantized the same way, so eval sees what training saw.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from llora_cli.data import load_data
from llora_cli.encoding import IGNORE, encode_row, pad_batch, prompt_text
from llora_store import Store
from llora_store.errors import BadInput
from llora_store.models import Artifact

MAX_NEW_TOKENS = {"reasoning": 80, "automation": 64, "code": 64, "instruct": 40}


@dataclass
class EvalReport:
    artifact: dict
    dataset: dict
    split: str
    n: int
    loss: float | None
    perplexity: float | None
    accuracy: float | None = None
    correct: int | None = None
    seconds: float = 0.0
    samples: list[dict] = field(default_factory=list)
    load: dict = field(default_factory=dict)  # the loading layer's choice: strategy, dtype, device

    def metrics(self) -> dict:
        return {"n": self.n, "loss": self.loss, "perplexity": self.perplexity, "accuracy": self.accuracy,
                "correct": self.correct, "task": self.dataset.get("task"), "seconds": self.seconds,
                "load": self.load}

    def to_json(self) -> dict:
        return {"artifact": self.artifact, "dataset": self.dataset, "split": self.split, **self.metrics(),
                "samples": self.samples}


def model_source(store: Store, art: Artifact) -> tuple[Path, Path | None, str | None]:
    """(base dir, adapter dir or None, quantization to load the base with)."""
    if art.kind in ("base", "merged", "compressed"):
        return store.path_of(art.id), None, None
    if art.kind not in ("adapter", "modifier"):
        raise BadInput(f"cannot evaluate {art.kind} '{art.name}'; evaluate a base, merged, compressed, adapter or modifier")
    if art.state in ("training", "failed", "discarded"):
        raise BadInput(f"{art.kind} '{art.name}' ({art.id}) is '{art.state}'; it has no finished weights to evaluate")
    role = "runs_on" if art.kind == "modifier" else "trained_on"
    with store.reading() as s:
        bases = store.parents_by_role(s, art.id, role)
    if not bases:
        raise BadInput(f"{art.kind} '{art.name}' records no base")
    quant = (art.meta.get("quantized_training") or {}).get("method")
    return store.path_of(bases[0].id), store.path_of(art.id), quant


def mean_loss(tokenizer, model, rows: list[dict], *, max_len: int = 512, batch_size: int = 8) -> float | None:
    """Token-weighted mean cross-entropy over the learned tokens (assistant turns / text)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    encoded = [encode_row(tokenizer, r, max_len) for r in rows]
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            batch = pad_batch(encoded[i: i + batch_size], pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            total += float(losses)
            count += int((labels != IGNORE).sum())
    return total / count if count else None


def generate_batch(tokenizer, model, rows: list[dict], *, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers to the last user turn of each row (left-padded batches)."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    outputs = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        prompts = [prompt_text(tokenizer, [m for m in r["messages"] if m["role"] != "assistant"]) for r in chunk]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        for row_out in out[:, enc["input_ids"].shape[1]:]:
            outputs.append(tokenizer.decode(row_out, skip_special_tokens=True).strip())
    return outputs


def evaluate(store: Store, ref: str, data_ref: str, *, limit: int | None = None, split: str = "test",
             record: bool = True, command: str = "") -> EvalReport:
    from llora_cli import tasks

    art = store.resolve(ref)
    data = load_data(store, data_ref, command=command)
    rows = data.test if split == "test" and data.test else data.train
    used_split = "test" if split == "test" and data.test else "train"
    if limit is not None:
        if limit < 1:
            raise BadInput("--limit must be at least 1")
        rows = rows[:limit]
    base_dir, adapter_dir, quant = model_source(store, art)
    start = time.perf_counter()
    from llora_cli.loading import load_model

    tokenizer, model, plan = load_model(base_dir, adapter_dir, quant)
    loss = mean_loss(tokenizer, model, rows)
    report = EvalReport(
        artifact={"id": art.id, "name": art.name, "kind": art.kind},
        dataset={"id": data.artifact.id, "name": data.artifact.name, "task": data.task},
        split=used_split, n=len(rows), loss=round(loss, 5) if loss is not None else None,
        perplexity=round(math.exp(min(loss, 50)), 4) if loss is not None else None,
        load={"strategy": plan.strategy, "dtype": plan.dtype, "device": plan.device},
    )
    if data.task in tasks.KINDS:
        check = tasks.checker(data.task)
        outs = generate_batch(tokenizer, model, rows, max_new_tokens=MAX_NEW_TOKENS.get(data.task, 64))
        verdicts = [check(r, o) for r, o in zip(rows, outs)]
        report.correct = sum(verdicts)
        report.accuracy = round(report.correct / len(rows), 4) if rows else None
        report.samples = [{"prompt": r["messages"][0]["content"], "output": o, "correct": v}
                          for r, o, v in list(zip(rows, outs, verdicts))[:3]]
    report.seconds = round(time.perf_counter() - start, 2)
    if record:
        store.record_evaluation(art.id, report.metrics(), dataset_id=data.artifact.id, split=used_split)
    return report
