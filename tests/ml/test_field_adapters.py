"""Field faults of issue 11 (merge and import): adapters and bases shaped the way other tools produce them.

Each case is a small input that broke before, with its expected value written down: a merge into a stored nf4 base
(hung forever), modules_to_save copies of the head and the embeddings (refused for the wrong reason), keys saved
with the adapter name (accepted, then refused), existing LoRAs imported as modifiers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import tiny


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory) -> Path:
    """hidden 128: bitsandbytes' CPU 4-bit kernels need rows of at least 64 values."""
    return tiny.build_tiny_llama(tmp_path_factory.mktemp("wide") / "wide-llama", hidden=128)


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory) -> Path:
    """A Llama whose output head is tied to its input embedding (as SmolLM2's is): no lm_head.weight on disk."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tied") / "tied-llama"
    out.mkdir(parents=True)
    tok = tiny.build_tokenizer(out)
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def _peft_model(base_dir: Path, *, modules_to_save=(), target_modules=("q_proj", "v_proj"), seed: int = 0):
    """A PeftModel on ``base_dir`` with non-zero LoRA B and, for each module to save, a trained copy that differs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules),
                                                  modules_to_save=list(modules_to_save) or None))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
            if "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.05)
    return peft_model.eval()


def _logits(model, tokenizer_dir: Path):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(["def add(a, b): return a + b", "hello world"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(**ids).logits.float()


def _merged_logits(store, merged_id: str, tokenizer_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(store.path_of(merged_id), dtype=torch.float32).eval()
    return _logits(model, tokenizer_dir), model


# -- 1. worker threads end the command; the stored-nf4 case merges ------------------------------------------------

def _finishes(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; the test fails (instead of hanging) if it does not return in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} did not return within {seconds} s"
    return box


def test_shard_writer_short_write_raises_instead_of_hanging(tmp_path):
    import numpy as np

    from llora_cli.formats.shards import ShardWriter

    w = ShardWriter(tmp_path / "x.safetensors", [("a", "F32", (4,), 16), ("b", "F32", (4,), 16)])
    w.write("a", np.zeros(4, dtype=np.float32))
    w.close()  # "b" never written: the writer thread records an error after the sentinel
    box = _finishes(w.wait)
    assert w.size == 184  # 8-byte length + 160-byte header + two 16-byte tensors
    assert isinstance(box.get("error"), RuntimeError) and "wrote 168 of 184 planned bytes" in str(box["error"])


def test_shard_writer_error_in_the_hasher_does_not_hang(tmp_path):
    import numpy as np

    from llora_cli.formats.shards import BufferPool, ShardWriter

    class Broken(BufferPool):
        def give(self, array):
            raise OSError("hasher failed")

    w = ShardWriter(tmp_path / "x.safetensors", [(f"t{i}", "F32", (4,), 16) for i in range(6)], Broken())

    def write_all():
        for i in range(6):
            w.write(f"t{i}", np.zeros(4, dtype=np.float32))

    first = _finishes(write_all)
    w.close()
    box = _finishes(w.wait)
    assert "hasher failed" in str(first.get("error") or box.get("error"))


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_merge_into_a_stored_nf4_base_dequantizes_and_matches_peft(cli, store, wide_model_dir, dtype, tol):
    """The field case: nf4-compressed base, adapter trained on it, merge. Before: hung forever."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llora_cli import modelfiles
    from llora_cli.loading import save_dequantized

    cli.json("bases", "add", wide_model_dir, "--name", "wide")
    comp = cli.json("compress", "wide", "--method", "nf4", "--eval-n", "0")["compressed"]
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    cli.json("train", "--base", comp["id"], "--data", "auto", "--kind", "adapter", "--name", "qad", "max_steps=2",
             "learning_rate=5e-2")
    adapter_dir = store.path_of(store.resolve("qad").id)
    r = _finishes(lambda: cli("merge", "qad", "--dtype", dtype, "--keep-adapter", "--name", "m"), 300)
    assert "error" not in r, r.get("error")
    assert r["value"].exit_code == 0, r["value"].stderr
    merged = store.resolve("m")
    meta = merged.meta["merge"]
    assert meta["qlora_merge"] == "dequantized-base" and meta["base_storage"]["storage"] == "nf4"
    assert merged.meta["verification"]["full"]["passed"] is True
    mdir = store.path_of(merged.id)
    assert "quantization_config" not in json.loads((mdir / "config.json").read_text())
    names = modelfiles.model_tensors(mdir)
    assert not [n for n in names if any(s in n for s in ("absmax", "quant_map", "quant_state", "SCB"))]
    assert {t.dtype for t in names.values()} == {"F32" if dtype == "fp32" else "BF16"}
    # reference: PEFT on the same base, dequantized by transformers/bitsandbytes
    ref_dir = store.new_staging("refdequant")
    save_dequantized(store.path_of(comp["id"]), ref_dir)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32),
                                    adapter_dir).eval()
    want = _logits(ref, wide_model_dir)
    got, _ = _merged_logits(store, merged.id, wide_model_dir)
    assert float((got - want).abs().max() / want.abs().max()) < tol
    # weight by weight: the merged q_proj is exactly bitsandbytes' dequantized nf4 weight + the LoRA delta (what the
    # adapter trained against), not the uncompressed source's weight + delta
    import bitsandbytes.functional as F
    from safetensors.torch import load_file

    stored = AutoModelForCausalLM.from_pretrained(store.path_of(comp["id"]), dtype=torch.float32)
    q = stored.model.layers[1].self_attn.q_proj.weight
    deq = F.dequantize_4bit(q.data, q.quant_state).float()
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    key = "base_model.model.model.layers.1.self_attn.q_proj"
    delta = (lora[f"{key}.lora_B.weight"].float() @ lora[f"{key}.lora_A.weight"].float()) * (cfg["lora_alpha"] / cfg["r"])
    merged_q = load_file(str(mdir / "model.safetensors"))["model.layers.1.self_attn.q_proj.weight"].float()
    source_q = load_file(str(wide_model_dir / "model.safetensors"))["model.layers.1.self_attn.q_proj.weight"]
    err = float((merged_q - (deq + delta)).abs().max())
    assert err <= (1e-6 if dtype == "fp32" else 2.0**-8 * float((deq + delta).abs().max()))
    assert float((merged_q - (source_q + delta)).abs().max()) > 10 * max(err, 1e-6)  # nf4 error is much larger


def test_killed_merge_on_a_compressed_base_is_cleaned_by_gc(cli, store, wide_model_dir, llora_home):
    cli.json("bases", "add", wide_model_dir, "--name", "wide")
    comp = cli.json("compress", "wide", "--method", "gguf-q8_0", "--eval-n", "0")["compressed"]
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    cli.json("train", "--base", comp["id"], "--data", "auto", "--kind", "adapter", "--name", "gad", "max_steps=1")
    script = textwrap.dedent(f"""
        import os, signal
        from llora_store import open_store
        from llora_cli.merge import merge
        def progress(done, total):
            if done == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        merge(open_store({str(llora_home)!r}), "gad", progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert len(store.layout.leftovers()) == 2  # the merged staging dir and the dequantized base
    gc = cli.json("db", "gc")
    assert len(gc["staging_removed"]) == 2 and store.layout.leftovers() == []
    res = cli.json("merge", "gad", "--dtype", "fp32")
    assert res["merged"] is not None and res["full_check"]["passed"] is True


# -- 2. modules_to_save ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("saved", [("lm_head",), ("embed_tokens",), ("lm_head", "embed_tokens")])
def test_modules_to_save_merge_reproduces_peft_on_a_tied_base(cli, store, tied_model_dir, tmp_path, saved):
    peft_model = _peft_model(tied_model_dir, modules_to_save=saved)
    want = _logits(peft_model, tied_model_dir)
    peft_model.save_pretrained(tmp_path / "lora")
    cli.json("bases", "add", tied_model_dir, "--name", "tied")
    imp = cli("adapters", "import", tmp_path / "lora", "--base", "tied", "--name", "mts")
    assert imp.exit_code == 0, imp.stderr
    assert "llamacpp will refuse it" in imp.stderr and "trains whole modules" in imp.stderr
    res = cli.json("merge", "mts", "--dtype", "fp32")
    assert res["full_check"]["passed"] is True
    got, model = _merged_logits(store, res["merged"]["id"], tied_model_dir)
    assert (got - want).abs().max() / want.abs().max() < 1e-5
    config = json.loads((store.path_of(res["merged"]["id"]) / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # the head now differs from the embedding: stored apart
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_modules_to_save_on_an_untied_base_replaces_the_head(cli, store, tiny_model_dir, tmp_path):
    peft_model = _peft_model(tiny_model_dir, modules_to_save=("lm_head",))
    want = _logits(peft_model, tiny_model_dir)
    peft_model.save_pretrained(tmp_path / "lora")
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("adapters", "import", tmp_path / "lora", "--base", "tiny", "--name", "mts")
    res = cli.json("merge", "mts", "--dtype", "fp32")
    got, _ = _merged_logits(store, res["merged"]["id"], tiny_model_dir)
    assert (got - want).abs().max() / want.abs().max() < 1e-5
    assert json.loads((store.path_of(res["merged"]["id"]) / "config.json").read_text())["tie_word_embeddings"] is False


def test_modules_to_save_modifier_runs_on_transformers_and_llamacpp_refuses_it_by_name(cli, store, tiny_model_dir,
                                                                                       tmp_path):
    peft_model = _peft_model(tiny_model_dir, modules_to_save=("lm_head",))
    peft_model.save_pretrained(tmp_path / "lora")
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    mod = cli.json("modifiers", "import", tmp_path / "lora", "--base", "tiny", "--domain", "code", "--name", "mts")
    assert mod["state"] == "trained"
    assert "modules_to_save" in mod["metadata"]["support"]["llamacpp"] or "whole modules" in mod["metadata"]["support"]["llamacpp"]
    from llora_cli import gguflora

    with pytest.raises(gguflora.NotForLlamaCpp, match="lm_head"):
        gguflora.convert(store.path_of(mod["id"]), tiny_model_dir, tmp_path / "x.gguf")
    cli.json("deploy", "tiny")
    cli.json("deploy", "mts")
    r = cli("export", "tiny", "--format", "vllm", "--to", tmp_path / "out")
    assert r.exit_code == 2 and "cannot be exported to vLLM: it trains whole modules (lm_head)" in r.stderr
    assert not (tmp_path / "out" / "tiny-vllm").exists()
    from llora_cli.engine import resolve_deployment
    from llora_cli.engine.transformers import TransformersEngine

    engine = TransformersEngine(store, resolve_deployment(store))
    prompt = "def add(a, b):"
    ids = engine.encode(prompt, None)
    reply = engine.generate(prompt, modifier=store.resolve("mts"), max_tokens=6)
    # the saved head differs from the base's: the transformers engine applies it, as PEFT itself does
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.inference_mode():
        ref = peft_model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = peft_model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
    want = tok.decode(ref[0, len(ids):], skip_special_tokens=True)
    assert reply.text.strip() == want.strip()
    assert tok.decode(plain[0, len(ids):], skip_special_tokens=True) != want  # the head matters on this input
    del base


# -- 3. keys with the adapter name -------------------------------------------------------------------------------

def test_live_state_dict_keys_are_normalized_at_import(cli, store, tiny_model_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    peft_model = _peft_model(tiny_model_dir, modules_to_save=("lm_head",))
    want = _logits(peft_model, tiny_model_dir)
    peft_model.save_pretrained(tmp_path / "saved")
    live = tmp_path / "live"
    live.mkdir()
    sd = {k: v.contiguous() for k, v in peft_model.state_dict().items() if "lora_" in k or "modules_to_save" in k
          or "original_module" in k}
    assert any(".lora_A.default.weight" in k for k in sd) and any("modules_to_save.default" in k for k in sd)
    save_file(sd, str(live / "adapter_model.safetensors"))
    cfg = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    cfg.pop("modules_to_save")  # a hand-written config often forgets it; the key names say it
    (live / "adapter_config.json").write_text(json.dumps(cfg))
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    art = cli.json("adapters", "import", live, "--base", "tiny", "--name", "live")
    assert art["metadata"]["source"]["normalized"]["adapter_name"] == "default"
    with safe_open(str(store.path_of(art["id"]) / "adapter_model.safetensors"), "pt") as f:
        with safe_open(str(tmp_path / "saved" / "adapter_model.safetensors"), "pt") as g:
            assert sorted(f.keys()) == sorted(g.keys())  # PEFT's saved names exactly
    res = cli.json("merge", "live", "--dtype", "fp32")
    got, _ = _merged_logits(store, res["merged"]["id"], tiny_model_dir)
    assert (got - want).abs().max() / want.abs().max() < 1e-5


def test_import_refuses_what_no_later_step_can_place(cli, store, tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    peft_model = _peft_model(tiny_model_dir)
    peft_model.save_pretrained(tmp_path / "ok")
    cfg = (tmp_path / "ok" / "adapter_config.json").read_text()
    cases = {
        "two": ({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.a.weight": torch.zeros(4, 32),
                 "base_model.model.model.layers.0.self_attn.q_proj.lora_B.a.weight": torch.zeros(32, 4),
                 "base_model.model.model.layers.0.self_attn.q_proj.lora_A.b.weight": torch.zeros(4, 32),
                 "base_model.model.model.layers.0.self_attn.q_proj.lora_B.b.weight": torch.zeros(32, 4)},
                "several adapters (a, b)"),
        "full": ({"base_model.model.model.layers.0.self_attn.q_proj.weight": torch.zeros(32, 32)},
                 "which the adapter's modules_to_save does not list"),
        "half": ({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32)},
                 "incomplete LoRA pair"),
        "odd": ({"base_model.model.model.layers.0.self_attn.q_proj.scales": torch.zeros(4)},
                "neither a LoRA tensor"),
    }
    for name, (tensors, message) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(cfg)
        save_file(tensors, str(d / "adapter_model.safetensors"))
        r = cli("adapters", "import", d, "--base", "tiny", "--name", name)
        assert r.exit_code == 2 and message in r.stderr, (name, r.stderr)
    assert store.list(kind="adapter") == [] and store.layout.leftovers() == []


def test_embedding_lora_merges_like_peft(cli, store, tiny_model_dir, tmp_path):
    peft_model = _peft_model(tiny_model_dir, target_modules=("embed_tokens", "q_proj"))
    want = _logits(peft_model, tiny_model_dir)
    peft_model.save_pretrained(tmp_path / "lora")
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    r = cli("adapters", "import", tmp_path / "lora", "--base", "tiny", "--name", "emb")
    assert r.exit_code == 0 and "llamacpp will refuse it: it puts LoRA on embeddings (model.embed_tokens)" in r.stderr
    res = cli.json("merge", "emb", "--dtype", "fp32")
    got, _ = _merged_logits(store, res["merged"]["id"], tiny_model_dir)
    assert (got - want).abs().max() / want.abs().max() < 1e-5


# -- 5. existing adapters as modifiers ---------------------------------------------------------------------------

def test_modifiers_import_checks_the_base_and_serves(cli, store, tiny_model_dir, other_tiny_model_dir, tiny_adapter_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("bases", "add", other_tiny_model_dir, "--name", "other")
    mod = cli.json("modifiers", "import", tiny_adapter_dir, "--base", "tiny", "--domain", "code", "--name", "ext")
    assert (mod["kind"], mod["state"], mod["domain"]) == ("modifier", "trained", "code")
    parents = {p["role"]: p["id"] for p in mod["parents"]}
    assert parents == {"runs_on": store.resolve("tiny").id}
    assert mod["metadata"]["support"] == {"merge": None, "transformers": None, "llamacpp": None,
                                          "export_vllm_ollama": None}
    assert store.resolve("ext").base_hash == store.resolve("tiny").content_hash
    r = cli("modifiers", "import", tiny_adapter_dir, "--base", "tiny", "--name", "nodomain")
    assert r.exit_code == 2 and "--domain" in r.stderr
    r = cli("modifiers", "import", tiny_adapter_dir, "--base", "tiny", "--domain", "Has Spaces", "--name", "bad")
    assert r.exit_code == 2 and "short lowercase word" in r.stderr
    r1 = cli("merge", "ext")
    assert r1.exit_code == 1 and "R1" in r1.stderr  # modifiers are never merged
    cli.json("deploy", "other")
    r6 = cli("deploy", "ext")
    assert r6.exit_code == 1  # its base is not deployed
    cli.json("retire", "other")
    cli.json("deploy", "tiny")
    cli.json("deploy", "ext")
    out = cli.json("run", "--modifier", "code", "--max-tokens", "3", "--json", "hello")
    assert out["modifier"]["name"] == "ext" and out["engine"] == "transformers"


# -- 4. nf4 on short rows ----------------------------------------------------------------------------------------

def test_nf4_keeps_short_row_layers_unquantized_and_records_them(cli, store, tiny_model_dir, tmp_path):
    """hidden 32: q/k/v/o/gate/up rows are 32 values (bitsandbytes' CPU 4-bit kernel fails on them), down_proj's 64."""
    import torch
    from transformers import AutoModelForCausalLM

    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    r = cli("compress", "tiny", "--method", "nf4", "--eval-n", "1", "--json")
    assert r.exit_code == 0, r.stderr
    comp = json.loads(r.stdout)["compressed"]
    detail = store.resolve(comp["id"]).meta["compression"]
    short = [f"model.layers.{i}.{m}" for i in range(2) for m in ("mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                                                 "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj")]
    assert detail["unquantized_modules"] == sorted(short)
    assert "shorter than 64" in detail["unquantized_reason"]
    model = AutoModelForCausalLM.from_pretrained(store.path_of(comp["id"]), dtype=torch.float32)
    layer = model.model.layers[0]
    assert type(layer.mlp.down_proj).__name__ == "Linear4bit" and type(layer.self_attn.q_proj) is torch.nn.Linear
    assert store.resolve(comp["id"]).meta["quality"]["perplexity"]["compressed"] > 0


def test_nf4_with_no_quantizable_layer_is_refused_before_any_work(cli, store, tmp_path):
    small = tiny.build_tiny_llama(tmp_path / "small", hidden=16)
    cli.json("bases", "add", small, "--name", "small")
    r = cli("compress", "small", "--method", "nf4")
    assert r.exit_code == 2 and "no linear layer of this model can be quantized to nf4" in r.stderr
    assert "Traceback" not in r.stderr and "gguf-q8_0" in r.stderr
    assert store.list(kind="compressed") == [] and store.layout.leftovers() == []
