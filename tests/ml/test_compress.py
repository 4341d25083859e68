"""`llora compress`: refusals, GGUF files checked with gguf's reader and transformers, bnb reloads, quality."""

from __future__ import annotations

import json

import pytest
import tiny
import torch


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    # hidden 128: bitsandbytes' CPU 4-bit kernels need rows of at least one 64-value block
    d = tiny.build_tiny_llama(tmp_path_factory.mktemp("wide") / "wide-llama", hidden=128)
    # a non-default rope base (SmolLM2 uses 100000), written the way transformers 5 writes it
    config = json.loads((d / "config.json").read_text())
    config.pop("rope_theta", None)
    config["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.fixture
def base(cli, wide_model_dir):
    return cli.json("bases", "add", wide_model_dir, "--name", "tiny")


def logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits.float()


IDS = torch.tensor([[1, 7, 42, 9, 100, 3, 55, 21]])
# max |logits diff| / max |logits| of the GGUF reloaded by transformers vs the source, per method, on this
# random model (measured: f16 ~4e-4, q8_0 ~1e-2, q4_0 ~0.15); the bounds leave room, not slack for bugs
LOGIT_TOL = {"gguf-f16": 2e-3, "gguf-q8_0": 3e-2, "gguf-q4_0": 0.4, "gguf-q4_k": 0.4}
LLAMA_KEYS = ["general.architecture", "general.file_type", "general.quantization_version", "llama.block_count",
              "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
              "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
              "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
              "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
              "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]


@pytest.mark.parametrize("method", ["gguf-f16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k"])
def test_gguf_methods_write_files_llama_cpp_and_transformers_read(cli, store, base, wide_model_dir, method):
    import gguf
    from transformers import AutoModelForCausalLM

    res = cli.json("compress", "tiny", "--method", method, "--eval-n", "1")
    art = store.resolve(res["compressed"]["id"])
    assert art.kind == "compressed" and art.state == "ready" and art.quantization == method
    path = store.path_of(art.id) / "model.gguf"
    reader = gguf.GGUFReader(path)
    fields = set(reader.fields)
    assert [k for k in LLAMA_KEYS if k not in fields] == []
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    rope = reader.fields["llama.rope.freq_base"]
    assert float(rope.parts[rope.data[0]][0]) == 100000.0
    tensors = {t.name: t for t in reader.tensors}
    n_layers = 2
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {  # tiny has an untied head
        f"blk.{i}.{n}.weight" for i in range(n_layers) for n in
        ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm")}
    assert set(tensors) == expected
    want = {"gguf-f16": "F16", "gguf-q8_0": "Q8_0", "gguf-q4_0": "Q4_0", "gguf-q4_k": "Q5_0"}[method]
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == want  # q4_k: rows of 128 fall back to Q5_0
    if method == "gguf-q4_k":  # ffn_down's rows are 256 values: a real Q4_K tensor
        assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "Q4_K"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [256, 128]  # ggml order: [in, out]
    source = AutoModelForCausalLM.from_pretrained(wide_model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    ref, got = logits(source, IDS), logits(loaded, IDS)
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert 0 < rel < LOGIT_TOL[method], rel
    meta = cli.json("show", art.id)["metadata"]
    assert meta["compression"]["bytes"] == path.stat().st_size
    q = meta["quality"]
    assert q["perplexity"]["source"] > 1 and q["perplexity"]["compressed"] > 1 and q["kl_mean"] >= 0
    assert set(q["accuracy"]) == {"reasoning", "automation", "code"}
    assert cli.json("deploy", art.id)["state"] == "deployed"  # a compressed base is deployable
    parents = cli.json("show", art.id)["parents"]
    assert [(p["id"], p["role"]) for p in parents] == [(store.resolve("tiny").id, "compressed_from")]


def test_sizes_shrink_and_quality_is_shown(cli, store, base):
    sizes = {}
    for method in ("gguf-f16", "gguf-q8_0", "gguf-q4_0"):
        sizes[method] = cli.json("compress", "tiny", "--method", method, "--eval-n", "0")["bytes"]
    assert sizes["gguf-q4_0"] < sizes["gguf-q8_0"] < sizes["gguf-f16"]
    listing = cli.json("compressed", "list")
    assert {r["method"] for r in listing} == {"gguf-f16", "gguf-q8_0", "gguf-q4_0"}
    assert all(r["bytes"] > 0 and r["ratio_vs_bf16"] > 0 and r["kl_mean"] is not None for r in listing)
    shown = cli("show", listing[0]["id"]).stdout
    assert "quality vs source" in shown and "perplexity" in shown and "next-token KL" in shown
    table = cli("compressed", "list").stdout
    assert "gguf-q4_0" in table and "KL" in table


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_bnb_methods_reload_as_the_same_quantized_model(cli, store, base, wide_model_dir, method):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    res = cli.json("compress", "tiny", "--method", method, "--eval-n", "0")
    d = store.path_of(res["compressed"]["id"])
    config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
              if method == "nf4" else BitsAndBytesConfig(load_in_8bit=True))
    fresh = AutoModelForCausalLM.from_pretrained(wide_model_dir, quantization_config=config, dtype=torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(d)
    a, b = fresh.state_dict(), reloaded.state_dict()
    assert set(a) == set(b)
    for k in a:  # quantized weights and their states: identical (no re-quantization drift)
        if a[k].dtype == torch.float32 and b[k].dtype == torch.bfloat16:  # unquantized, stored in 16 bits
            assert torch.equal(a[k].to(torch.bfloat16), b[k]), k
        else:
            assert torch.equal(a[k], b[k]), k
    assert any(v.dtype == torch.bfloat16 for v in b.values())
    assert res["ratio_vs_bf16"] < (0.75 if method == "nf4" else 1.0)
    q = res["quality"]
    assert q["load"]["strategy"] == f"stored-{method}" and q["perplexity"]["delta_pct"] != 0
    # eval loads it through the loading layer, as stored
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    rep = cli.json("eval", res["compressed"]["id"], "--data", "auto", "--limit", "2")
    assert rep["load"]["strategy"] == f"stored-{method}" and rep["loss"] > 0


def test_refusals_change_nothing(cli, store, base, tmp_path, wide_model_dir):
    d = tiny.build_tiny_adapter(wide_model_dir, tmp_path / "ad")
    cli.json("adapters", "import", d, "--base", "tiny", "--name", "ad")
    r = cli("compress", "ad", "--method", "gguf-q8_0")
    assert r.exit_code == 2 and "adapters are merged first" in r.stderr and "llora merge ad" in r.stderr
    r = cli("compress", "tiny", "--method", "gguf-q3")
    assert r.exit_code == 2 and "unknown compression method 'gguf-q3'" in r.stderr and "gguf-q4_k" in r.stderr
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    r = cli("compress", "auto", "--method", "nf4")
    assert r.exit_code == 2 and "compress a base or a merged checkpoint" in r.stderr
    r = cli("compress", "nope", "--method", "nf4")
    assert r.exit_code == 1 and "nope" in r.stderr
    assert store.list(kind="compressed") == [] and store.layout.leftovers() == []
    assert "Traceback" not in r.stderr


def test_modifiers_are_never_compressed(cli, store, base):
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    cli.json("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
             "--name", "mod", "max_steps=1")
    r = cli("compress", "mod", "--method", "gguf-q8_0")
    assert r.exit_code == 2 and "modifiers are never compressed" in r.stderr
    assert store.list(kind="compressed") == []


def test_truncated_gguf_is_reported_not_loaded(cli, store, base):
    res = cli.json("compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "0")
    path = store.path_of(res["compressed"]["id"]) / "model.gguf"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    v = cli("verify", res["compressed"]["id"])
    assert v.exit_code == 1 and "model.gguf" in v.stdout + v.stderr
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    r = cli("eval", res["compressed"]["id"], "--data", "auto", "--limit", "1")
    assert r.exit_code == 1 and "not a readable GGUF file" in r.stderr and "Traceback" not in r.stderr


def test_q4_k_blocks_against_gguf_dequantizer():
    """Our Q4_K bytes decode (with gguf's own dequantizer) to a closer approximation than Q4_0 at the same size,
    and rows that are not a multiple of 256 values fall back to Q5_0 like llama.cpp."""
    import gguf
    import numpy as np

    from llora_cli import ggufwrite, kquants

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 512)) * 0.05).astype(np.float32)
    x[3] = 0.0  # an all-zero row: scale 0, no division by zero
    x[5, :32] = 0.7  # a constant sub-block
    q = kquants.quantize_q4_k(x)
    assert q.shape == (32, 2 * kquants.BLOCK_BYTES)
    back = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q4_K)
    q40 = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0)
    back40 = gguf.quants.dequantize(q40, gguf.GGMLQuantizationType.Q4_0)
    err_k = float(np.sqrt(((back - x) ** 2).mean()))
    err_0 = float(np.sqrt(((back40 - x) ** 2).mean()))
    assert q.nbytes == q40.nbytes and err_k < 0.9 * err_0
    assert np.all(back[3] == 0)
    assert np.abs(back[5, :32] - 0.7).max() < 0.7 / 15
    assert ggufwrite.choose_type("Q4_K", (64, 512)) == "Q4_K"
    assert ggufwrite.choose_type("Q4_K", (64, 576)) == "Q5_0"
    assert ggufwrite.choose_type("Q4_K", (64, 48)) == "F16"
    assert ggufwrite.choose_type("Q8_0", (576,)) == "F32"


