"""Training-run summaries: outcome, config and per-step metrics (metrics.jsonl) of a run."""

from __future__ import annotations

import json
from pathlib import Path

from llora_store import Store
from llora_store.errors import BadInput

BLOCKS = " ▁▂▃▄▅▆▇█"


def run_summary(store: Store, ref: str) -> dict:
    art = store.resolve(ref, kinds=("adapter", "modifier"))
    metrics: list[dict] = []
    for candidate in (store.layout.artifact_dir(art.id) / "metrics.jsonl", store.home / "runs" / art.id / "metrics.jsonl"):
        if candidate.exists():
            metrics = [json.loads(line) for line in candidate.read_text().splitlines() if line.strip()]
            break
    return {"id": art.id, "name": art.name, "kind": art.kind, "state": art.state, "domain": art.domain,
            "config": art.meta.get("config"), "training": art.meta.get("training"), "metrics": metrics}


def loss_chart(losses: list[float], *, width: int = 60, height: int = 8) -> str:
    """A terminal chart of the loss: ``height`` rows of block characters, ``width`` columns."""
    if not losses:
        return ""
    step = max(1, len(losses) // width + (len(losses) % width > 0))
    cols = [sum(losses[i: i + step]) / len(losses[i: i + step]) for i in range(0, len(losses), step)]
    lo, hi = min(cols), max(cols)
    span = (hi - lo) or 1.0
    levels = [round((c - lo) / span * (height * 8 - 1)) for c in cols]
    rows = []
    for r in range(height - 1, -1, -1):
        line = "".join(BLOCKS[max(0, min(8, lv - r * 8 + 1))] if lv >= r * 8 else " " for lv in levels)
        label = f"{hi:8.4f} ┤" if r == height - 1 else (f"{lo:8.4f} ┤" if r == 0 else "         │")
        rows.append(label + line)
    rows.append(f"          steps 1..{len(losses)} (loss)")
    return "\n".join(rows)


def write_plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInput("--plot needs matplotlib", hint="pip install matplotlib") from None
    steps = [m["step"] for m in summary["metrics"]]
    losses = [m["loss"] for m in summary["metrics"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{summary['kind']} {summary['name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
