"""`llora train`: a training adapter or a runtime modifier as a catalog run.

The run is an artifact in ``training`` from the first second; the job writes
into ``$LLORA_HOME/runs/<id>/`` (checkpoints, metrics) and a staging dir; the
finished adapter is published atomically and the artifact moves to
``trained``. Any error or Ctrl-C moves it to ``failed`` with the reason; no
file of it is visible as usable until it is ``trained``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from llora_cli import modelfiles
from llora_cli.data import load_data, require_generative, write_jsonl
from llora_cli.trainconfig import TrainConfig, for_kind, memory_estimate, resolve_targets, trainable_parameters
from llora_store import Store
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput, InvalidTransition, UserError
from llora_store.files import pid_alive
from llora_store.models import Artifact

BASE_KINDS = ("base", "merged", "compressed")


@dataclass(frozen=True)
class TrainPlan:
    kind: str
    domain: str | None
    task: str  # "generate" (causal LM) or "classify" (sequence classification head)
    labels: list[str] | None  # classify: the label map, index i = class i
    base: dict
    dataset: dict
    rows: int
    config: dict
    target_modules: list[str]
    trainable_parameters: int
    memory_bytes: dict[str, int]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    artifact: Artifact
    outcome: dict

    def to_json(self) -> dict:
        a = self.artifact
        return {"id": a.id, "name": a.name, "kind": a.kind, "state": a.state, "domain": a.domain, **self.outcome}


def runs_dir(store: Store, run_id: str) -> Path:
    return store.home / "runs" / run_id


TASKS = ("generate", "classify")


def plan(store: Store, *, base_ref: str, data_ref: str, kind: str, domain: str | None,
         config: TrainConfig, command: str = "", task: str = "generate") -> tuple[TrainPlan, Artifact, object]:
    """Check everything a run needs before anything is created: kind/domain, base, targets, data.

    ``task``: ``generate`` (causal-LM LoRA on chat/text rows) or ``classify`` (LoRA plus a classification head on
    text + label rows: PEFT ``SEQ_CLS``, llora_cli/classify/). BadInput names what is wrong: an unknown task,
    classification data for a generative run or the reverse, a classifier on a base it cannot train (GGUF, quantized).
    """
    from llora_cli.adapters import check_kind_domain

    if task not in TASKS:
        raise BadInput(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    check_kind_domain(kind, domain)
    config = for_kind(config, kind)
    base = store.resolve(base_ref, kinds=BASE_KINDS)
    from llora_cli.classify import refuse_classifier

    refuse_classifier(base, "llora train", "train on the base it was made from")
    base_dir = store.path_of(base.id)
    if config.quantize != "none" and base.kind == "compressed":
        raise BadInput(f"'{base.name}' is already compressed ({base.quantization}); train on it as stored, "
                       "without --quantize")
    tensors = modelfiles.model_tensors(base_dir)
    targets = resolve_targets(config, tensors)
    data = load_data(store, data_ref, command=command)
    labels = None
    if task == "classify":
        from llora_cli.classify import check_trainable

        labels = check_trainable(data, base, config, store.path_of(base.id))
    else:
        require_generative(data, "llora train")
    for i, row in enumerate(data.train, 1):
        if "messages" in row and not any(m["role"] == "assistant" for m in row["messages"]):
            raise BadInput(f"dataset '{data.artifact.name}' row {i} has no assistant message to learn from "
                           "(a row with only an expected answer is for llora eval, not training)")
    arch = base.meta.get("architecture") or modelfiles.summarize_model(base_dir)
    p = TrainPlan(
        kind=kind, domain=domain, task=task, labels=labels,
        base={"id": base.id, "name": base.name, "kind": base.kind, "content_hash": base.content_hash},
        dataset={"id": data.artifact.id, "name": data.artifact.name, "task": data.task, "format": data.format},
        rows=len(data.train), config=config.model_dump(), target_modules=targets,
        trainable_parameters=trainable_parameters(config, tensors),
        memory_bytes=memory_estimate(config, tensors, arch),
    )
    return p, base, data


def train(store: Store, *, base_ref: str, data_ref: str, kind: str, config: TrainConfig, domain: str | None = None,
          name: str | None = None, command: str = "", progress: Callable[[dict], None] | None = None,
          launcher: str = "none", num_processes: int = 1, accelerate_config: Path | None = None,
          task: str = "generate") -> TrainResult:
    config = for_kind(config, kind)
    p, base, data = plan(store, base_ref=base_ref, data_ref=data_ref, kind=kind, domain=domain, config=config,
                         command=command, task=task)
    if launcher not in ("none", "accelerate"):
        raise BadInput(f"--launcher must be none or accelerate, got {launcher!r}")
    if launcher == "accelerate" and num_processes < 1:
        raise BadInput("--num-processes must be at least 1")
    if accelerate_config is not None and (launcher != "accelerate" or not Path(accelerate_config).is_file()):
        raise BadInput("--accelerate-config needs --launcher accelerate and an existing accelerate config file "
                       "(e.g. one written by `accelerate config` with FSDP)")
    if task == "generate":
        check_learnable(store.path_of(base.id), data.train, config.max_seq_len, data.artifact.name)
    aid = new_id()
    if name is None:
        stem = f"{domain}-{kind}" if domain else f"{kind}"
        name = store.unique_name(f"{stem}-{aid[:6]}")
    validate_name(name)
    quantization = config.quantize if config.quantize != "none" else base.quantization
    role = "runs_on" if kind == "modifier" else "trained_on"
    meta = {"config": config.model_dump(), "target_modules": p.target_modules, "launcher": launcher,
            **({"task": "classify", "labels": p.labels} if task == "classify" else {}),
            "num_processes": num_processes if launcher == "accelerate" else 1,
            "accelerate_config": str(Path(accelerate_config).resolve()) if accelerate_config else None,
            "run": {"host": socket.gethostname(), "pid": os.getpid()},
            "trained_on_quantized": quantization is not None,
            "quantized_training": {"method": config.quantize} if config.quantize != "none" else None}
    art = store.create(kind, name, state="training", parents=[(base.id, role), (data.artifact.id, "data")],
                       metadata=meta, base_hash=base.content_hash, quantization=quantization, domain=domain,
                       command=command, reason=f"training on {data.artifact.name}", artifact_id=aid)
    run_dir = runs_dir(store, aid)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(run_dir / "rows.jsonl", data.train)
    from llora_cli.trainjob import HELDOUT_ROWS, TrainSpec

    heldout = None
    if data.test:  # task data: its held-out split is scored during training (memorisation check)
        heldout = run_dir / "heldout.jsonl"
        write_jsonl(heldout, data.test[:HELDOUT_ROWS])
    spec = TrainSpec(base_dir=str(store.path_of(base.id)), rows_path=str(run_dir / "rows.jsonl"),
                     run_dir=str(run_dir), out_dir="", config=config.model_dump(), target_modules=p.target_modules,
                     heldout_path=str(heldout) if heldout else None, task=task, labels=p.labels)
    return _execute(store, art, spec, progress=progress, launcher=launcher, num_processes=num_processes,
                    command=command, accelerate_config=accelerate_config)


def check_learnable(base_dir: Path, rows: list[dict], max_seq_len: int, dataset: str) -> None:
    """Before a run is created: at least one training row keeps a token to learn (an assistant reply, or a text
    row's tokens) within ``max_seq_len`` tokens of ``base_dir``'s tokenizer. Stops at the first such row, so it
    costs one tokenizer load and a few encodings. Raises BadInput naming the longest row's length otherwise (the
    run would fail after its creation, and resuming it would fail the same way)."""
    from llora_cli.encoding import IGNORE, encode_row
    from llora_cli.loading import load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    longest = 0
    for row in rows:
        e = encode_row(tokenizer, row, sys.maxsize)
        if any(label != IGNORE for label in e["labels"][:max_seq_len]):
            return
        longest = max(longest, len(e["input_ids"]))
    raise BadInput(f"no row of dataset '{dataset}' has a token to learn after truncation to "
                   f"max_seq_len={max_seq_len} (the longest row has {longest} tokens); nothing was created",
                   hint=f"raise max_seq_len, e.g. max_seq_len={longest}")


def resume(store: Store, run_ref: str, *, command: str = "", progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Continue a failed (or killed) run from its last checkpoint."""
    from llora_cli.trainjob import TrainSpec

    art = store.resolve(run_ref, kinds=("adapter", "modifier"))
    run_dir = runs_dir(store, art.id)
    spec_path = run_dir / "spec.json"
    if not spec_path.exists():
        raise UserError(f"{art.kind} '{art.name}' ({art.id}) has no run directory to resume from",
                        hint="train it again with llora train")
    if art.state == "failed":
        store.apply(art.id, "resume", command=command, reason="resume from the last checkpoint")
    elif art.state == "training":
        run = art.meta.get("run", {})
        if run.get("host") == socket.gethostname() and pid_alive(run.get("pid")):
            raise InvalidTransition(f"run {art.id} is still training in process {run.get('pid')}", allowed=[])
    else:
        raise InvalidTransition(f"run {art.id} is '{art.state}'; only failed or interrupted runs resume",
                                allowed=["resume"] if art.state == "failed" else [])
    store.update_metadata(art.id, {"run": {"host": socket.gethostname(), "pid": os.getpid()}})
    spec = TrainSpec.load(spec_path)
    spec.resume = True
    acc_cfg = art.meta.get("accelerate_config")
    return _execute(store, store.get(art.id), spec, progress=progress, launcher=art.meta.get("launcher", "none"),
                    num_processes=art.meta.get("num_processes", 1), command=command,
                    accelerate_config=Path(acc_cfg) if acc_cfg else None)


