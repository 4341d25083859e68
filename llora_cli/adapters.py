"""Importing existing PEFT LoRA adapter directories as training adapters.

The adapter's tensors are checked against the base's safetensors headers
(module exists, shapes fit) without loading any weights.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from llora_cli import modelfiles
from llora_cli.formats import peft
from llora_cli.formats.shards import copy_renamed
from llora_store import Store
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput
from llora_store.models import Artifact

QUANTIZATIONS = ("none", "nf4", "int8")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", "classifier.json")


def read_adapter(peft_dir: Path) -> tuple[dict, dict[str, modelfiles.TensorInfo]]:
    if not peft_dir.is_dir():
        raise BadInput(f"{peft_dir} is not a directory")
    cfg_path = peft_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise BadInput(f"{peft_dir} is not a PEFT adapter directory: it has no adapter_config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{cfg_path} is not valid JSON: {e}") from None
    check_config(cfg_path, config)
    if config.get("peft_type") != "LORA":
        raise BadInput(f"{peft_dir} holds a {config.get('peft_type')} adapter; llora handles LoRA (incl. DoRA, rsLoRA)")
    weights = peft_dir / "adapter_model.safetensors"
    if not weights.is_file():
        hint = "re-save it with save_pretrained(safe_serialization=True)" if (peft_dir / "adapter_model.bin").exists() else None
        raise BadInput(f"{peft_dir} has no adapter_model.safetensors", hint=hint)
    return config, modelfiles.read_safetensors_header(weights)


def check_config(path: Path, config) -> None:
    """The keys of a PEFT ``LoraConfig`` that llora reads, type-checked (pydantic, strict: a string "8" is not a
    rank); other keys pass through. Raises BadInput naming the file, the key and what it should be."""
    if not isinstance(config, dict):
        raise BadInput(f"{path} holds JSON {type(config).__name__}, not an object: not a PEFT adapter config")
    try:
        _LoraConfigKeys.model_validate(config)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise BadInput(f"{path}: {where} = {str(err.get('input'))[:60]!r}: {err['msg']}",
                       hint="fix the value (see PEFT's LoraConfig) or re-save the adapter with PEFT") from None


Number = StrictInt | StrictFloat


class _LoraConfigKeys(BaseModel):
    """The keys of PEFT's ``LoraConfig`` (peft/tuners/lora/config.py) llora reads, with their types."""

    model_config = ConfigDict(extra="allow")
    peft_type: StrictStr | None = None
    task_type: StrictStr | None = None
    r: StrictInt | None = Field(default=None, gt=0, le=1 << 16)
    lora_alpha: Number | None = None
    lora_dropout: Number | None = None
    target_modules: StrictStr | list[StrictStr] | None = None
    modules_to_save: list[StrictStr] | None = None
    layers_to_transform: StrictInt | list[StrictInt] | None = None
    rank_pattern: dict[StrictStr, StrictInt] | None = None
    alpha_pattern: dict[StrictStr, Number] | None = None
    use_dora: StrictBool | None = None
    use_rslora: StrictBool | None = None
    fan_in_fan_out: StrictBool | None = None
    bias: StrictStr | None = None
    base_model_name_or_path: StrictStr | None = None


