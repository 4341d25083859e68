"""`llora eval`: loss / perplexity, checker accuracy on any chat/alpaca data, paired comparisons, HumanEval.

Adapters and modifiers are evaluated on their own base (the parent they were
trained on / run on), loaded as PEFT adapters; a QLoRA-trained one on the base
quantized the same way, so eval sees what training saw.

Every accuracy is k/n with its 95% Wilson interval (``llora_cli.stats``); the
per-row verdicts are stored too, so two results on the same rows can be paired.
A comparison of two artifacts scores both on the same rows and adds the exact
McNemar test. Checkers and where a row's expected answer comes from:
``llora_cli.checkers``; the HumanEval protocol: ``llora_cli.humaneval``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from llora_cli import checkers
from llora_cli.checkers import MAX_NEW_TOKENS  # noqa: F401  (compress.py's held-out accuracy uses it)
from llora_cli.data import load_data, parse_user_file_located, require_generative
from llora_cli.encoding import encode_row, keeps_learned_logits, learned_loss_sum, learned_positions, pad_batch, prompt_text
from llora_cli.stats import Accuracy, Paired
from llora_store import Store
from llora_store.errors import BadInput
from llora_store.models import Artifact

BENCHMARKS = ("humaneval",)
PROMPT_STYLES = ("chat", "raw")
HUMANEVAL_MAX_NEW_TOKENS = 384


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
    task: str | None = None  # the checker (--task, or the dataset's task kind)
    verdicts: list[bool] | None = None  # per row, in row order (for paired comparisons)
    ci95: list[float] | None = None  # Wilson 95% interval of the accuracy
    extra: dict = field(default_factory=dict)  # benchmark / comparison details
    timing: dict = field(default_factory=dict)  # seconds: load (0 when reused), loss, generate
    outputs: list[dict] = field(default_factory=list)  # every row: index, prompt, expected, output, correct

    def score(self, verdicts: list[bool]) -> None:
        acc = Accuracy(sum(verdicts), len(verdicts))
        self.verdicts, self.correct = list(verdicts), acc.k
        self.accuracy, self.ci95 = acc.to_json()["accuracy"], acc.to_json()["ci95"]

    @property
    def accuracy_text(self) -> str | None:
        """"k/n = p% (95% CI lo-hi%, Wilson)", or None without a checker."""
        return str(Accuracy(self.correct, len(self.verdicts))) if self.verdicts else None

    def metrics(self) -> dict:
        m = {"n": self.n, "loss": self.loss, "perplexity": self.perplexity, "accuracy": self.accuracy,
             "correct": self.correct, "task": self.task, "seconds": self.seconds, "load": self.load,
             "data": self.dataset, **({"timing": self.timing} if self.timing else {})}
        if self.verdicts is not None:
            m.update(ci95=self.ci95, ci_method="wilson", verdicts="".join("1" if v else "0" for v in self.verdicts))
        return {**m, **self.extra}

    def to_json(self) -> dict:
        return {"artifact": self.artifact, "dataset": self.dataset, "split": self.split, **self.metrics(),
                "accuracy_text": self.accuracy_text, "samples": self.samples}


@dataclass
class CompareReport:
    """A against B on the same rows: both reports and the paired test."""

    a: EvalReport
    b: EvalReport
    paired: Paired

    def to_json(self) -> dict:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "comparison": self.comparison()}

    def comparison(self) -> dict:
        return {"against": self.b.artifact, **self.paired.to_json(), "task": self.a.task,
                "data": self.a.dataset, "split": self.a.split}


def model_source(store: Store, art: Artifact) -> tuple[Path, Path | None, str | None]:
    """(base dir, adapter dir or None, quantization to load the base with). BadInput for a classifier (it has no
    text to score: ``llora classify --data`` evaluates it)."""
    from llora_cli.classify import refuse_classifier

    refuse_classifier(art, "llora eval", "it scores generated text")
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
    kept = keeps_learned_logits(model)
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            batch = pad_batch(encoded[i: i + batch_size], pad)
            keep = learned_positions(batch["labels"])
            # logits only where a learned token is predicted (the output head: 28M of SmolLM2's 134M multiply-adds)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           **({"logits_to_keep": keep} if kept else {})).logits
            losses, n = learned_loss_sum(logits if kept else logits[keep], batch["labels"])
            total += float(losses)
            count += n
    return total / count if count else None


def generate_texts(tokenizer, model, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16,
                   stop_strings: list[str] | None = None, strip: bool = True,
                   add_special_tokens: bool = False, stop_when=None, row_stops=None,
                   calculator: dict | None = None) -> list[str]:
    """Greedy continuations of prompt texts (left-padded batches); generation of a row may end at a stop string,
    or once ``stop_when(text so far)`` (or its own ``row_stops[i](text so far)``, one per prompt) is true for it
    (checked after every token). A batch ends when all its rows have. With ``calculator`` (a dict), arithmetic
    steps' results are computed (``llora_cli.calculator``) and ``calculator["forced_tokens"]`` counts the tokens it
    changed."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra = {"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}
    outputs = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i: i + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens)
        if stop_when is not None or row_stops is not None:
            dones = row_stops[i: i + batch_size] if row_stops is not None else [stop_when] * len(enc["input_ids"])
            extra["stopping_criteria"] = [_text_stop(tokenizer, enc["input_ids"].shape[1], dones)]
        if calculator is not None:
            from transformers import LogitsProcessorList

            from llora_cli.calculator import CalculatorLogitsProcessor

            proc = CalculatorLogitsProcessor(tokenizer)
            extra["logits_processor"] = LogitsProcessorList([proc])
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, **extra)
        if calculator is not None:
            calculator["forced_tokens"] = calculator.get("forced_tokens", 0) + proc.forced
        for row_out in out[:, enc["input_ids"].shape[1]:]:
            text = tokenizer.decode(row_out, skip_special_tokens=True)
            outputs.append(text.strip() if strip else text)
    return outputs