def _execute(store: Store, art: Artifact, spec, *, progress, launcher: str, num_processes: int, command: str,
             accelerate_config: Path | None = None) -> TrainResult:
    from llora_cli.trainjob import METRICS, TrainJob

    run_dir = Path(spec.run_dir)
    staging = store.new_staging(art.id)
    spec.out_dir = str(staging / "adapter")
    spec.save(run_dir / "spec.json")
    try:
        if launcher == "accelerate":
            outcome = _launch_accelerate(run_dir / "spec.json", num_processes, accelerate_config)
        else:
            job = TrainJob(spec, progress=progress)
            job.setup()
            outcome = asdict(job.run())
            job.save()
        adapter_dir = Path(spec.out_dir)
        for f in adapter_dir.iterdir():
            shutil.move(str(f), staging / f.name)
        adapter_dir.rmdir()
        if (run_dir / METRICS).exists():
            shutil.copyfile(run_dir / METRICS, staging / METRICS)
        done = store.finish(art.id, staging, metadata={"training": outcome}, command=command,
                            reason=f"{outcome['steps']} steps, final loss {outcome['final_loss']}")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return TrainResult(done, outcome)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        try:
            store.apply(art.id, "fail", command=command, reason=reason[:1000])
        except InvalidTransition:
            pass
        if isinstance(exc, (KeyboardInterrupt, UserError)):
            raise
        raise UserError(f"training run {art.id} failed: {reason}",
                        hint=f"fix the cause, then resume from the last checkpoint: llora train --resume {art.id}") from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_accelerate(spec_path: Path, num_processes: int, config_file: Path | None = None) -> dict:
    """One process per rank through ``accelerate launch``: DDP (gloo on CPU), or what ``config_file`` says (FSDP)."""
    if config_file is not None:
        flags = ["--config_file", str(config_file), "--num_processes", str(num_processes)]
    else:
        # --multi_gpu also selects multi-process DDP on CPU; `--cpu --num_processes N` silently runs one process
        flags = ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no"]
    if config_file is None:
        flags += ["--main_process_port", str(_free_port())]  # never collide with another job's rendezvous
    # torchrun's elastic restart: a rank that dies (seen once here: SIGABRT of rank 1 at start-up on CPU/gloo)
    # restarts the worker group once (from the last checkpoint, if one was written) instead of failing the run
    flags += ["--max_restarts", "1"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", "llora_cli.trainjob", str(spec_path)]
    (spec_path.parent / "outcome.json").unlink(missing_ok=True)  # written by rank 0 only once the adapter is saved
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = spec_path.parent / "launch.log"
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "Error" in ln or "error" in ln]
        tail = "\n".join(lines[-6:] or (proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise UserError(f"accelerate launch exited with {proc.returncode}:\n{tail}\nfull log: {log}")
    outcome_path = spec_path.parent / "outcome.json"
    outcome = json.loads(outcome_path.read_text())
    outcome["num_processes"] = num_processes
    return outcome
