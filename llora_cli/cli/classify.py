"""`llora classify`: label probabilities of texts with a classifier; accuracy, macro-F1, confusion on labelled rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, command_line, open_store, out, print_json


def classify(
    ref: ArtifactRef,
    texts: Annotated[Optional[list[str]], typer.Argument(metavar="[TEXT]...", help="Texts to classify.")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="A JSONL file of {\"text\"} or {\"text\", \"label\"} rows, or a classification dataset.")] = None,
    split: Annotated[str, typer.Option(help="Dataset split: test (held-out; the default) or train.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N rows.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = 32,
    plot: Annotated[Optional[Path], typer.Option(help="Write the confusion matrix (labelled rows) to this PNG.")] = None,
    outputs: Annotated[Optional[Path], typer.Option(
        help="Write every row's label and probabilities to this JSONL file.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Classify texts with a classifier (llora train --task classify): label and probabilities.

    Probabilities are a float32 softmax of the head's logits. On labelled rows (--data with a
    "label" on every row) it also prints accuracy with its 95% Wilson interval, macro-F1 and the
    confusion matrix (rows: true label, columns: predicted); --plot writes it as a PNG. A
    registered dataset's evaluation is stored on the classifier.

    Examples: llora classify intent-clf "turn off the lights in the kitchen";
    llora classify intent-clf --data intent-n440-s0 --plot confusion.png
    """
    from llora_store.errors import BadInput

    if texts and data is not None:
        raise BadInput("give texts or --data, not both")
    if split not in ("test", "train"):
        raise BadInput(f"--split must be test or train, got {split!r}")
    if limit is not None and limit < 1:
        raise BadInput("--limit must be at least 1")
    if batch_size < 1:
        raise BadInput("--batch-size must be at least 1")
    if outputs is not None and not outputs.expanduser().parent.is_dir():
        raise BadInput(f"--outputs {outputs}: directory {outputs.expanduser().parent} does not exist")
    if plot is not None:  # checked before anything is loaded or computed
        plot = plot.expanduser()
        if plot.suffix.lower() != ".png" or not plot.parent.is_dir():
            raise BadInput(f"--plot {plot}: give a .png path in an existing directory")
    from llora_cli.classify import run as lib

    store = open_store()
    report = lib.classify(store, ref, texts=list(texts or []), data_ref=data, split=split, limit=limit,
                          batch_size=batch_size, plot=plot, command=command_line())
    if outputs is not None:
        lib.write_predictions(outputs.expanduser(), report.predictions)
    if json_:
        print_json(report.to_json())
        return
    render(report, plot=plot, outputs=outputs)


def render(report, *, plot: Path | None = None, outputs: Path | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    if report.metrics is None or len(report.predictions) <= 10:
        for p in report.predictions:
            top = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:3]
            text = p.text if len(p.text) <= 70 else p.text[:67] + "..."
            rest = escape(", ".join(f"{k} {v:.3f}" for k, v in top[1:]))
            out().print(f"[bold]{escape(p.label)}[/] {top[0][1]:.3f}  [dim]({rest})[/]  {escape(text)}", highlight=False)
    m = report.metrics
    if m is not None:
        lo, hi = m["accuracy_ci95"]
        where = report.data.get("name") or report.data.get("path")
        split = f" ({report.data['split']})" if "split" in report.data else ""
        out().print(f"{report.artifact['kind']} '{report.artifact['name']}' on '{escape(str(where))}'{split}: accuracy "
                    f"{m['correct']}/{m['n']} = {m['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}), "
                    f"macro-F1 {m['macro_f1']:.3f}", highlight=False)
        table = Table(title="confusion: rows true label, columns predicted (by number)", title_justify="left")
        table.add_column("true")
        for i in range(len(report.labels)):
            table.add_column(str(i), justify="right")
        table.add_column("recall", justify="right")
        for i, (x, row) in enumerate(zip(report.labels, m["confusion"])):
            table.add_row(escape(f"{i} {x}"), *[str(v) if v else "[dim]·[/]" for v in row],
                          f"{m['per_label'][x]['recall']:.2f}")
        out().print(table)
    if plot is not None:
        out().print(f"[dim]  confusion matrix written to {escape(str(plot))}[/]")
    if outputs is not None:
        out().print(f"[dim]  {len(report.predictions)} rows written to {escape(str(outputs))}[/]")
    out().print(f"[dim]  {len(report.predictions)} rows in {report.timing['classify']} s "
                f"({report.rows_per_s} rows/s; loaded in {report.timing['load']} s)[/]")
