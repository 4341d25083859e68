"""Importing existing PEFT LoRA adapter directories as training adapters.

The adapter's tensors are checked against the base's safetensors headers
(module exists, shapes fit) without loading any weights.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from llora_cli import modelfiles
from llora_store import Store
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput
from llora_store.models import Artifact

QUANTIZATIONS = ("none", "nf4", "int8")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)"
    r"\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.[^.]+)?(?:\.weight)?$"
)


def read_adapter(peft_dir: Path) -> tuple[dict, dict[str, modelfiles.TensorInfo]]:
    if not peft_dir.is_dir():
        raise BadInput(f"{peft_dir} is not a directory")
    cfg_path = peft_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise BadInput(f"{peft_dir} is not a PEFT adapter directory: it has no adapter_config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{cfg_path} is not valid JSON: {e}") from None
    if config.get("peft_type") != "LORA":
        raise BadInput(f"{peft_dir} holds a {config.get('peft_type')} adapter; llora handles LoRA (incl. DoRA, rsLoRA)")
    weights = peft_dir / "adapter_model.safetensors"
    if not weights.is_file():
        hint = "re-save it with save_pretrained(safe_serialization=True)" if (peft_dir / "adapter_model.bin").exists() else None
        raise BadInput(f"{peft_dir} has no adapter_model.safetensors", hint=hint)
    return config, modelfiles.read_safetensors_header(weights)


def check_fits(config: dict, tensors: dict[str, modelfiles.TensorInfo], base_tensors: dict[str, modelfiles.TensorInfo]) -> dict:
    """Every LoRA module must exist in the base with matching shapes; returns a summary."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, info in tensors.items():
        m = _LORA_KEY.match(key)
        if not m:
            continue
        modules.setdefault(m["module"], {})[m["part"]] = info.shape
    if not modules:
        raise BadInput("the adapter has no LoRA tensors (lora_A / lora_B)")
    problems = []
    ranks = set()
    for module, parts in sorted(modules.items()):
        base = base_tensors.get(f"{module}.weight")
        if base is None:
            problems.append(f"{module}: no such module in the base")
            continue
        if "lora_A" in parts and "lora_B" in parts:
            (r, fan_in), (fan_out, r2) = parts["lora_A"][:2], parts["lora_B"][:2]
            if r != r2:
                problems.append(f"{module}: lora_A rank {r} != lora_B rank {r2}")
            if (fan_out, fan_in) != tuple(base.shape[:2]):
                problems.append(f"{module}: adapter expects weight {fan_out}x{fan_in}, base has {'x'.join(map(str, base.shape))}")
            ranks.add(r)
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            (r, n_emb), (dim, _) = parts["lora_embedding_A"], parts["lora_embedding_B"]
            if (n_emb, dim) != tuple(base.shape):
                problems.append(f"{module}: adapter expects embedding {n_emb}x{dim}, base has {'x'.join(map(str, base.shape))}")
            ranks.add(r)
        else:
            problems.append(f"{module}: incomplete LoRA pair ({', '.join(sorted(parts))})")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BadInput(f"the adapter does not fit the base: {shown}")
    short = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return {
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_dora": bool(config.get("use_dora")),
        "use_rslora": bool(config.get("use_rslora")),
        "target_modules": short,
        "modules": len(modules),
        "ranks": sorted(ranks),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }


def import_adapter(store: Store, peft_dir: Path, base_ref: str, *, name: str | None = None,
                   quantization: str = "none", command: str = "") -> Artifact:
    """Register a PEFT LoRA directory as a ``trained`` training adapter on ``base_ref``."""
    if quantization not in QUANTIZATIONS:
        raise BadInput(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    peft_dir = peft_dir.expanduser()
    config, tensors = read_adapter(peft_dir)
    base = store.resolve(base_ref, kinds=("base", "merged", "compressed"))
    base_dir = store.path_of(base.id)
    summary = check_fits(config, tensors, modelfiles.model_tensors(base_dir))
    if name is None:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", peft_dir.resolve().name).strip("-._")[:64] or "adapter"
    validate_name(name)
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        for n in ADAPTER_FILES:
            if (peft_dir / n).is_file():
                shutil.copy2(peft_dir / n, staging / n)
        return store.create(
            "adapter", name, state="trained", staging=staging, parents=[(base.id, "trained_on")],
            metadata={"peft": summary, "source": {"kind": "import", "ref": str(peft_dir.resolve())}},
            base_hash=base.content_hash, quantization=None if quantization == "none" else quantization,
            command=command, reason=f"imported from {peft_dir}",
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
