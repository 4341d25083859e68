"""`llora experiment`: a grid of training runs, evaluated and ranked."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from llora_cli.cli.options import JsonOpt, command_line, err, open_store, out, print_json


def experiment(
    path: Annotated[Path, typer.Argument(metavar="FILE.yaml", help="Experiment: name, base, data, kind, config, grid.")],
    json_: JsonOpt = False,
) -> None:
    """Train every grid point (e.g. r x alpha x learning_rate x dora) and rank them on the held-out split.

    Example FILE.yaml:
      name: code-sweep
      base: smollm2
      data: code-n320-s0
      kind: modifier
      domain: code
      limit: 40
      config: {max_steps: 30}
      grid: {r: [8, 16], learning_rate: [0.0002, 0.001]}

    Example: llora experiment sweep.yaml
    """
    from llora_cli.experiment import run_experiment

    spec, rows = run_experiment(open_store(), path, command=command_line(),
                                on_run=lambda i, n, p: err().print(f"run {i}/{n}: {p}"))
    if json_:
        print_json({"name": spec.name, "metric": spec.metric, "runs": [asdict(r) for r in rows]})
        return
    from rich.table import Table

    table = Table(title=f"experiment {spec.name} (sorted by {spec.metric})", title_justify="left")
    keys = list(spec.grid)
    for col in ("rank", *keys, "accuracy", "loss", "tok/s", "run"):
        table.add_column(col)
    for i, r in enumerate(rows, 1):
        acc = f"{r.accuracy:.1%}" if r.accuracy is not None else "-"
        table.add_row(str(i), *(str(r.params[k]) for k in keys), acc, f"{r.loss:.4f}" if r.loss is not None else "-",
                      f"{r.tokens_per_s:.0f}", f"{r.name} ({r.run_id})")
    out().print(table)
