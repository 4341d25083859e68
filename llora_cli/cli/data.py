"""`llora data`: generate task data with automatic checkers, registered as datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import JsonOpt, NameOpt, command_line, err, open_store, print_json

app = typer.Typer(help="Task data: make (generated, with checkers), add (your file, with a checker).",
                  no_args_is_help=True)


@app.command("make")
def make(
    kind: Annotated[str, typer.Argument(help="instruct, code, reasoning or automation (chat rows); intent "
                                             "(classification rows: a request and the tool it calls, or none).")],
    n: Annotated[int, typer.Option("--n", help="Training rows.")] = 200,
    n_test: Annotated[Optional[int], typer.Option("--n-test", help="Held-out rows (default max(20, n/10)).")] = None,
    seed: Annotated[int, typer.Option(help="Generator seed (same seed, same rows).")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Also write the training rows to this JSONL (held-out to *.test.jsonl).")] = None,
    all_families: Annotated[bool, typer.Option(
        "--all-families", help="Train on every family and phrasing, the held-out ones too; no held-out split "
                               "(--n-test must be 0): for a modifier you will run, evaluated on rows written apart.")] = False,
    name: NameOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Generate deterministic task data (chat JSONL; intent: text + label JSONL) with a held-out split and register
    it as a dataset.

    Example: llora data make reasoning --n 400 --seed 1
    Example: llora data make intent --n 440
    Example: llora data make automation --n 800 --all-families --n-test 0
    """
    from llora_cli.data import make_dataset

    store = open_store()
    art = make_dataset(store, kind, n, seed=seed, n_test=n_test, name=name, out=out, command=command_line(),
                       all_families=all_families)
    if json_:
        print_json(store.describe(art.id).to_json())
    else:
        rows = art.meta["rows"]
        labels = art.meta.get("labels")
        err().print(f"dataset '{art.name}' ({art.id}): {rows['train']} train + {rows['test']} held-out {kind} rows"
                    + (f", {len(labels)} labels: {', '.join(labels)}" if labels else ""))


@app.command("add")
def add(
    path: Annotated[Path, typer.Argument(
        help="A .jsonl (chat, text, or text + label for a classifier), .json (alpaca) or .txt data file.")],
    task: Annotated[Optional[str], typer.Option(
        "--task", "-t", help="Checker for its rows: reasoning, code, automation, exact, contains, regex:PATTERN.")] = None,
    held_out: Annotated[bool, typer.Option(
        "--held-out", help="Every row is held out (test split): evaluation only, never trained on.")] = False,
    name: NameOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Register your data file as a dataset, its rows checked for the checker's expected answers.

    With --task, `llora eval` and `llora router collect|eval` score its rows like generated task data.
    Example: llora data add tests/data/reasoning_handwritten.jsonl --task reasoning --held-out
    """
    from llora_cli.data import add_user_file

    store = open_store()
    art = add_user_file(store, path, task=task, held_out=held_out, name=name, command=command_line())
    if json_:
        print_json(store.describe(art.id).to_json())
    else:
        rows = art.meta["rows"]
        labels = art.meta.get("labels")
        err().print(f"dataset '{art.name}' ({art.id}): {rows['train']} train + {rows['test']} held-out rows"
                    + (f", checker {task}" if task else "") + (f", {len(labels)} labels: {', '.join(labels)}"
                                                               if labels else ""))
