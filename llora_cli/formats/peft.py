"""PEFT LoRA adapter files: the tensor names PEFT saves, the variants other tools write, normalized to one form.

PEFT's ``save_pretrained`` writes (``get_peft_model_state_dict``; its loader ``set_peft_model_state_dict``
accepts the same names back):

- ``base_model.model.<module>.lora_A.weight`` [r, in] / ``.lora_B.weight`` [out, r] for a Linear layer;
- ``base_model.model.<module>.lora_embedding_A`` [r, num_embeddings] / ``lora_embedding_B`` [dim, r] for an
  Embedding;
- ``base_model.model.<module>.lora_magnitude_vector`` [out] for DoRA;
- ``base_model.model.<module>.weight`` (and ``.bias``) for a module in ``modules_to_save``: a trained full copy
  that replaces the module;
- ``base_model.model.<module>.base_layer.weight`` for an embedding layer with LoRA (``save_embedding_layers``):
  the base embedding as PEFT loads it back (the vocabulary may have been resized), under the LoRA delta.

A state dict taken from a live ``PeftModel`` (``model.state_dict()``) carries the adapter name
(``lora_A.default.weight``, ``lora_magnitude_vector.default.weight``, ``lm_head.modules_to_save.default.weight``)
and the frozen originals (``lm_head.original_module.weight``); PEFT's loader inserts and strips the name itself.
``parse_keys`` maps every variant to the saved form, so the rest of llora sees one naming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llora_store.errors import BadInput

PREFIX = "base_model.model."
LORA_PARTS = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "emb_A", "lora_embedding_B": "emb_B",
              "lora_magnitude_vector": "m"}
WHOLE_PARAMS = ("weight", "bias")


@dataclass
class AdapterKeys:
    """An adapter file's tensor names, understood.

    ``lora``: module -> part (``A``, ``B``, ``emb_A``, ``emb_B``, ``m``) -> name in the file;
    ``whole``: base tensor name (``lm_head.weight``) -> name in the file, for trained full copies
    (``modules_to_save``); ``canonical``: name in the file -> the name PEFT's ``save_pretrained`` writes;
    ``dropped``: names of frozen originals (``original_module``), which are the base's own weights;
    ``adapter_names``: adapter names found in the names (``default``), empty for a saved adapter;
    ``base_layers``: the targets of ``whole`` that are saved base layers (``save_embedding_layers``), not trained.
    """

    lora: dict[str, dict[str, str]] = field(default_factory=dict)
    whole: dict[str, str] = field(default_factory=dict)
    canonical: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    adapter_names: set[str] = field(default_factory=set)
    base_layers: set[str] = field(default_factory=set)  # targets in ``whole`` that are saved base layers

    @property
    def renamed(self) -> bool:
        """Whether the file's names differ from PEFT's saved form (the file is rewritten at import)."""
        return bool(self.dropped) or any(k != v for k, v in self.canonical.items())

    @property
    def whole_modules(self) -> list[str]:
        """Modules replaced by trained full copies (``modules_to_save``)."""
        return sorted({name.rsplit(".", 1)[0] for name in self.whole if name not in self.base_layers})


def parse_keys(keys, *, modules_to_save=()) -> AdapterKeys:
    """Classify the tensor names of an adapter file; raises ``BadInput`` naming a tensor llora cannot place.

    ``modules_to_save``: the config's list (short names such as ``lm_head``); a bare ``<module>.weight`` is a
    trained full copy only when its module is listed there (PEFT writes nothing else under such a name).
    """
    out = AdapterKeys()
    listed = set(modules_to_save or ())
    for key in keys:
        if key == "__metadata__":
            continue
        name = key.removeprefix(PREFIX)
        segs = name.split(".")
        part_at = next((i for i, s in enumerate(segs) if s in LORA_PARTS), None)
        if part_at is not None and part_at > 0:
            module, part, rest = ".".join(segs[:part_at]), segs[part_at], segs[part_at + 1:]
            if rest and rest[-1] == "weight":
                rest = rest[:-1]
            if len(rest) > 1:
                raise BadInput(f"adapter tensor {key}: cannot read the name after {part}")
            if rest:
                out.adapter_names.add(rest[0])
            suffix = ".weight" if part in ("lora_A", "lora_B") else ""
            out.lora.setdefault(module, {})[LORA_PARTS[part]] = key
            out.canonical[key] = f"{PREFIX}{module}.{part}{suffix}"
            continue
        if "original_module" in segs:
            out.dropped.append(key)
            continue
        if len(segs) >= 3 and segs[-2] == "base_layer" and segs[-1] in WHOLE_PARAMS:
            # save_embedding_layers: PEFT saves the (possibly resized) base embedding of a LoRA'd embedding layer
            # and loads it back into the base layer before the LoRA delta applies
            target = ".".join(segs[:-2] + segs[-1:])
            out.base_layers.add(target)
        elif "modules_to_save" in segs:
            i = segs.index("modules_to_save")
            module, rest = ".".join(segs[:i]), segs[i + 1:]
            if len(rest) != 2 or rest[1] not in WHOLE_PARAMS:
                raise BadInput(f"adapter tensor {key}: cannot read the modules_to_save name")
            out.adapter_names.add(rest[0])
            target = f"{module}.{rest[1]}"
        elif len(segs) >= 2 and segs[-1] in WHOLE_PARAMS and segs[-2] in listed | {s.rsplit('.', 1)[-1] for s in listed}:
            target = name
        elif len(segs) >= 2 and segs[-1] in WHOLE_PARAMS:
            raise BadInput(f"adapter tensor {key} is a full {segs[-1]} of {'.'.join(segs[:-1])}, which the adapter's "
                           "modules_to_save does not list",
                           hint="add the module to modules_to_save in adapter_config.json if it was trained in full")
        else:
            raise BadInput(f"adapter tensor {key} is neither a LoRA tensor (lora_A/lora_B/lora_embedding_A/B/"
                           "lora_magnitude_vector) nor a modules_to_save copy")
        if target in out.whole:
            raise BadInput(f"adapter tensors {out.whole[target]} and {key} both replace {target}")
        out.whole[target] = key
        out.canonical[key] = (f"{PREFIX}{target.rsplit('.', 1)[0]}.base_layer.{segs[-1]}" if target in out.base_layers
                              else f"{PREFIX}{target}")
    if len(out.adapter_names) > 1:
        raise BadInput(f"the adapter file holds several adapters ({', '.join(sorted(out.adapter_names))}); "
                       "save one of them with PeftModel.save_pretrained(dir, selected_adapters=[NAME])")
    for module, parts in out.lora.items():
        have = set(parts)
        if not ({"A", "B"} <= have or {"emb_A", "emb_B"} <= have):
            raise BadInput(f"adapter module {module} has an incomplete LoRA pair ({', '.join(sorted(have))})")
    return out


def plain_lora_refusal(config: dict, keys: AdapterKeys) -> str | None:
    """Why an adapter is not plain LoRA on linear projections (what vLLM and Ollama adapters carry), or None."""
    if config.get("use_dora"):
        return "it is DoRA; vLLM and Ollama serve plain LoRA only"
    if keys.whole_modules:
        return f"it trains whole modules ({', '.join(m.rsplit('.', 1)[-1] for m in keys.whole_modules)}); vLLM and " \
               "Ollama adapters carry plain LoRA on projections only"
    embedding = sorted(m for m, parts in keys.lora.items() if "emb_A" in parts)
    if embedding:
        return f"it puts LoRA on embeddings ({', '.join(embedding)}); vLLM and Ollama adapters carry plain LoRA on " \
               "projections only"
    return None


def read_keys(adapter_dir) -> tuple[dict, AdapterKeys]:
    """(adapter_config.json, parsed tensor names) of a PEFT adapter directory, from the safetensors header only."""
    import json

    from llora_cli import modelfiles

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    header = modelfiles.read_safetensors_header(adapter_dir / "adapter_model.safetensors")
    return config, parse_keys(header, modules_to_save=config.get("modules_to_save") or ())