def _text_stop(tokenizer, prompt_len: int, dones: list):
    """A transformers StoppingCriteria: row i is finished once ``dones[i](its decoded continuation)`` is true."""
    import torch
    from transformers import StoppingCriteria

    class TextStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([done(tokenizer.decode(row[prompt_len:], skip_special_tokens=True))
                                 for done, row in zip(dones, input_ids)], dtype=torch.bool, device=input_ids.device)

    return TextStop()


def generate_batch(tokenizer, model, rows: list[dict], *, max_new_tokens: int, batch_size: int = 16,
                   done=None, calculator: dict | None = None) -> list[str]:
    """Greedy answers to each row's messages up to (not including) its final assistant reply; with
    ``done(row, text so far)`` (a checker's: ``checkers.answer_done``) a row's generation stops once it is true;
    ``calculator``: see ``generate_texts``."""
    prompts = []
    for r in rows:
        msgs = r["messages"]
        prompts.append(prompt_text(tokenizer, msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs))
    row_stops = [(lambda text, r=r: done(r, text)) for r in rows] if done is not None else None
    return generate_texts(tokenizer, model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          row_stops=row_stops, calculator=calculator)


def _eval_rows(store: Store, data_ref: str, split: str, limit: int | None, checker, command: str):
    """(data, rows, split used, checker, rows prepared for the checker or None).

    A user file is parsed and its answers checked before it is registered: a file refused here
    leaves nothing in the catalog.
    """
    if limit is not None and limit < 1:
        raise BadInput("--limit must be at least 1")
    path = Path(data_ref).expanduser()
    if path.exists():
        located, _ = parse_user_file_located(path)
        located = located[:limit] if limit is not None else located
        prepared = checkers.prepare([r for _, r in located], [p for p, _ in located], checker) if checker else None
        data = load_data(store, data_ref, command=command)
        require_generative(data, "llora eval")
        return data, [r for _, r in located], "train", checker, prepared
    data = load_data(store, data_ref, command=command)
    require_generative(data, "llora eval")
    used_split = "test" if split == "test" and data.test else "train"
    if used_split == "train" and split == "test" and data.artifact and data.artifact.meta.get("families") == "all":
        raise BadInput(f"dataset '{data.artifact.name}' was made with --all-families: it has no held-out rows, and its "
                       "training rows say nothing about what the model learned",
                       hint=f"evaluate on rows written apart: --data FILE --task {data.task}")
    rows = data.test if used_split == "test" else data.train
    rows = rows[:limit] if limit is not None else rows
    if checker is None and data.task in checkers.TASK_CHECKERS:
        checker = checkers.parse_task(data.task)
    prepared = None
    if checker is not None:
        places = [f"dataset '{data.artifact.name}' {used_split}.jsonl:{i}" for i in range(1, len(rows) + 1)]
        prepared = checkers.prepare(rows, places, checker)
    return data, rows, used_split, checker, prepared


