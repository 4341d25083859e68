"""The training job itself: PEFT LoRA / DoRA / rsLoRA on a base, with transformers' Trainer.

It knows nothing about the catalog: it reads a spec (base dir, rows, config,
output dir) and writes a PEFT adapter directory plus per-step metrics, so the
same code runs in-process or under ``accelerate launch`` (one process per rank;
only rank 0 writes the adapter). ``python -m llora_cli.trainjob SPEC.json`` is
the worker entry point.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llora_cli.encoding import encode_row, keeps_learned_logits, learned_loss, learned_positions, pad_batch
from llora_cli.trainconfig import TrainConfig

METRICS = "metrics.jsonl"


@dataclass
class TrainSpec:
    base_dir: str
    rows_path: str  # JSONL of normalized rows
    run_dir: str  # checkpoints and metrics.jsonl
    out_dir: str  # the finished PEFT adapter goes here
    config: dict
    target_modules: list[str]
    resume: bool = False
    heldout_path: str | None = None  # JSONL of held-out rows (task data): loss and token accuracy during training
    task: str = "generate"  # or "classify": LoRA plus a sequence-classification head (PEFT SEQ_CLS)
    labels: list[str] | None = None  # classify: class i of the head is labels[i]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class TrainOutcome:
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    final_loss: float | None
    device: str
    precision: str
    trainable_parameters: int
    world_size: int = 1
    # on held-out rows: {"step", "loss", "token_accuracy", "n"}; a classifier: "accuracy" (of the label) instead
    heldout: list[dict] = field(default_factory=list)
    memorisation: str | None = None  # the warning of memorisation_warning(), if any
    truncation: str | None = None  # the warning of truncation_warning(), if any


HELDOUT_ROWS = 32  # held-out rows scored during training (teacher-forced: one forward pass each, no generation)
HELDOUT_POINTS = (0.25, 0.5, 0.75, 1.0)  # fractions of the run at which they are scored
NEAR_ZERO_LOSS = 0.05  # nats per learned token: the model puts ~95% on each training token
FLAT_GAIN = 0.01  # held-out token accuracy gained over the second half of the run below this is flat
PERFECT = 0.999  # held-out accuracy at the middle point at or above this: nothing left to gain, no warning


def learned_span(labels: list[int]) -> tuple[int, int]:
    """(index of the first learned token, 1 + index of the last) of a row's ``labels`` (-100: not learned);
    (0, 0) when none is learned."""
    idx = [i for i, label in enumerate(labels) if label != -100]
    return (idx[0], idx[-1] + 1) if idx else (0, 0)


def truncation_warning(lengths: list[int], spans: list[tuple[int, int]], max_seq_len: int) -> str | None:
    """A warning naming the training rows ``max_seq_len`` cuts, else None.

    ``lengths[i]``: row i's token count (chat template applied); ``spans[i]``: ``learned_span`` of its labels. A row
    whose learned tokens all lie past the cut is dropped (nothing to learn); one cut inside its reply is trained on
    the reply's beginning only, so the model never sees how such replies end.
    """
    long = [i for i, n in enumerate(lengths) if n > max_seq_len and spans[i][1] > 0]  # no learned token: no loss
    if not long:
        return None
    dropped = sum(spans[i][0] >= max_seq_len for i in long)
    cut_reply = sum(spans[i][0] < max_seq_len < spans[i][1] for i in long)
    parts = [f"{dropped} dropped (their reply starts after the cut)" if dropped else "",
             f"{cut_reply} trained on a reply cut short" if cut_reply else "",
             f"{len(long) - dropped - cut_reply} cut after their reply (no loss)"
             if len(long) - dropped - cut_reply else ""]
    return (f"{len(long)} of {len(lengths)} training rows are longer than max_seq_len={max_seq_len} tokens: "
            f"{', '.join(p for p in parts if p)}; the longest has {max(lengths)} tokens. To keep every row whole, "
            f"train with max_seq_len={max(lengths)}")


def memorisation_warning(losses: list[float], heldout: list[dict], *, near_zero: float = NEAR_ZERO_LOSS,
                         flat: float = FLAT_GAIN) -> str | None:
    """A warning when the training loss is near zero while held-out accuracy stopped improving, else None.

    ``losses``: the training loss of each logged step; ``heldout``: points ``{"step", "token_accuracy"}`` in step
    order (a classifier's points have ``accuracy``, used the same way). Near zero: the mean of the last 5 losses
    is below ``near_zero``. Flat: the held-out accuracy at the last point is less than ``flat`` above the one at
    the middle point of the run (the latest point at or before half the last point's step). Both together mean
    more steps only memorise the training rows.
    """
    if not losses or len(heldout) < 2:
        return None
    tail = losses[-5:]
    recent = sum(tail) / len(tail)
    if recent >= near_zero:
        return None
    end = heldout[-1]
    middle = [h for h in heldout[:-1] if h["step"] <= end["step"] / 2] or heldout[:1]
    mid = middle[-1]
    key = "token_accuracy" if "token_accuracy" in end else "accuracy"
    gain = end[key] - mid[key]
    if gain >= flat or mid[key] >= PERFECT:  # still improving, or already perfect: nothing to warn of
        return None
    return (f"training loss {recent:.3f} is near zero (memorised) while held-out {key.replace('_', ' ')} is flat: "
            f"{mid[key]:.1%} at step {mid['step']} -> {end[key]:.1%} at step {end['step']}; "
            f"more steps will not help: train on more varied rows, or stop near step {mid['step']} "
            f"(max_steps={mid['step']})")


def choose_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


class TrainJob:
    """setup() loads model and data, run() trains, save() writes the adapter."""

    def __init__(self, spec: TrainSpec, *, progress: Callable[[dict], None] | None = None) -> None:
        self.spec = spec
        self.config = TrainConfig(**spec.config)
        self.progress = progress
        self.run_dir = Path(spec.run_dir)
        self.truncation: str | None = None  # truncation_warning() of the training rows, set by setup()

    def setup(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.device = choose_device(cfg.device)
        self.bf16 = self.device == "cuda" and torch.cuda.is_bf16_supported()
        self.precision = "bf16" if self.bf16 else "fp32"
        from llora_cli.loading import load_gguf_dequantized, load_tokenizer, stored_format

        stored = stored_format(Path(self.spec.base_dir))
        self.tokenizer = load_tokenizer(Path(self.spec.base_dir))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs: dict = {"dtype": torch.bfloat16 if self.bf16 else torch.float32}
        if stored == "gguf":
            self.precision += "+gguf-dequantized"
        elif stored in ("nf4", "int8"):
            self.precision += f"+{stored} (stored)"  # loaded as saved: the same quantized weights that run
        if cfg.quantize != "none":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"])
                if cfg.quantize == "nf4" else BitsAndBytesConfig(load_in_8bit=True)
            )
            self.precision += f"+{cfg.quantize}"
        self.classify = self.spec.task == "classify"
        if self.classify:
            # LlamaForSequenceClassification & co.: the decoder plus a linear head `score` [num_labels, hidden] on the
            # last non-pad token; the head is new (random init), trained in full (modules_to_save), not LoRA
            from transformers import AutoModelForSequenceClassification

            labels = list(self.spec.labels or [])
            model = AutoModelForSequenceClassification.from_pretrained(
                self.spec.base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={x: i for i, x in enumerate(labels)}, **kwargs)
            model.config.pad_token_id = self.tokenizer.pad_token_id  # finds each row's last token
        elif stored == "gguf":
            # a GGUF base trains on its dequantized weights: exactly the values the runtime computes with
            model = load_gguf_dequantized(Path(self.spec.base_dir), kwargs["dtype"])
        else:
            model = AutoModelForCausalLM.from_pretrained(self.spec.base_dir, **kwargs)
        if cfg.quantize != "none" or stored in ("nf4", "int8"):
            from peft import prepare_model_for_kbit_training

            from llora_cli.loading import keep_bnb_4bit_unpacked

            keep_bnb_4bit_unpacked(model)  # eval mode (held-out evaluation) computes with training's NF4 weights

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        elif cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        lora = LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=self.spec.target_modules,
            use_dora=cfg.dora, use_rslora=cfg.rslora, task_type="SEQ_CLS" if self.classify else "CAUSAL_LM",
        )  # SEQ_CLS: PEFT adds the head (`score` / `classifier`) to modules_to_save, saved whole with the adapter
        self.model = get_peft_model(model, lora)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        rows = [json.loads(line) for line in open(self.spec.rows_path) if line.strip()]
        from datasets import Dataset

        if self.classify:
            self.dataset = Dataset.from_list([self.encode_labelled(r) for r in rows])
            self.heldout = []
            if self.spec.heldout_path and Path(self.spec.heldout_path).exists():
                self.heldout = [self.encode_labelled(json.loads(line)) for line in open(self.spec.heldout_path)
                                if line.strip()][:HELDOUT_ROWS]
            return
        whole = [encode_row(self.tokenizer, r, sys.maxsize) for r in rows]
        self.truncation = truncation_warning([len(e["input_ids"]) for e in whole],
                                             [learned_span(e["labels"]) for e in whole], cfg.max_seq_len)
        encoded = [{k: v[:cfg.max_seq_len] for k, v in e.items()} for e in whole]
        encoded = [e for e in encoded if any(label != -100 for label in e["labels"])]
        if not encoded:
            raise ValueError(f"no row has a token to learn after truncation to max_seq_len={cfg.max_seq_len}; "
                             f"raise max_seq_len (the longest row has {max(len(e['input_ids']) for e in whole)} "
                             "tokens)")
        self.dataset = Dataset.from_list(encoded)
        self.heldout: list[dict] = []
        if self.spec.heldout_path and Path(self.spec.heldout_path).exists():
            held = [json.loads(line) for line in open(self.spec.heldout_path) if line.strip()][:HELDOUT_ROWS]
            self.heldout = [e for e in (encode_row(self.tokenizer, r, cfg.max_seq_len) for r in held)
                            if any(label != -100 for label in e["labels"])]

    def encode_labelled(self, row: dict) -> dict:
        """A classification row -> ``input_ids`` (the text's first ``max_seq_len`` tokens, no chat template: the head
        reads the last one) and ``labels`` (the class index)."""
        ids = self.tokenizer(row["text"], add_special_tokens=True, truncation=True,
                             max_length=self.config.max_seq_len)["input_ids"]
        return {"input_ids": ids, "labels": self.spec.labels.index(str(row["label"]))}

    def heldout_score(self, step: int) -> dict:
        """Teacher-forced loss and next-token accuracy on the held-out rows' learned tokens (dropout off)."""
        import torch

        from llora_cli.encoding import IGNORE

        if self.classify:
            return self.heldout_classify(step)
        model = self.model
        was_training = model.training
        model.eval()
        total, correct, count = 0.0, 0, 0
        device = next(model.parameters()).device
        kept = keeps_learned_logits(model)
        with torch.no_grad():
            for i in range(0, len(self.heldout), 8):
                batch = pad_batch(self.heldout[i: i + 8], self.tokenizer.pad_token_id)
                keep = learned_positions(batch["labels"]).to(device)
                logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                               **({"logits_to_keep": keep} if kept else {})).logits.float()
                logits = logits if kept else logits[keep]
                labels = batch["labels"][:, 1:].to(device)
                targets = labels[labels != IGNORE]  # row-major, as the kept logits
                total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
                correct += int((logits.argmax(-1) == targets).sum())
                count += int(targets.numel())
        if was_training:
            model.train()
        return {"step": step, "loss": round(total / count, 5), "token_accuracy": round(correct / count, 5),
                "n": len(self.heldout)}

    def heldout_classify(self, step: int) -> dict:
        """Cross-entropy (nats) and accuracy of the head on the held-out rows (dropout off)."""
        import torch

        model = self.model
        was_training = model.training
        model.eval()
        total, correct = 0.0, 0
        device = next(model.parameters()).device
        with torch.no_grad():
            for i in range(0, len(self.heldout), 8):
                batch = collate_labelled(self.heldout[i: i + 8], self.tokenizer.pad_token_id)
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits.float()
                labels = batch["labels"].to(device)
                total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(-1) == labels).sum())
        if was_training:
            model.train()
        n = len(self.heldout)
        return {"step": step, "loss": round(total / n, 5), "accuracy": round(correct / n, 5), "n": n}

    def run(self) -> TrainOutcome:
        from transformers import Trainer, TrainerCallback, TrainingArguments

        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.run_dir / METRICS
        job = self

        class Progress(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                self.start = time.perf_counter()
                self.start_tokens = state.num_input_tokens_seen
                self.start_step = state.global_step

            def on_log(self, args, state, control, logs=None, **kw):
                if not logs or "loss" not in logs or not state.is_world_process_zero:
                    return
                elapsed = time.perf_counter() - self.start
                tokens = state.num_input_tokens_seen - self.start_tokens
                done = state.global_step - self.start_step
                rate = tokens / elapsed if elapsed > 0 else 0.0
                eta = (state.max_steps - state.global_step) * elapsed / done if done else None
                rec = {"step": state.global_step, "max_steps": state.max_steps, "loss": logs["loss"],
                       "learning_rate": logs.get("learning_rate"), "tokens": state.num_input_tokens_seen,
                       "tokens_per_s": round(rate, 1), "elapsed_s": round(elapsed, 2),
                       "eta_s": round(eta, 1) if eta is not None else None}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if job.progress:
                    job.progress(rec)

            def on_step_end(self, args, state, control, **kw):
                if not job.heldout or not state.is_world_process_zero:
                    return
                marks = {max(1, round(state.max_steps * f)) for f in HELDOUT_POINTS}
                if state.global_step in marks and all(h["step"] != state.global_step for h in job.heldout_points):
                    job.heldout_points.append(job.heldout_score(state.global_step))

        args = TrainingArguments(
            output_dir=str(self.run_dir / "checkpoints"),
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
            weight_decay=cfg.weight_decay,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            logging_steps=1,
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=1,
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[],
            disable_tqdm=True,
            use_cpu=self.device == "cpu",
            bf16=self.bf16,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            **_length_grouping(TrainingArguments, cfg.group_by_length),
            include_num_input_tokens_seen=True,
            ddp_backend="gloo" if self.device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        )
        pad_id = self.tokenizer.pad_token_id
        kept = not self.classify and keeps_learned_logits(self.model)
        if self.classify:  # the model's own loss: cross-entropy of the head's logits against the class index
            collator = lambda feats: collate_labelled(feats, pad_id)  # noqa: E731
        else:
            collator = (lambda feats: _collate(feats, pad_id)) if kept else (lambda feats: pad_batch(feats, pad_id))
        trainer = Trainer(
            model=self.model, args=args, train_dataset=self.dataset, data_collator=collator,
            compute_loss_func=learned_loss if kept else None, callbacks=[Progress()],
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # stdout is for data; progress goes through our callback
        self.trainer = trainer
        self.heldout_points: list[dict] = []
        resume = str(latest_checkpoint(self.run_dir)) if self.spec.resume and latest_checkpoint(self.run_dir) else None
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - start
        tokens = int(trainer.state.num_input_tokens_seen)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        final = losses[-1] if losses else None
        if final is not None and not math.isfinite(final):
            raise ValueError(f"training diverged: loss is {final}; lower the learning rate")
        return TrainOutcome(
            steps=int(result.global_step), tokens=tokens, seconds=round(seconds, 2),
            tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0, final_loss=final,
            device=self.device, precision=self.precision, trainable_parameters=int(self.trainable),
            world_size=int(trainer.args.world_size), heldout=self.heldout_points,
            memorisation=memorisation_warning(losses, self.heldout_points),
            truncation=self.truncation,
        )

    def save(self) -> None:
        """Rank 0 writes the PEFT adapter (adapter_config.json + adapter_model.safetensors)."""
        if not self.trainer.is_world_process_zero():
            return
        out = Path(self.spec.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        if self.classify:  # the label map travels with the files (index i = row i of the saved head)
            from llora_cli.classify import CLASSIFIER_FILE

            (out / CLASSIFIER_FILE).write_text(json.dumps({"task": "classify", "labels": list(self.spec.labels)}))


def _length_grouping(training_arguments: type, on: bool) -> dict:
    """TrainingArguments keywords for length-grouped batches: ``train_sampling_strategy`` (transformers >= 5) or
    ``group_by_length`` (before); nothing when off."""
    if not on:
        return {}
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_arguments)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names else {
        "group_by_length": True}


def collate_labelled(features: list[dict], pad_id: int) -> dict:
    """Classification rows -> right-padded ``input_ids`` / ``attention_mask`` [batch, longest] (int64) and ``labels``
    [batch] (int64). The sequence-classification models read the last token whose id is not ``pad_id``."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, :len(f["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}


def _collate(features: list[dict], pad_id: int) -> dict:
    """Padded batch plus ``logits_to_keep``: the model's output head projects only the positions the loss reads
    (``learned_loss``, the same cross-entropy as the model's own loss on full logits)."""
    batch = pad_batch(features, pad_id)
    batch["logits_to_keep"] = learned_positions(batch["labels"])
    return batch


def main(argv: list[str]) -> int:
    """Worker entry point for ``accelerate launch -m llora_cli.trainjob SPEC.json``."""
    spec = TrainSpec.load(Path(argv[0]))
    finished = Path(spec.run_dir) / "outcome.json"
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and finished.is_file():
        return 0  # the run had finished and saved; a rank died on the way out: nothing to redo
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        spec.resume = True  # an elastic restart continues from the last checkpoint, if any
    job = TrainJob(spec)
    job.setup()
    outcome = job.run()
    job.save()
    if job.trainer.is_world_process_zero():
        tmp = finished.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(outcome)))
        os.replace(tmp, finished)  # whole or absent: a restarted rank trusts it
    _shutdown_distributed()
    return 0


def _shutdown_distributed() -> None:
    """Leave the process group together and tear it down before the interpreter exits.

    Without this, a rank that reaches exit while gloo's background threads are still joinable dies with
    "terminate called without an active exception" (SIGABRT, seen here about once in 20 two-rank runs); the
    elastic agent then restarts a run that had already finished.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
