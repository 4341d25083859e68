"""`llora train`: train a training adapter or a runtime modifier (PEFT), recorded as a catalog run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import JsonOpt, NameOpt, command_line, err, human_bytes, open_store, out, print_json


def train(
    overrides: Annotated[
        Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...", help="Config overrides, e.g. r=8 dora=true max_steps=100.")
    ] = None,
    base: Annotated[Optional[str], typer.Option("--base", "-b", help="Base, merged or compressed artifact to train on.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Dataset id/name, or a .jsonl/.json/.txt file.")] = None,
    kind: Annotated[
        str, typer.Option("--kind", "-k", help="adapter (temporary, merged later) or modifier (served on its base).")
    ] = "adapter",
    domain: Annotated[Optional[str], typer.Option(help="Domain of a modifier (code, reasoning, automation, ...).")] = None,
    task: Annotated[
        str, typer.Option("--task", "-t", help="generate (causal LM) or classify (LoRA plus a classification head; "
                                               "text + label rows).")
    ] = "generate",
    name: NameOpt = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file with config keys.")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="Train on a bitsandbytes-quantized base: nf4 or int8 (QLoRA).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (CUDA -> MPS -> CPU), cpu, cuda, mps.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; train nothing.")] = False,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Resume a failed or interrupted run from its last checkpoint.")] = None,
    launcher: Annotated[str, typer.Option(help="none, or accelerate (one process per rank: DDP).")] = "none",
    num_processes: Annotated[int, typer.Option("--num-processes", help="Processes for --launcher accelerate.")] = 2,
    accelerate_config: Annotated[
        Optional[Path], typer.Option("--accelerate-config", help="accelerate config file (e.g. FSDP) for --launcher accelerate.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Train a LoRA / DoRA / rsLoRA adapter or modifier with PEFT; the run is a catalog artifact.

    Config keys (file or KEY=VALUE): r, alpha, dropout, dora, rslora, target_modules,
    learning_rate, lr_scheduler, warmup_ratio, weight_decay, epochs, max_steps,
    batch_size, grad_accum, max_seq_len, gradient_checkpointing, seed, save_steps,
    quantize, device.

    A modifier starts from defaults sized for a few minutes on a CPU: r=16, alpha=32,
    learning_rate=1e-3 (cosine, 5% warm-up), batch_size=8, max_steps=100,
    max_seq_len=256 (a key you set wins; setting epochs drops the step cap).
    With task data, held-out rows are scored during training and a warning says
    when the training loss is near zero while held-out accuracy is flat.

    --task classify trains a classifier: LoRA plus a classification head (PEFT
    SEQ_CLS, the head saved whole with the adapter) on text + label rows; the
    label map is recorded. Use it with llora classify.

    Example: llora train --base smollm2 --data code-n400-s0 --kind modifier --domain code max_steps=60
    """
    from llora_cli import train as lib
    from llora_cli.trainconfig import load_config
    from llora_store.errors import UsageError

    store = open_store()
    if resume:
        result = _with_progress(lambda cb: lib.resume(store, resume, command=command_line(), progress=cb), json_)
        _report(result, json_)
        return
    if not base or not data:
        raise UsageError("llora train needs --base and --data (or --resume RUN_ID)")
    extra = list(overrides or [])
    if quantize:
        extra.append(f"quantize={quantize}")
    if device:
        extra.append(f"device={device}")
    cfg = load_config(config, extra)
    if dry_run:
        p, _, _ = lib.plan(store, base_ref=base, data_ref=data, kind=kind, domain=domain, config=cfg, command=command_line(),
                           task=task)
        if json_:
            print_json(p.to_json())
            return
        out().print(f"[bold]{p.kind}[/] on {p.base['kind']} '{p.base['name']}' with {p.rows} rows of '{p.dataset['name']}'")
        if p.task == "classify":
            out().print(f"  classifier: {len(p.labels)} labels ({', '.join(p.labels)})", highlight=False)
        for k, v in p.config.items():
            out().print(f"  {k}: {v}")
        out().print(f"  target modules: {', '.join(p.target_modules)}")
        out().print(f"  trainable parameters: {p.trainable_parameters:,}")
        out().print(f"  memory estimate: {human_bytes(p.memory_bytes['total'])} "
                    f"(weights {human_bytes(p.memory_bytes['weights'])}, "
                    f"activations {human_bytes(p.memory_bytes['activations'])}, logits {human_bytes(p.memory_bytes['logits'])})")
        err().print("dry run: nothing was trained")
        return
    result = _with_progress(
        lambda cb: lib.train(store, base_ref=base, data_ref=data, kind=kind, config=cfg, domain=domain, name=name,
                             command=command_line(), progress=cb, launcher=launcher, num_processes=num_processes,
                             accelerate_config=accelerate_config, task=task),
        json_,
    )
    _report(result, json_)


def _with_progress(fn, quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"), TimeRemainingColumn()]
    with Progress(*columns, console=err(), transient=False, disable=False) as bar:
        task = bar.add_task("train", total=None, loss="-", rate="-")

        def cb(rec: dict) -> None:
            bar.update(task, completed=rec["step"], total=rec["max_steps"], loss=f"{rec['loss']:.4f}",
                       rate=f"{rec['tokens_per_s']:.0f}")

        return fn(cb)


def _report(result, json_: bool) -> None:
    o = result.outcome
    for key in ("truncation", "memorisation"):  # on stderr in both modes: --json consumers get it in the outcome
        if o.get(key):
            err().print(f"[yellow]warning:[/] {o[key]}", highlight=False)
    if json_:
        print_json(result.to_json())
        return
    err().print(f"trained {result.artifact.kind} '{result.artifact.name}' ({result.artifact.id}): {o['steps']} steps, "
                f"final loss {o['final_loss']:.4f}, {o['tokens_per_s']:.0f} tokens/s on {o['device']} ({o['precision']})")
