"""A PEFT LoRA modifier as a llama.cpp LoRA GGUF, for the llama.cpp engine (and `llora export --format gguf-lora`).

The format, as llama.cpp reads it (llama-adapter.cpp; its convert_lora_to_gguf.py writes the same):
- metadata ``general.architecture`` = the base's (``llama``), ``general.type`` = ``adapter``,
  ``adapter.type`` = ``lora``, ``adapter.lora.alpha``; llama.cpp scales each pair by ``alpha / rank`` with
  the rank read from the tensor shape (``alpha`` 0: no scaling);
- per adapted weight ``blk.{i}.{attn_q,...}.weight``: ``<name>.lora_a`` (PEFT's A, [rank, in]) and
  ``<name>.lora_b`` (PEFT's B, [out, rank]), float32;
- Q and K rows in llama.cpp's rotary order: the GGUF writer permutes ``q_proj``/``k_proj`` weights
  ([heads, 2, half, in] -> [heads, half, 2, in]), so B of those projections gets the same row permutation
  (A acts on the input side and stays).
PEFT's scaling is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA, per-module alpha/rank patterns possible):
when every module uses ``lora_alpha / r`` the file carries ``alpha`` as is; otherwise each B is multiplied by its
module's exact scaling and ``alpha`` is written as 0.

Refused, with the reason (the modifier stays on the transformers engine): DoRA (llama.cpp has no magnitude
vector), LoRA on embeddings or the head, trained ``modules_to_save``, LoRA biases, target modules the base does
not have, and shapes that do not match the base's weights: never served silently as the base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llora_cli import modelfiles
from llora_store.errors import BadInput

if TYPE_CHECKING:  # annotations only (fastrun.py runs engines without the ORM)
    from llora_store import Store
    from llora_store.models import Artifact

LORA_FILE = "derived/adapter.gguf"  # inside the modifier's artifact directory (recorded, outside its content hash)
TARGETS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


class NotForLlamaCpp(BadInput):
    """The adapter is fine for transformers but llama.cpp cannot run it (DoRA, whole modules, biases, ...)."""


@dataclass
class LoraGGUF:
    path: Path
    bytes: int
    tensors: int
    alpha: float
    folded: bool  # scaling multiplied into B (rsLoRA or per-module patterns)


def refusal(adapter_dir: Path) -> str | None:
    """Why llama.cpp cannot run this adapter, or None."""
    return refusal_for(_config(adapter_dir))


def refusal_for(cfg: dict) -> str | None:
    """Why llama.cpp cannot run an adapter with PEFT config ``cfg``, or None (the tensors are checked later)."""
    if cfg.get("peft_type", "LORA") != "LORA":
        return f"it is a {cfg.get('peft_type')} adapter; llama.cpp runs LoRA"
    if cfg.get("use_dora"):
        return "it is a DoRA adapter; llama.cpp has no DoRA (weight-decomposed) LoRA"
    if cfg.get("modules_to_save"):
        return f"it trains whole modules ({', '.join(cfg['modules_to_save'])}), which a llama.cpp LoRA cannot carry"
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        return "it trains biases, which a llama.cpp LoRA cannot carry"
    return None


def _config(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise BadInput(f"{adapter_dir} has no adapter_config.json; is it a PEFT adapter?")
    return json.loads(path.read_text())


def _head_counts(base_dir: Path) -> tuple[int, int]:
    gguf_path = base_dir / modelfiles.GGUF_NAME
    if gguf_path.is_file():
        import gguf

        modelfiles.check_gguf_header(gguf_path)
        reader = gguf.GGUFReader(gguf_path)

        def field(key: str) -> int:
            f = reader.fields[key]
            return int(f.parts[f.data[0]][0])

        n_head = field("llama.attention.head_count")
        kv = "llama.attention.head_count_kv"
        return n_head, field(kv) if kv in reader.fields else n_head
    config = modelfiles.read_config(base_dir)
    n_head = config["num_attention_heads"]
    return n_head, config.get("num_key_value_heads") or n_head


def convert(adapter_dir: Path, base_dir: Path, out_path: Path) -> LoraGGUF:
    """Write ``out_path`` from the PEFT adapter in ``adapter_dir``, checked against the base in ``base_dir``."""
    import math

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    reason = refusal(adapter_dir)
    if reason:
        raise NotForLlamaCpp(f"llama.cpp cannot run this modifier: {reason}", hint="run it with --engine transformers")
    cfg = _config(adapter_dir)
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise BadInput(f"{adapter_dir} has no adapter_model.safetensors")
    raw = load_file(str(weights_path))
    base = modelfiles.model_tensors(base_dir)
    n_head, n_kv = _head_counts(base_dir)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in raw.items():
        module, sep, part = name.partition(".lora_")
        if not sep or part not in ("A.weight", "B.weight"):
            raise NotForLlamaCpp(f"adapter tensor {name} is not a LoRA A/B weight of a linear layer; llama.cpp "
                                 "cannot carry it", hint="serve it with --engine transformers")
        module = module.removeprefix("base_model.model.")
        pairs.setdefault(module, {})[part[0]] = t.astype(np.float32)
    r_default, alpha = cfg.get("r", 8), float(cfg.get("lora_alpha", 8))
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    folded = bool(cfg.get("use_rslora") or rank_pattern or alpha_pattern)
    plan = []
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise BadInput(f"adapter module {module} has no {'B' if 'A' in ab else 'A'} matrix")
        proj = module.rsplit(".", 1)[-1]
        parts = module.split(".")
        if proj not in TARGETS or "layers" not in parts:
            raise NotForLlamaCpp(f"the modifier adapts {module}; llama.cpp LoRA conversion covers the attention and MLP "
                           f"projections ({', '.join(TARGETS)})", hint="serve it with --engine transformers")
        weight = f"{module}.weight"
        if weight not in base:
            raise BadInput(f"the modifier adapts {module}, which the base does not have",
                           hint="was it trained on another base? see: llora show MODIFIER")
        a, b = ab["A"], ab["B"]
        out_dim, in_dim = base[weight].shape
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_dim or b.shape[0] != out_dim or a.shape[0] != b.shape[1]:
            raise BadInput(f"{module}: A {list(a.shape)} and B {list(b.shape)} do not fit the base weight "
                           f"[{out_dim}, {in_dim}]", hint="was it trained on another base? see: llora show MODIFIER")
        rank = a.shape[0]
        key = next((k for k in alpha_pattern if module.endswith(k) or f".{k}." in f".{module}."), None)
        m_alpha = float(alpha_pattern[key]) if key else alpha
        scale = m_alpha / math.sqrt(rank) if cfg.get("use_rslora") else m_alpha / rank
        if proj in ("q_proj", "k_proj"):
            heads = n_head if proj == "q_proj" else n_kv
            b = b.reshape(heads, 2, b.shape[0] // heads // 2, rank).swapaxes(1, 2).reshape(b.shape)
        if folded:
            b = b * np.float32(scale)
        layer = int(parts[parts.index("layers") + 1])
        gname = f"blk.{layer}.{TARGETS[proj]}.weight"
        plan.append((gname, np.ascontiguousarray(a), np.ascontiguousarray(b)))
    if not plan:
        raise BadInput("the adapter has no LoRA weights")
    if not folded and r_default <= 0:
        raise BadInput(f"adapter rank r={r_default} is not positive")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch="llama")
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0 if folded else alpha)
        for gname, a, b in plan:
            writer.add_tensor(f"{gname}.lora_a", a)
            writer.add_tensor(f"{gname}.lora_b", b)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return LoraGGUF(out_path, out_path.stat().st_size, 2 * len(plan), 0.0 if folded else alpha, folded)


def ensure(store: Store, modifier: Artifact, base: Artifact) -> Path:
    """The modifier's llama.cpp LoRA file, converted and recorded (a derived file) on first use. Raises
    ``NotForLlamaCpp`` for what llama.cpp cannot run and ``BadInput`` for an adapter that does not fit the base."""
    import shutil

    from llora_store import files as fs

    adapter_dir = store.path_of(modifier.id)
    target = adapter_dir / LORA_FILE
    current = store.get(modifier.id)
    recorded = current.meta.get("gguf_lora") or {}
    if target.is_file() and recorded.get("base_hash") == base.content_hash:
        return target
    staging = store.new_staging(f"{modifier.id}-gguflora")  # owned; `llora db gc` removes it if this process dies
    tmp_path = staging / "adapter.gguf"
    try:
        out = convert(adapter_dir, store.path_of(base.id), tmp_path)
        store.add_derived(modifier.id, LORA_FILE, tmp_path, meta={"gguf_lora": {
            "file": LORA_FILE, "bytes": out.bytes, "sha256": fs.sha256_file(tmp_path),
            "tensors": out.tensors, "alpha": out.alpha, "scaling_folded": out.folded,
            "base_hash": base.content_hash}})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
