"""Training configuration: validated (pydantic) before any model loads, plus the dry-run estimates.

Nothing here imports torch: ``llora train --dry-run`` answers from the base's
safetensors headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llora_cli import modelfiles
from llora_store.errors import BadInput


class TrainConfig(BaseModel):
    """Every training knob; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(16, gt=0, le=1024, description="LoRA rank")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = Field(0.05, ge=0, lt=1)
    dora: bool = False
    rslora: bool = False
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(4, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=4096)
    max_seq_len: int = Field(256, ge=8, le=131072)
    group_by_length: bool = Field(False, description="batch rows of similar length together (transformers' "
                                  "LengthGroupedSampler: less padding, a less random order)")
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (for --resume)")
    quantize: Literal["none", "nf4", "int8"] = "none"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.dora and self.quantize == "int8":
            raise ValueError("dora with quantize=int8 is not supported by PEFT; use nf4 or none")
        return self


# `llora train --kind modifier` starts from these instead of the general defaults above; a key the user sets
# (config file or KEY=VALUE) wins. Sized for SmolLM2-135M Q8_0 on a 2-core CPU (docs/benchmarks.md,
# benchmarks/domain_accuracy.py): 100 steps of 8 rows of generated task data was 83k (reasoning) and 102k
# (automation) padded tokens: 7-8.5 min at 200 tokens/s, 10.5-13 min at 131 tokens/s. A small model on a small budget needs
# a high learning rate (1e-3, cosine decay after 5% warm-up); rank 16 on every linear projection. max_steps
# bounds the time whatever the size of the data (with fewer rows, rows are seen more than once).
MODIFIER_DEFAULTS: dict = {"r": 16, "alpha": 32.0, "learning_rate": 1e-3, "lr_scheduler": "cosine",
                           "warmup_ratio": 0.05, "batch_size": 8, "max_steps": 100, "max_seq_len": 256}


def for_kind(config: TrainConfig, kind: str) -> TrainConfig:
    """The effective config of a run of ``kind``: a modifier takes MODIFIER_DEFAULTS for every key the user left
    unset (``epochs`` set by the user also keeps the default step cap away); an adapter keeps ``config``."""
    if kind != "modifier":
        return config
    given = config.model_dump(include=config.model_fields_set)
    defaults = {k: v for k, v in MODIFIER_DEFAULTS.items() if not (k == "max_steps" and "epochs" in given)}
    return TrainConfig(**{**defaults, **given})


def format_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            parts.append(f"'{key}': {err['msg']}{got}")
    return "; ".join(parts)


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` strings -> dict; values are parsed as YAML scalars (``r=8``, ``dora=true``)."""
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadInput(f"expected key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        if not key:
            raise BadInput(f"empty key in {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if key == "target_modules" and isinstance(value, str) and value != "all-linear":
            value = [v.strip() for v in value.split(",") if v.strip()]
        out[key] = value
    return out


def load_config(path: Path | None, overrides: list[str]) -> TrainConfig:
    """Config file (YAML) merged with key=value overrides, validated; BadInput names each bad key."""
    import yaml

    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise BadInput(f"cannot read config {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise BadInput(f"{path} is not UTF-8 text: {e}") from None
        except yaml.YAMLError as e:
            raise BadInput(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise BadInput(f"{path}: the config must be a mapping of keys to values")
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise BadInput(f"{path}: config keys are names, got {', '.join(repr(k) for k in bad[:3])}")
    data.update(parse_overrides(overrides))
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        raise BadInput(f"invalid training config: {format_errors(e)}") from None


def linear_modules(tensors: dict[str, modelfiles.TensorInfo]) -> dict[str, tuple[int, int]]:
    """Decoder-layer linear projections: full module name -> (out, in), from 2-D ``.weight`` tensors."""
    out = {}
    for name, t in tensors.items():
        if ".layers." in name and name.endswith(".weight") and len(t.shape) == 2:
            out[name[: -len(".weight")]] = (t.shape[0], t.shape[1])
    return out


def resolve_targets(config: TrainConfig, tensors: dict[str, modelfiles.TensorInfo]) -> list[str]:
    """Short module names to adapt ("q_proj", ...); 'all-linear' means every projection of the layers."""
    available = sorted({m.rsplit(".", 1)[-1] for m in linear_modules(tensors)})
    if config.target_modules == "all-linear":
        return available
    unknown = [m for m in config.target_modules if m not in available]
    if unknown:
        raise BadInput(f"target_modules {unknown} are not linear projections of this base; it has: {', '.join(available)}")
    return list(config.target_modules)


def trainable_parameters(config: TrainConfig, tensors: dict[str, modelfiles.TensorInfo]) -> int:
    targets = set(resolve_targets(config, tensors))
    total = 0
    for name, (fan_out, fan_in) in linear_modules(tensors).items():
        if name.rsplit(".", 1)[-1] in targets:
            total += config.r * (fan_in + fan_out) + (fan_out if config.dora else 0)
    return total


def memory_estimate(config: TrainConfig, tensors: dict[str, modelfiles.TensorInfo], arch: dict) -> dict[str, int]:
    """Rough peak training memory in bytes: weights + LoRA states (AdamW) + activations + logits."""
    n_params = 0
    for t in tensors.values():
        n = 1
        for d in t.shape:
            n *= d
        n_params += n
    per_weight = {"none": 4.0, "nf4": 0.56, "int8": 1.06}[config.quantize]
    weights = int(n_params * per_weight)
    lora = trainable_parameters(config, tensors) * 4 * 4  # param, grad, adam m and v in fp32
    hidden = arch.get("hidden_size") or 0
    layers = arch.get("num_hidden_layers") or 0
    vocab = arch.get("vocab_size") or 0
    tokens = config.batch_size * config.max_seq_len
    per_layer = 4 * hidden * 2 if config.gradient_checkpointing else 4 * hidden * 18
    activations = tokens * layers * per_layer
    logits = tokens * vocab * 4 * 3
    return {"weights": weights, "lora_and_optimizer": lora, "activations": activations, "logits": logits,
            "total": weights + lora + activations + logits}
