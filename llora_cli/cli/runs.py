"""`llora runs`: training runs (adapters and modifiers) with their metrics and loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, err, open_store, out, print_json

app = typer.Typer(help="Training runs: show a run's summary and loss curve.", no_args_is_help=True)


@app.command("show")
def show(
    ref: ArtifactRef,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write the loss curve as a PNG.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Show a training run: config, outcome, per-step loss as a terminal chart.

    Example: llora runs show my-adapter --plot loss.png
    """
    from llora_cli.runs import loss_chart, run_summary, write_plot

    summary = run_summary(open_store(), ref)
    if plot is not None:
        write_plot(summary, plot)
        err().print(f"wrote {plot}")
    if json_:
        print_json(summary)
        return
    from rich.markup import escape

    out().print(f"[bold]{summary['kind']}[/] {escape(summary['name'])} ({summary['id']}) [{summary['state']}]")
    for k, v in (summary.get("training") or {}).items():
        out().print(f"  {k}: {v}")
    cfg = summary.get("config") or {}
    out().print("  config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    if summary["metrics"]:
        out().print(loss_chart([m["loss"] for m in summary["metrics"]]))