@pytest.mark.parametrize("method", ["gguf-q8_0", "nf4"])
def test_modifier_trains_on_a_compressed_base_as_stored(cli, store, base, method):
    comp = cli.json("compress", "tiny", "--method", method, "--eval-n", "0")["compressed"]
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    dry = cli.json("train", "--base", comp["id"], "--data", "auto", "--kind", "modifier", "--domain", "automation",
                   "--dry-run", "max_steps=2")
    assert dry["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert dry["trainable_parameters"] > 0
    res = cli.json("train", "--base", comp["id"], "--data", "auto", "--kind", "modifier", "--domain", "automation",
                   "--name", "mod", "max_steps=2")
    assert res["state"] == "trained"
    assert ("gguf-dequantized" if method.startswith("gguf") else "nf4 (stored)") in res["precision"]
    mod = store.resolve("mod")
    assert mod.base_hash == comp["content_hash"] and mod.quantization == method  # R6 checks against this base
    parents = {p["role"]: p["id"] for p in cli.json("show", "mod")["parents"]}
    assert parents["runs_on"] == comp["id"]
    rep = cli.json("eval", "mod", "--data", "auto", "--limit", "2")
    assert rep["loss"] > 0
    r = cli("train", "--base", comp["id"], "--data", "auto", "--kind", "modifier", "--domain", "automation",
            "--quantize", "nf4", "max_steps=1")
    assert r.exit_code == 2 and "already compressed" in r.stderr


def test_zstd_copy_is_kept_only_when_it_saves_space(cli, store, base):
    import zstandard

    f16 = cli.json("compress", "tiny", "--method", "gguf-f16", "--eval-n", "0", "--zstd")
    z = cli.json("show", f16["compressed"]["id"])["metadata"]["compression"]["zstd"]
    d = store.path_of(f16["compressed"]["id"])
    assert 0 < z["ratio"] <= 1 and z["bytes_in"] == (d / "model.gguf").stat().st_size
    if z["kept"]:  # then it round-trips to the same bytes and is a hashed file of the artifact
        packed = (d / "model.gguf.zst").read_bytes()
        assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == (d / "model.gguf").read_bytes()
        assert "model.gguf.zst" in {f["path"] for f in cli.json("show", f16["compressed"]["id"])["files"]}
        assert z["ratio"] < 0.98
    else:
        assert not (d / "model.gguf.zst").exists() and z["ratio"] == 1.0


def test_source_figures_are_cached_per_source_and_settings(cli, store, base):
    a = cli.json("compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "1")["quality"]
    cache = list((store.home / "cache" / "quality").glob("*.json"))
    assert len(cache) == 1 and store.resolve("tiny").content_hash in cache[0].name
    b = cli.json("compress", "tiny", "--method", "gguf-q4_0", "--eval-n", "1")["quality"]
    assert a["perplexity"]["source"] == b["perplexity"]["source"]
    assert {t: x["source"] for t, x in a["accuracy"].items()} == {t: x["source"] for t, x in b["accuracy"].items()}


def test_reuse_dequantized_dequantizes_a_gguf_file_once_and_gives_the_same_weights(cli, store, base, monkeypatch):
    from transformers import AutoModelForCausalLM

    from llora_cli import loading

    res = cli.json("compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "0")
    d = store.path_of(res["compressed"]["id"])
    want = loading.load_gguf_dequantized(d, torch.float32).state_dict()
    calls = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(a) or real(*a, **k))
    with loading.reuse_dequantized():
        first = loading.load_gguf_dequantized(d, torch.float32)
        with torch.no_grad():
            next(first.parameters()).add_(1.0)  # a change to one loaded model must not reach the next load
        second = loading.load_gguf_dequantized(d, torch.float32)
    loading.load_gguf_dequantized(d, torch.float32)  # outside the block: loaded again
    assert len(calls) == 2
    got = second.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
