"""`llora eval`: loss, perplexity and checker accuracy of an artifact on a dataset, paired comparisons, HumanEval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, command_line, open_store, out, print_json


def eval_(
    ref: ArtifactRef,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Dataset id/name or a data file.")] = None,
    task: Annotated[Optional[str], typer.Option(
        "--task", "-t", help="Checker: exact, contains, regex:PATTERN, reasoning, code, automation, instruct "
                             "(default: the dataset's task kind, if any).")] = None,
    benchmark: Annotated[Optional[str], typer.Option(help="A built-in benchmark instead of --data: humaneval.")] = None,
    against: Annotated[Optional[str], typer.Option(
        help="A second artifact scored on the same rows: both accuracies, the difference, exact McNemar p.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N rows / problems.")] = None,
    prompt_style: Annotated[str, typer.Option(help="HumanEval prompt: chat (template + instruction) or raw "
                                                   "(continue the prompt text).")] = "chat",
    max_new_tokens: Annotated[Optional[int], typer.Option(
        help="Generation length (default per task; 384 for HumanEval).")] = None,
    calculator: Annotated[bool, typer.Option(
        "--calculator", help="Compute the result of each arithmetic step the model writes ('a op b =') instead of "
        "generating it (Cobbe et al. 2021); reported with the accuracy. Needs a checker (--task or task data) and a "
        "tokenizer that writes one digit per token (SmolLM2's does).")] = False,
    outputs: Annotated[Optional[str], typer.Option(
        help="Write every scored row (prompt, expected, reply, verdict) to this JSONL file.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Evaluate a base, merged, compressed, adapter or modifier; the result is stored on the artifact.

    Uses the dataset's held-out split when it has one. With a checker (--task, or task data) every
    row's greedy reply is scored: accuracy is printed as k/n with its 95% Wilson interval. A user
    row's expected answer is its "answer" key, else its final assistant reply / alpaca output.

    Examples: llora eval code-modifier --data code-n400-s0 --limit 40;
    llora eval my-adapter --data qa.jsonl --task exact --against smollm2;
    llora eval smollm2 --benchmark humaneval --limit 20;
    llora eval automation-modifier --data hand.jsonl --task automation --outputs replies.jsonl
    """
    from llora_store.errors import BadInput

    if (data is None) == (benchmark is None):
        raise BadInput("give either --data FILE_OR_DATASET or --benchmark humaneval")
    if benchmark is not None and task is not None:
        raise BadInput("--task applies to --data; a benchmark has its own checker")
    if outputs is not None and not Path(outputs).expanduser().parent.is_dir():
        raise BadInput(f"--outputs {outputs}: directory {Path(outputs).expanduser().parent} does not exist")
    if calculator and benchmark is not None:
        raise BadInput("--calculator applies to --data (arithmetic replies); a benchmark is scored as generated")
    from llora_cli import evaluate as ev

    store = open_store()
    gen = {"max_new_tokens": max_new_tokens, **({"calculator": True} if calculator else {})}
    if benchmark is not None:
        gen["prompt_style"] = prompt_style
    if against is not None:
        cmp = ev.compare(store, ref, against, data_ref=data, benchmark=benchmark, task=task, limit=limit,
                         command=command_line(), **gen)
        if outputs is not None:
            _write_outputs(ev, outputs, [cmp.a, cmp.b], json_)
        if json_:
            print_json(cmp.to_json())
            return
        for r in (cmp.a, cmp.b):
            render(r)
        p = cmp.paired
        out().print(f"difference (A - B) {p.difference * 100:+.1f} points; discordant rows: {p.only_a} only A right, "
                    f"{p.only_b} only B right; exact McNemar p = {p.p_value:.4g}")
        return
    if benchmark is not None:
        report = ev.evaluate_benchmark(store, ref, benchmark, limit=limit, **gen)
    else:
        report = ev.evaluate(store, ref, data, limit=limit, task=task, command=command_line(), **gen)
    if outputs is not None:
        _write_outputs(ev, outputs, [report], json_)
    if json_:
        print_json(report.to_json())
        return
    render(report)


def _write_outputs(ev, path: str, reports: list, json_: bool) -> None:
    n = ev.write_outputs(path, reports)
    if not json_:
        out().print(f"[dim]  {n} scored rows written to {path}[/]")


def render(report) -> None:
    where = f"{report.artifact['kind']} '{report.artifact['name']}' on '{report.dataset['name']}'"
    if report.loss is not None:
        out().print(f"{where} ({report.split}, n={report.n}): loss {report.loss}, perplexity {report.perplexity}")
    else:
        out().print(f"{where} (n={report.n})")
    if report.accuracy_text:
        label = "pass@1 (greedy)" if report.extra.get("benchmark") else f"accuracy ({report.task})"
        calc = report.extra.get("calculator")
        if calc is not None:
            label += f", calculator: {calc['forced_tokens']} tokens computed"
        out().print(f"  {label}: {report.accuracy_text}")
    load = report.load
    loaded = f"loaded {load['strategy']} ({load['dtype']}, {load['device']}) in " if load else ""
    out().print(f"[dim]  {loaded}{report.seconds} s[/]")
