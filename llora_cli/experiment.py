"""`llora experiment FILE.yaml`: a grid of training runs on one dataset, each evaluated on its held-out split.

Every combination is validated before the first run trains; each run is an
ordinary catalog artifact (adapter or modifier) tagged with the experiment.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llora_cli.trainconfig import TrainConfig, format_errors
from llora_store import Store
from llora_store.errors import BadInput


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$")
    base: str
    data: str
    kind: Literal["adapter", "modifier"] = "adapter"
    domain: str | None = None
    metric: Literal["accuracy", "loss"] | None = None
    limit: int | None = Field(None, ge=1)
    config: dict[str, Any] = {}
    grid: dict[str, list[Any]] = Field(min_length=1)


@dataclass
class ExperimentRow:
    params: dict
    run_id: str
    name: str
    loss: float | None
    accuracy: float | None
    tokens_per_s: float
    steps: int


def load_spec(path: Path) -> tuple[ExperimentSpec, list[TrainConfig]]:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{path} is not valid YAML: {e}") from None
    try:
        spec = ExperimentSpec(**(raw or {}))
    except (ValidationError, TypeError) as e:
        msg = format_errors(e) if isinstance(e, ValidationError) else str(e)
        raise BadInput(f"invalid experiment {path}: {msg}") from None
    keys = list(spec.grid)
    configs = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        params = dict(zip(keys, values))
        try:
            configs.append(TrainConfig(**{**spec.config, **params}))
        except ValidationError as e:
            raise BadInput(f"invalid experiment {path}: grid point {params}: {format_errors(e)}") from None
    return spec, configs


def run_experiment(store: Store, path: Path, *, command: str = "",
                   on_run: Callable[[int, int, dict], None] | None = None) -> tuple[ExperimentSpec, list[ExperimentRow]]:
    from llora_cli.evaluate import evaluate
    from llora_cli.train import train

    spec, configs = load_spec(path)
    keys = list(spec.grid)
    rows = []
    for i, cfg in enumerate(configs):
        params = {k: getattr(cfg, k) for k in keys}
        if on_run:
            on_run(i + 1, len(configs), params)
        res = train(store, base_ref=spec.base, data_ref=spec.data, kind=spec.kind, domain=spec.domain, config=cfg,
                    name=f"{spec.name}-{i + 1}", command=command)
        store.update_metadata(res.artifact.id, {"experiment": {"name": spec.name, "params": params}})
        report = evaluate(store, res.artifact.id, spec.data, limit=spec.limit, command=command)
        rows.append(ExperimentRow(params, res.artifact.id, res.artifact.name, report.loss, report.accuracy,
                                  res.outcome["tokens_per_s"], res.outcome["steps"]))
    metric = spec.metric or ("accuracy" if rows and rows[0].accuracy is not None else "loss")
    if metric == "accuracy":
        rows.sort(key=lambda r: (-(r.accuracy or 0.0), r.loss if r.loss is not None else float("inf")))
    else:
        rows.sort(key=lambda r: r.loss if r.loss is not None else float("inf"))
    spec.metric = metric
    return spec, rows
