"""Facts about model and adapter files read without torch: configs and safetensors headers.

A safetensors file starts with an 8-byte little-endian header length and a
JSON header mapping tensor names to dtype, shape and offsets; reading it costs
microseconds and lets catalog commands check shapes without loading weights.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llora_store.errors import BadInput, Corrupt

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
CONFIG_FILES = ("config.json", "generation_config.json")
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape, from the header only (format: huggingface/safetensors' README: u64
    little-endian header length, a JSON object of ``name -> {dtype, shape, data_offsets}``, then the data).

    Every entry is checked before anything is allocated: a JSON object, a dtype string, a shape of
    non-negative integers, ``data_offsets`` ``[begin, end]`` with ``0 <= begin <= end`` inside the file and,
    for a known dtype, ``end - begin`` equal to the shape's byte size. Raises BadInput naming the file and
    the first problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} is implausible for a file of {size} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError(f"the header is JSON {type(header).__name__}, not an object")
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            out[name] = _tensor_entry(name, info, data_bytes=size - 8 - n)
        return out
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise BadInput(f"{path} is not a valid safetensors file: {e}") from None


def _tensor_entry(name: str, info, *, data_bytes: int) -> TensorInfo:
    if not isinstance(info, dict):
        raise ValueError(f"tensor {name}: entry is {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not dtype:
        raise ValueError(f"tensor {name}: dtype {dtype!r} is not a dtype name")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ValueError(f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    if offsets[1] > data_bytes:
        raise ValueError(f"tensor {name} extends past the end of the file (truncated?)")
    width = _DTYPE_BYTES.get(dtype)
    if width is not None and math.prod(shape) * width != offsets[1] - offsets[0]:
        raise ValueError(f"tensor {name}: shape {shape} of {dtype} needs {math.prod(shape) * width} bytes, "
                         f"its data_offsets span {offsets[1] - offsets[0]}")
    return TensorInfo(dtype, tuple(shape))


# The smallest a GGUF tensor-info and key-value entry can be on disk (gguf v2/v3, ggml's gguf.c): a tensor info is
# a name (u64 length + >= 1 byte), u32 n_dims, >= 1 u64 dimension, u32 type and u64 offset; a key-value is a key
# (u64 length + >= 1 byte), u32 type and a value of >= 1 byte.
_GGUF_MIN_TENSOR_INFO = 8 + 1 + 4 + 8 + 4 + 8
_GGUF_MIN_KV = 8 + 1 + 4 + 1
GGUF_VERSIONS = (2, 3)


def check_gguf_header(path: Path) -> tuple[int, int, int]:
    """(version, tensor count, key-value count) of a GGUF file, read from its first 24 bytes, after checking
    that the counts fit in the file: a file claiming 2**60 tensors is refused here, before a GGUF reader
    allocates per-tensor structures for them. Layout: magic ``GGUF``, u32 version, u64 tensor count, u64
    key-value count, little-endian (the GGUF spec in ggml's docs/gguf.md).

    Raises BadInput naming what is wrong (magic, version, counts, truncation)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    if head[:4] != b"GGUF":
        raise BadInput(f"{path} does not start with the GGUF magic bytes: not a GGUF file")
    if len(head) < 24:
        raise BadInput(f"{path} is truncated: {size} bytes, shorter than a GGUF header (24 bytes)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in GGUF_VERSIONS:
        raise BadInput(f"{path} is GGUF version {version}; llora reads versions {', '.join(map(str, GGUF_VERSIONS))}",
                       hint="re-export it with a current llama.cpp (convert_hf_to_gguf.py)")
    need = 24 + n_tensors * _GGUF_MIN_TENSOR_INFO + n_kv * _GGUF_MIN_KV
    if need > size:
        raise BadInput(f"{path} claims {n_tensors} tensors and {n_kv} metadata entries, which need at least "
                       f"{need} bytes, but the file has {size}: truncated or damaged")
    return version, n_tensors, n_kv


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


GGUF_NAME = "model.gguf"  # a GGUF model directory holds its weights in this one file
BNB_AUX = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format")


def model_tensors(model_dir: Path) -> dict[str, TensorInfo]:
    """The model's logical tensors (Hugging Face names, [out, in] shapes) of a checkpoint directory:
    safetensors (sharded or not), pre-quantized bitsandbytes safetensors (packed weights reported with
    their logical shape, quantization state left out) or a GGUF file (names mapped back)."""
    gguf_path = model_dir / GGUF_NAME
    if gguf_path.is_file() and not weight_files(model_dir):
        return _gguf_tensors(gguf_path)
    out: dict[str, TensorInfo] = {}
    for p in weight_files(model_dir):
        out.update(read_safetensors_header(p))
    states = [n for n in out if ".quant_state.bitsandbytes__" in n]
    if states or any(n.endswith(".SCB") for n in out):
        for state in states:
            weight = state.split(".quant_state.", 1)[0]
            out[weight] = TensorInfo("NF4" if state.endswith("nf4") else "FP4", tuple(_bnb_shape(model_dir, state)))
        out = {n: t for n, t in out.items() if ".quant_state." not in n and not n.endswith(BNB_AUX)}
    return out


def _bnb_shape(model_dir: Path, state_name: str) -> list[int]:
    """The logical shape stored in a bitsandbytes 4-bit quant-state tensor (JSON bytes)."""
    for p in weight_files(model_dir):
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            if state_name in header:
                begin, end = header[state_name]["data_offsets"]
                f.seek(8 + n + begin)
                return json.loads(f.read(end - begin))["shape"]
    raise BadInput(f"{model_dir}: quantization state {state_name} not found")


# GGUF (Llama) name -> Hugging Face name pattern; {i} is the layer
_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight", "attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight", "ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
}


_gguf_scope = {"depth": 0, "readers": {}}
_gguf_lock = threading.Lock()


@contextmanager
def parse_gguf_once():
    """Within the block, each GGUF file's metadata is parsed once: ``gguf.GGUFReader(path)`` returns the reader
    already made for the same unchanged file (device, inode, size, mtime), and ``gguf.get_tensor_name_map`` is
    memoized.

    Why: transformers' GGUF loader builds a new ``GGUFReader`` for the config, again for the tokenizer and again
    for the weights, and gguf's reader parses every metadata field value by value (SmolLM2's 49,152-token
    vocabulary and its merges: ~4 s per parse on this CPU); its weight-name mapping rebuilds gguf's tensor name
    map once per module (397 times for SmolLM2). Measured on ``bases add smollm2``'s conversion: 33 s -> 21 s,
    the written files byte-identical. Readers are shared read-only (mode ``"r"``); other modes are not cached.
    Thread-safe; nested blocks share one cache, which is dropped (its memory maps closed) when the outermost
    block ends, so no file stays mapped afterwards.
    """
    import functools

    import gguf

    with _gguf_lock:
        if not getattr(gguf.GGUFReader, "_llora_cached", False):
            gguf.GGUFReader = _cached_reader_class(gguf.GGUFReader)
            gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(gguf.get_tensor_name_map)
        _gguf_scope["depth"] += 1
    try:
        yield
    finally:
        with _gguf_lock:
            _gguf_scope["depth"] -= 1
            if _gguf_scope["depth"] == 0:
                _gguf_scope["readers"].clear()


def _cached_reader_class(base: type) -> type:
    """A subclass of gguf's ``GGUFReader`` whose construction returns the reader cached in the current
    ``parse_gguf_once`` block for the same file; outside any block it is the plain reader."""

    class CachedGGUFReader(base):
        _llora_cached = True

        def __new__(cls, path, mode="r"):
            key = None
            if mode == "r":
                try:
                    st = Path(path).stat()
                    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                except OSError:
                    key = None  # the reader's own error follows
            with _gguf_lock:
                if key is not None and _gguf_scope["depth"] > 0 and key in _gguf_scope["readers"]:
                    return _gguf_scope["readers"][key]
            reader = super().__new__(cls)
            base.__init__(reader, path, mode)
            with _gguf_lock:
                if key is not None and _gguf_scope["depth"] > 0:
                    _gguf_scope["readers"][key] = reader
            return reader

        def __init__(self, path, mode="r"):  # done in __new__ (a cached reader is not parsed again)
            pass

    CachedGGUFReader.__name__ = CachedGGUFReader.__qualname__ = base.__name__
    return CachedGGUFReader


def _gguf_tensors(path: Path) -> dict[str, TensorInfo]:
    import gguf

    check_gguf_header(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise Corrupt(f"{path} is not a readable GGUF file (truncated or damaged?): {e}",
                      hint="check the artifact's files with: llora verify ID") from e
    out = {}
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, i, rest = t.name.split(".", 2)
            pattern = _GGUF_TO_HF.get(rest)
        else:
            i, pattern = "", _GGUF_TO_HF.get(t.name)
        if pattern is None:
            continue
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))  # ggml lists dimensions innermost first
        out[pattern.format(i=i)] = TensorInfo(t.tensor_type.name, shape)
    return out


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise BadInput(
            f"{model_dir} is not a Hugging Face model directory: it has no config.json",
            hint="pass a directory written by save_pretrained, a .gguf file, a hub id or 'smollm2'",
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise BadInput(f"{path} has no model_type: not a transformers model config")
    return config


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def summarize_model(model_dir: Path) -> dict:
    """Architecture facts recorded on a base: type, sizes, parameter count, dtype."""
    config = read_config(model_dir)
    tensors = model_tensors(model_dir)
    params = 0
    by_dtype: dict[str, int] = {}
    for t in tensors.values():
        n = 1
        for d in t.shape:
            n *= d
        params += n
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + n
    text = config.get("text_config", config)
    return {
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "num_hidden_layers": text.get("num_hidden_layers"),
        "hidden_size": text.get("hidden_size"),
        "vocab_size": text.get("vocab_size"),
        "num_parameters": params,
        "dtype": max(by_dtype, key=by_dtype.get) if by_dtype else None,
        "tensors": len(tensors),
        "has_chat_template": _has_chat_template(model_dir),
    }


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").exists() or (model_dir / "chat_template.json").exists():
        return True
    try:
        return bool(json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, json.JSONDecodeError):
        return False