def check_fits(config: dict, tensors: dict[str, modelfiles.TensorInfo], base_tensors: dict[str, modelfiles.TensorInfo],
               *, base_config: dict | None = None) -> dict:
    """Every LoRA module and every full copy (``modules_to_save``) must exist in the base with matching shapes.

    Names are read by ``formats.peft.parse_keys`` (saved or live-PeftModel forms). Returns a summary; raises
    ``BadInput`` listing what does not fit. A tied output head (no ``lm_head.weight`` in the base's files) is
    checked against the input embedding it is tied to.
    """
    keys = peft.parse_keys(tensors, modules_to_save=config.get("modules_to_save") or ())
    if not keys.lora and not keys.whole:
        raise BadInput("the adapter has no LoRA tensors (lora_A / lora_B)")
    shapes = {name: tuple(info.shape) for name, info in base_tensors.items()}
    if "lm_head.weight" not in shapes and (base_config or {}).get("tie_word_embeddings"):
        embed = next((n for n in shapes if n.endswith("embed_tokens.weight")), None)
        if embed:
            shapes["lm_head.weight"] = shapes[embed]
    problems = []
    ranks = set()
    for module, parts in sorted(keys.lora.items()):
        base = shapes.get(f"{module}.weight")
        if base is None:
            problems.append(f"{module}: no such module in the base")
            continue
        if "A" in parts:
            (r, fan_in), (fan_out, r2) = tensors[parts["A"]].shape[:2], tensors[parts["B"]].shape[:2]
            if r != r2:
                problems.append(f"{module}: lora_A rank {r} != lora_B rank {r2}")
            if (fan_out, fan_in) != base[:2]:
                problems.append(f"{module}: adapter expects weight {fan_out}x{fan_in}, base has {'x'.join(map(str, base))}")
        else:
            (r, n_emb), (dim, _) = tensors[parts["emb_A"]].shape, tensors[parts["emb_B"]].shape
            if (n_emb, dim) != base:
                problems.append(f"{module}: adapter expects embedding {n_emb}x{dim}, base has {'x'.join(map(str, base))}")
        if "m" in parts and tuple(tensors[parts["m"]].shape)[:1] != base[:1]:
            problems.append(f"{module}: DoRA magnitude {list(tensors[parts['m']].shape)} does not fit {base[0]} rows")
        ranks.add(r)
    for target, key in sorted(keys.whole.items()):
        base = shapes.get(target)
        if base is None:
            problems.append(f"{target}: the adapter carries a full copy of it; no such tensor in the base")
        elif tuple(tensors[key].shape) != base:
            problems.append(f"{target}: full copy {'x'.join(map(str, tensors[key].shape))}, base has {'x'.join(map(str, base))}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BadInput(f"the adapter does not fit the base: {shown}")
    short = sorted({m.rsplit(".", 1)[-1] for m in keys.lora})
    return {
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_dora": bool(config.get("use_dora")),
        "use_rslora": bool(config.get("use_rslora")),
        "target_modules": short,
        "modules": len(keys.lora),
        "modules_to_save": keys.whole_modules,
        "embedding_lora": sorted(m for m, parts in keys.lora.items() if "emb_A" in parts),
        "ranks": sorted(ranks),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }


def support(config: dict, summary: dict, keys: peft.AdapterKeys) -> dict[str, str | None]:
    """What each later step will do with an adapter of this shape: None (handled) or the reason it is refused.

    merge and the transformers engine handle every LoRA form import accepts (Linear, embedding, DoRA, rsLoRA,
    patterns, modules_to_save); the llama.cpp LoRA conversion (gguflora.py) and vLLM/Ollama exports do not.
    """
    from llora_cli import gguflora

    llamacpp = gguflora.refusal_for(config)
    if llamacpp is None and summary["embedding_lora"]:
        llamacpp = f"it puts LoRA on embeddings ({', '.join(summary['embedding_lora'])}), which llama.cpp LoRA cannot carry"
    if llamacpp is None:
        bad = [t for t in summary["target_modules"] if t not in gguflora.TARGETS]
        if bad:
            llamacpp = f"it adapts {', '.join(bad)}; llama.cpp LoRA covers {', '.join(gguflora.TARGETS)}"
    export = peft.plain_lora_refusal(config, keys)
    return {"merge": None, "transformers": None, "llamacpp": llamacpp, "export_vllm_ollama": export}


def check_kind_domain(kind: str, domain: str | None) -> None:
    """The one rule for a new adapter or modifier (train and import): a modifier has a domain (the router picks by
    it), a training adapter has none. Raises ``BadInput``."""
    if kind not in ("adapter", "modifier"):
        raise BadInput(f"--kind must be adapter or modifier, got {kind!r}")
    if kind == "modifier" and not domain:
        raise BadInput("a modifier needs --domain (e.g. code, reasoning, automation): the router picks by it")
    if kind == "adapter" and domain:
        raise BadInput("--domain is for modifiers; a training adapter is merged, not routed")
    if domain is not None and not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", domain):
        raise BadInput(f"--domain {domain!r}: use a short lowercase word (letters, digits, - or _)")


def import_adapter(store: Store, peft_dir: Path, base_ref: str, *, name: str | None = None,
                   quantization: str = "none", kind: str = "adapter", domain: str | None = None,
                   command: str = "") -> Artifact:
    """Register a PEFT LoRA directory as a ``trained`` training adapter (``trained_on`` the base) or, with
    ``kind="modifier"``, as a ``trained`` runtime modifier (``runs_on`` the base, R6 on its content hash).

    Tensor names are normalized to PEFT's saved form (a live PeftModel's ``lora_A.default.weight`` becomes
    ``lora_A.weight``; frozen ``original_module`` copies are dropped) and the file is rewritten when they change,
    so merge, deploy and export read one form. ``metadata.support`` says which later steps will refuse it and why.
    Raises ``BadInput`` (not a PEFT LoRA dir, does not fit the base, bad name/domain), ``NotFound`` (base).
    """
    if quantization not in QUANTIZATIONS:
        raise BadInput(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    check_kind_domain(kind, domain)
    peft_dir = peft_dir.expanduser()
    config, tensors = read_adapter(peft_dir)
    base = store.resolve(base_ref, kinds=("base", "merged", "compressed"))
    base_dir = store.path_of(base.id)
    classifier = {}
    if config.get("task_type") == "SEQ_CLS":  # LoRA plus a classification head (issue 15): the head is checked apart
        from llora_cli.classify import check_classifier_base, read_head

        labels, body, body_config = read_head(peft_dir, config, tensors, _base_config(base_dir))
        check_classifier_base(base, base_dir)
        summary = check_fits(body_config, body, modelfiles.model_tensors(base_dir), base_config=_base_config(base_dir))
        classifier = {"task": "classify", "labels": labels}
    else:
        summary = check_fits(config, tensors, modelfiles.model_tensors(base_dir), base_config=_base_config(base_dir))
    keys = peft.parse_keys(tensors, modules_to_save=config.get("modules_to_save") or ())
    if keys.whole_modules and not config.get("modules_to_save"):
        config = {**config, "modules_to_save": [m.rsplit(".", 1)[-1] for m in keys.whole_modules]}
    if name is None:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", peft_dir.resolve().name).strip("-._")[:64] or "adapter"
    validate_name(name)
    source = {"kind": "import", "ref": str(peft_dir.resolve())}
    if keys.renamed:
        source["normalized"] = {"renamed": sum(k != v for k, v in keys.canonical.items()), "dropped": len(keys.dropped),
                                "adapter_name": next(iter(keys.adapter_names), None)}
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        for n in ADAPTER_FILES:
            if (peft_dir / n).is_file():
                shutil.copy2(peft_dir / n, staging / n)
        if keys.renamed:
            copy_renamed(peft_dir / "adapter_model.safetensors", staging / "adapter_model.safetensors", keys.canonical)
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if classifier:  # the label map travels with the files, whichever place it was read from
            (staging / "classifier.json").write_text(json.dumps(classifier))
        if kind == "modifier":
            quant = base.quantization
            parents = [(base.id, "runs_on")]
        else:
            quant = None if quantization == "none" else quantization
            parents = [(base.id, "trained_on")]
        return store.create(
            kind, name, state="trained", staging=staging, parents=parents,
            metadata={"peft": summary, "support": support(config, summary, keys), "source": source, **classifier},
            base_hash=base.content_hash, quantization=quant, domain=domain,
            command=command, reason=f"imported from {peft_dir}",
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _base_config(base_dir: Path) -> dict:
    try:
        return modelfiles.read_config(base_dir)
    except BadInput:  # a GGUF-only base has no config.json; its tensors are still checked by name and shape
        return {}
