"""`llora eval`: loss, perplexity and checker accuracy of an artifact on a dataset."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, command_line, open_store, out, print_json


def eval_(
    ref: ArtifactRef,
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset id/name or a data file.")],
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N rows.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Evaluate a base, merged, compressed, adapter or modifier; the result is stored on the artifact.

    Uses the dataset's held-out split when it has one. Task data (code, reasoning,
    automation, instruct) also gets accuracy by its checker.

    Example: llora eval code-modifier --data code-n400-s0 --limit 40
    """
    from llora_cli.evaluate import evaluate

    report = evaluate(open_store(), ref, data, limit=limit, command=command_line())
    if json_:
        print_json(report.to_json())
        return
    acc = f", accuracy {report.accuracy:.1%} ({report.correct}/{report.n})" if report.accuracy is not None else ""
    out().print(f"{report.artifact['kind']} '{report.artifact['name']}' on '{report.dataset['name']}' ({report.split}, "
                f"n={report.n}): loss {report.loss}, perplexity {report.perplexity}{acc}")
    load = report.load
    out().print(f"[dim]loaded {load['strategy']} ({load['dtype']}, {load['device']}) in {report.seconds} s[/]")
