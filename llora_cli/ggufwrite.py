"""A self-contained GGUF file (Llama architecture) from a Hugging Face checkpoint directory, tensor by tensor.

Written with the ``gguf`` package's writer: the header, metadata and tensor infos first, then each
tensor's data as it is converted, so memory holds one tensor (in fp32) at a time. What llama.cpp
needs and this writes (the facts follow llama.cpp's ``convert_hf_to_gguf.py``):

- names through gguf's Llama tensor-name map (``blk.N.attn_q.weight``, ``token_embd.weight``, ...);
- ``attn_q``/``attn_k`` rows permuted the way llama.cpp's rotary embedding expects (the inverse of
  what transformers' GGUF loader undoes);
- ``llama.*`` hyper-parameters, ``general.file_type`` and the quantization version;
- the tokenizer: BPE tokens, types and merges, special token ids and the chat template.

Types: 1-D tensors (norms) stay F32; every other tensor gets the method's type, or llama.cpp's
fallback when its rows are not a multiple of the type's block (Q4_K: 256 values -> Q5_0; 32-value
types -> F16). Q4_K is quantized by ``kquants`` (numpy, llama.cpp's reference algorithm), the others
by gguf's own numpy quantizers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llora_cli import modelfiles
from llora_cli.formats.dtypes import to_f32
from llora_store.errors import BadInput

METHODS = {"gguf-f16": "F16", "gguf-q8_0": "Q8_0", "gguf-q4_0": "Q4_0", "gguf-q4_k": "Q4_K"}
FALLBACK = {"Q4_K": "Q5_0", "Q5_0": "F16", "Q8_0": "F16", "Q4_0": "F16"}
FILE_TYPE = {"F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0", "Q4_K": "MOSTLY_Q4_K_S"}
GGUF_NAME = modelfiles.GGUF_NAME


@dataclass
class GGUFReport:
    path: Path
    bytes: int
    types: dict[str, int]  # ggml type -> number of tensors
    fallbacks: list[str]   # tensors that could not take the method's type


def _permute(w, n_head: int):
    """llama.cpp's Q/K row order: [heads, 2, half, in] -> [heads, half, 2, in]."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def choose_type(target: str, shape: tuple[int, ...]) -> str:
    import gguf

    if len(shape) < 2:
        return "F32"
    t = target
    while t not in ("F16", "F32"):
        block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]]
        if shape[-1] % block == 0:
            return t
        t = FALLBACK[t]
    return t


def _encode(array, qtype: str):
    import gguf
    import numpy as np

    from llora_cli import kquants

    if qtype == "F32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == "F16":
        return np.ascontiguousarray(array, dtype=np.float16)
    if qtype == "Q4_K":
        return kquants.quantize_q4_k(array)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType[qtype])


def _pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer: SmolLM's (ByteLevel + single digits), GPT-2's, or default."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = {p.get("type") for p in parts}
    if "ByteLevel" in kinds and any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts):
        return "smollm"
    return "gpt-2" if kinds == {"ByteLevel"} else "default"


def _add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise BadInput(f"{model_dir} has no tokenizer.json; GGUF export needs a fast (BPE) tokenizer")
    tj = json.loads(path.read_text())
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise BadInput(f"GGUF export supports BPE tokenizers; this one is {model.get('type')!r}")
    vocab = dict(model["vocab"])
    special = set()
    for added in tj.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    by_id = {i: t for t, i in vocab.items()}
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(n):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tj))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    cfg_path = model_dir / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

    def token_id(key: str) -> int | None:
        value = tcfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return vocab.get(value) if isinstance(value, str) else None

    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        tid = token_id(key)
        if tid is not None:
            add(tid)
    writer.add_add_bos_token(bool(tcfg.get("add_bos_token", False)))
    template = tcfg.get("chat_template")
    if not template and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def write_gguf(model_dir: Path, out_path: Path, method: str, *, name: str = "llora",
               progress: Callable[[int, int], None] | None = None) -> GGUFReport:
    import gguf
    import numpy as np

    from llora_cli.formats.shards import ShardReader

    if method not in METHODS:
        raise BadInput(f"unknown GGUF method {method!r}; choose one of {', '.join(METHODS)}")
    target = METHODS[method]
    config = json.loads((model_dir / "config.json").read_text())
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise BadInput(f"GGUF export supports the Llama architecture; this model is {config.get('model_type')!r}",
                       hint="compress it with --method nf4 or int8 instead")
    # transformers 5 writes rope_parameters {"rope_theta", "rope_type"}; older configs rope_theta/rope_scaling
    rope = config.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type") or (config.get("rope_scaling") or {}).get("rope_type") or "default"
    if rope_type != "default":
        raise BadInput(f"GGUF export of a Llama with {rope_type!r} rope scaling is not supported yet")
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // n_head
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)

    shards = modelfiles.weight_files(model_dir)
    headers = [(p, modelfiles.read_safetensors_header(p)) for p in shards]
    plan = []  # (gguf name, shard path, hf name, shape, ggml type)
    for path, header in headers:
        for hf_name, info in header.items():
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise BadInput(f"tensor {hf_name} has no GGUF name for the Llama architecture")
            plan.append((gname, path, hf_name, tuple(info.shape), choose_type(target, tuple(info.shape))))
    plan.sort(key=lambda e: e[0])

    writer = gguf.GGUFWriter(str(out_path), arch="llama")
    try:
        writer.add_name(name)
        writer.add_context_length(config.get("max_position_embeddings", 2048))
        writer.add_embedding_length(hidden)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
        writer.add_vocab_size(config["vocab_size"])
        writer.add_file_type(gguf.LlamaFileType[FILE_TYPE[target]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, model_dir, config["vocab_size"])
        for gname, _path, _hf, shape, qtype in plan:
            gtype = gguf.GGMLQuantizationType[qtype]
            if qtype in ("F32", "F16"):
                dtype = np.float32 if qtype == "F32" else np.float16
                n = 1
                for d in shape:
                    n *= d
                writer.add_tensor_info(gname, shape, np.dtype(dtype), n * np.dtype(dtype).itemsize)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, gtype)
                nbytes = 1
                for d in byte_shape:
                    nbytes *= d
                writer.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=gtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        readers: dict[Path, ShardReader] = {}
        try:
            for i, (gname, path, hf_name, _shape, qtype) in enumerate(plan):
                reader = readers.get(path) or readers.setdefault(path, ShardReader(path))
                w = to_f32(reader.get_tensor(hf_name), reader.header[hf_name]["dtype"])
                if hf_name.endswith("q_proj.weight"):
                    w = _permute(w, n_head)
                elif hf_name.endswith("k_proj.weight"):
                    w = _permute(w, n_kv)
                writer.write_tensor_data(_encode(w, qtype))
                if progress:
                    progress(i + 1, len(plan))
        finally:
            for r in readers.values():
                r.close()
    finally:
        writer.close()
    types: dict[str, int] = {}
    for e in plan:
        types[e[4]] = types.get(e[4], 0) + 1
    fallbacks = [e[0] for e in plan if len(e[3]) >= 2 and e[4] != target]
    return GGUFReport(out_path, out_path.stat().st_size, types, fallbacks)