def evaluate(store: Store, ref: str, data_ref: str, *, limit: int | None = None, split: str = "test",
             record: bool = True, command: str = "", task: str | None = None,
             max_new_tokens: int | None = None, models=None, calculator: bool = False) -> EvalReport:
    """Loss and perplexity of ``ref`` on the rows of ``data_ref`` and, with a checker (``task``, or the
    dataset's own task kind), accuracy of its greedy replies: k/n with the Wilson 95% interval. A reply's
    generation stops once the checker's verdict can no longer change (``checkers.answer_done``; the stored
    samples end there too). ``models`` (a ``loading.ModelCache``) reuses a base already loaded for an earlier
    evaluation on the same weights. ``calculator``: the replies' arithmetic steps are computed, not generated
    (``llora_cli.calculator``; Cobbe et al. 2021); the stored evaluation says so (``calculator``: tokens forced),
    and a checker is required (BadInput otherwise)."""
    art = store.resolve(ref)
    base_dir, adapter_dir, quant = model_source(store, art)
    checker = checkers.parse_task(task) if task is not None else None
    data, rows, used_split, checker, prepared = _eval_rows(store, data_ref, split, limit, checker, command)
    if calculator and checker is None:
        raise BadInput("--calculator changes generated replies, and this evaluation generates none (no checker)",
                       hint="give --task reasoning (or another checker) with --calculator")
    start = time.perf_counter()
    from llora_cli.loading import ModelCache

    with (models or ModelCache()).use(base_dir, adapter_dir, quant) as (tokenizer, model, plan):
        loaded = time.perf_counter()
        report = _score(tokenizer, model, plan, art, data, rows, used_split, checker, prepared, max_new_tokens,
                        calculator)
    report.seconds = round(time.perf_counter() - start, 2)
    report.timing = {"load": round(loaded - start, 2), **report.timing}
    if record:
        store.record_evaluation(art.id, report.metrics(), dataset_id=data.artifact.id, split=used_split)
    return report


def _score(tokenizer, model, plan, art, data, rows, used_split, checker, prepared, max_new_tokens,
           calculator: bool = False) -> EvalReport:
    if calculator:
        from llora_cli.calculator import digit_token_ids

        digit_token_ids(tokenizer)  # CalculatorUnsupported before the loss pass and any generation
    t0 = time.perf_counter()
    loss = mean_loss(tokenizer, model, rows)
    t1 = time.perf_counter()
    report = EvalReport(
        artifact={"id": art.id, "name": art.name, "kind": art.kind},
        dataset={"id": data.artifact.id, "name": data.artifact.name, "task": data.task,
                 "sha256": data.artifact.meta.get("source", {}).get("sha256") or data.artifact.content_hash},
        split=used_split, n=len(rows), loss=round(loss, 5) if loss is not None else None,
        perplexity=round(math.exp(min(loss, 50)), 4) if loss is not None else None,
        load={"strategy": plan.strategy, "dtype": plan.dtype, "device": plan.device},
    )
    if checker is not None:
        report.task = checker.task
        calc = {"forced_tokens": 0} if calculator else None
        outs = generate_batch(tokenizer, model, prepared, max_new_tokens=max_new_tokens or checker.max_new_tokens,
                              done=checker.done, calculator=calc)
        if calc is not None:
            report.extra["calculator"] = calc
        verdicts = [bool(checker.check(r, o)) for r, o in zip(prepared, outs)]
        report.score(verdicts)
        report.outputs = [{"row": i, "prompt": r["messages"][-1]["content"], "expected": r["check"], "output": o,
                           "correct": v} for i, (r, o, v) in enumerate(zip(prepared, outs, verdicts))]
        report.samples = [{k: o[k] for k in ("prompt", "output", "correct")} for o in report.outputs[:3]]
    report.timing = {"loss": round(t1 - t0, 2), "generate": round(time.perf_counter() - t1, 2)}
    return report


def write_outputs(path: Path, reports: list[EvalReport]) -> int:
    """Write every scored row of ``reports`` to ``path`` as JSON lines (``artifact``, ``row`` index, ``prompt``,
    ``expected`` check, ``output``, ``correct``; HumanEval adds ``error``), atomically: a temporary file in the
    same directory renamed over ``path``. Returns the number of lines.

    Raises BadInput when no report has per-row outputs (no checker) or the directory does not exist."""
    lines = [{"artifact": r.artifact["name"], **o} for r in reports for o in r.outputs]
    if not lines:
        raise BadInput("--outputs needs scored rows: give --task (or task data, or --benchmark) so replies are "
                       "generated and checked")
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise BadInput(f"--outputs {path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(lines)


def humaneval_completer(tokenizer, model, *, prompt_style: str, max_new_tokens: int, batch_size: int = 8):
    """``complete(problems) -> completions`` with greedy generation (see ``llora_cli.humaneval``)."""
    from llora_cli import humaneval

    def complete(problems: list[dict]) -> list[str]:
        if prompt_style == "raw":
            texts = generate_texts(tokenizer, model, [p["prompt"] for p in problems], max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, stop_strings=humaneval.STOP_SEQUENCES, strip=False,
                                   add_special_tokens=True)
            return [humaneval.truncate_raw(t) for t in texts]
        prompts = [prompt_text(tokenizer, [{"role": "user", "content": humaneval.chat_prompt(p)}]) for p in problems]
        texts = generate_texts(tokenizer, model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               stop_when=humaneval.chat_reply_done)
        return [humaneval.completion_from_chat(p, t) for p, t in zip(problems, texts)]

    return complete


def evaluate_benchmark(store: Store, ref: str, benchmark: str, *, limit: int | None = None, record: bool = True,
                       prompt_style: str = "chat", max_new_tokens: int | None = None,
                       complete=None) -> EvalReport:
    """pass@1 (greedy) of ``ref`` on a benchmark (HumanEval), k/n with the Wilson 95% interval.

    ``complete(problems) -> completions`` replaces the model (tests: canonical solutions score 164/164).
    """
    from llora_cli import humaneval

    if benchmark not in BENCHMARKS:
        raise BadInput(f"unknown --benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    if prompt_style not in PROMPT_STYLES:
        raise BadInput(f"unknown --prompt-style {prompt_style!r}; choose from {', '.join(PROMPT_STYLES)}")
    if limit is not None and limit < 1:
        raise BadInput("--limit must be at least 1")
    art = store.resolve(ref)
    base_dir, adapter_dir, quant = model_source(store, art)
    problems = humaneval.load_problems(limit)
    max_new_tokens = max_new_tokens or HUMANEVAL_MAX_NEW_TOKENS
    start = time.perf_counter()
    load = {}
    if complete is None:
        from llora_cli.loading import load_model

        tokenizer, model, plan = load_model(base_dir, adapter_dir, quant)
        load = {"strategy": plan.strategy, "dtype": plan.dtype, "device": plan.device}
        complete = humaneval_completer(tokenizer, model, prompt_style=prompt_style, max_new_tokens=max_new_tokens)
    run = humaneval.run(problems, complete, workers=humaneval.cpu_workers())
    report = EvalReport(
        artifact={"id": art.id, "name": art.name, "kind": art.kind},
        dataset={"id": None, "name": benchmark, "task": "code", **humaneval.data_version()},
        split=benchmark, n=len(problems), loss=None, perplexity=None, load=load, task=benchmark,
    )
    report.score(run.verdicts)
    report.extra = {"benchmark": {"name": benchmark, "metric": "pass@1", "decoding": "greedy",
                                  "prompt_style": prompt_style, "max_new_tokens": max_new_tokens,
                                  "problems": len(problems), "timeout_s": humaneval.TIMEOUT}}
    report.outputs = [{"row": i, "prompt": r.task_id, "output": r.completion, "correct": r.passed, "error": r.error}
                      for i, r in enumerate(run.results)]
    report.samples = [{k: o[k] for k in ("prompt", "output", "correct", "error")} for o in report.outputs[:3]]
    report.seconds = round(time.perf_counter() - start, 2)
    if record:
        store.record_evaluation(art.id, report.metrics(), dataset_id=None, split=benchmark)
    return report


def compare(store: Store, ref_a: str, ref_b: str, *, data_ref: str | None = None, benchmark: str | None = None,
            task: str | None = None, limit: int | None = None, split: str = "test", record: bool = True,
            command: str = "", **kw) -> CompareReport:
    """A and B scored on the same rows (or benchmark problems): both accuracies, A - B and the exact
    McNemar p-value. Each artifact gets its own evaluation; A's also holds the comparison."""
    for ref in (ref_a, ref_b):  # refuse a bad reference before any model is loaded
        model_source(store, store.resolve(ref))
    if store.resolve(ref_a).id == store.resolve(ref_b).id:
        raise BadInput("--against names the artifact being evaluated; compare two different artifacts")
    if benchmark is None and task is None and not _is_task_data(store, data_ref):
        raise BadInput(f"--against compares accuracies; '{data_ref}' is not task data, so give --task "
                       "(exact, contains, regex:PATTERN, reasoning, code, automation, instruct)")
    if benchmark is not None:
        a, b = (evaluate_benchmark(store, r, benchmark, limit=limit, record=False, **kw) for r in (ref_a, ref_b))
    else:
        a = evaluate(store, ref_a, data_ref, limit=limit, split=split, record=False, command=command, task=task, **kw)
        b = evaluate(store, ref_b, data_ref, limit=limit, split=split, record=False, command=command, task=task, **kw)
    report = CompareReport(a, b, Paired.of(a.verdicts, b.verdicts))
    if record:
        a.extra = {**a.extra, "comparison": report.comparison()}
        for r in (a, b):
            store.record_evaluation(r.artifact["id"], r.metrics(), dataset_id=r.dataset.get("id"), split=r.split)
    return report


def _is_task_data(store: Store, data_ref: str) -> bool:
    if Path(data_ref).expanduser().exists():
        return False  # user files carry no task kind
    return store.resolve(data_ref, kinds=("dataset",)).meta.get("task") in checkers.TASK_CHECKERS
