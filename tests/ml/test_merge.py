"""`llora merge`: rules R1-R4, streaming merge vs PEFT, verification, discard, determinism, crash safety."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import tiny
import torch


@pytest.fixture
def base(cli, tiny_model_dir):
    return cli.json("bases", "add", tiny_model_dir, "--name", "tiny")


def import_adapter(cli, tmp_path, tiny_model_dir, name, **kw):
    d = tiny.build_tiny_adapter(tiny_model_dir, tmp_path / name, target_modules=("q_proj", "v_proj", "down_proj"), **kw)
    return cli.json("adapters", "import", d, "--base", "tiny", "--name", name)


def state_dict(path):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_merge_matches_peft_and_is_closer_to_fp64(cli, store, base, tmp_path, tiny_model_dir, variant):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llora_cli import mergeops
    from llora_cli.merge import read_adapter

    import_adapter(cli, tmp_path, tiny_model_dir, variant, dora=variant == "dora", rslora=variant == "rslora")
    adapter_dir = store.path_of(variant)
    res = cli.json("merge", variant, "--dtype", "fp32", "--keep-adapter")
    assert res["tensor_check"]["passed"] and res["full_check"]["passed"] and res["tensors_merged"] == 6
    ours = state_dict(store.path_of(res["merged"]["id"]))

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    theirs = {k: v for k, v in peft.merge_and_unload().state_dict().items()}
    config, modules, _ = read_adapter(adapter_dir)
    base_sd = state_dict(tiny_model_dir)
    for module, parts in modules.items():
        key = f"{module}.weight"
        W = base_sd[key].to(torch.float64)
        s = mergeops.lora_scale(config, module)
        A, B = torch.from_numpy(parts["A"]).double(), torch.from_numpy(parts["B"]).double()
        exact = W + s * (B @ A)
        if "m" in parts:
            exact = (torch.from_numpy(parts["m"]).double() / torch.linalg.norm(exact, dim=1)).unsqueeze(1) * exact
        err_ours = (ours[key].double() - exact).abs().max()
        err_peft = (theirs[key].double() - exact).abs().max()
        assert err_ours <= err_peft + 1e-7, (key, float(err_ours), float(err_peft))
        assert torch.allclose(ours[key], theirs[key], atol=1e-5)
    # plain transformers loads the merged directory, and it behaves like base + adapter
    merged = AutoModelForCausalLM.from_pretrained(store.path_of(res["merged"]["id"]))
    ids = torch.tensor([[1, 7, 42, 9]])
    assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-4)


def test_merge_records_lineage_and_discards_the_adapter(cli, store, base, tmp_path, tiny_model_dir):
    ad = import_adapter(cli, tmp_path, tiny_model_dir, "ad")
    res = cli.json("merge", "ad")
    assert res["adapter_state"] == "discarded" and res["dtype"] == "bf16"
    m = cli.json("show", res["merged"]["id"])
    assert m["kind"] == "merged" and m["state"] == "ready"
    assert sorted((p["id"], p["role"]) for p in m["parents"]) == sorted([(base["id"], "merge_base"), (ad["id"], "adapter")])
    v = m["metadata"]["verification"]
    assert v["tensors"]["passed"] and v["full"]["level"] == "full" and v["full"]["max_rel_error"] <= v["full"]["tolerance"]
    assert [e["event"] for e in cli.json("history", "ad")] == ["create", "merge", "discard"]
    assert not (store.layout.artifact_dir(ad["id"]) / "adapter_model.safetensors").exists()
    cfg = json.loads((store.path_of(res["merged"]["id"]) / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    assert store.verify(res["merged"]["id"]).ok


def test_merge_is_deterministic(cli, store, base, tmp_path, tiny_model_dir):
    import_adapter(cli, tmp_path, tiny_model_dir, "a1", seed=3)
    cli.json("adapters", "import", tmp_path / "a1", "--base", "tiny", "--name", "a2")
    h1 = cli.json("merge", "a1", "--verify", "tensors")["merged"]["content_hash"]
    h2 = cli.json("merge", "a2", "--verify", "tensors")["merged"]["content_hash"]
    assert h1 == h2


def test_merge_refusals(cli, store, base, tmp_path, tiny_model_dir, other_tiny_model_dir):
    import_adapter(cli, tmp_path, tiny_model_dir, "ad")
    cli.json("bases", "add", other_tiny_model_dir, "--name", "lookalike")
    r3 = cli("merge", "ad", "--base", "lookalike")
    assert r3.exit_code == 1 and "R3" in r3.stderr
    mod = store.create("modifier", "mod", state="trained", parents=[(base["id"], "runs_on")], base_hash=base["content_hash"])
    r1 = cli("merge", mod.id)
    assert r1.exit_code == 1 and "R1" in r1.stderr and "never merged" in r1.stderr
    training = store.create("adapter", "busy", state="training", parents=[(base["id"], "trained_on")],
                            base_hash=base["content_hash"])
    r2 = cli("merge", training.id)
    assert r2.exit_code == 1 and "R2" in r2.stderr and "'training'" in r2.stderr
    assert "--naive-qlora is for adapters trained on a quantized base" in cli("merge", "ad", "--naive-qlora").stderr
    assert cli("merge", "ad", "--dtype", "int4").exit_code == 2
    assert store.list(kind="merged") == [] and store.resolve("ad").state == "trained"
    assert store.layout.leftovers() == []


def test_merge_above_tolerance_changes_nothing(cli, store, base, tmp_path, tiny_model_dir, monkeypatch):
    from llora_cli import merge

    import_adapter(cli, tmp_path, tiny_model_dir, "ad")
    monkeypatch.setattr(merge, "TENSOR_TOL", 0.0)
    result = cli("merge", "ad")
    assert result.exit_code == 1 and "above the tolerance" in result.stderr
    assert store.list(kind="merged") == [] and store.resolve("ad").state == "trained"
    assert store.layout.leftovers() == []


def test_merge_that_loses_a_race_says_so(cli, store, base, tmp_path, tiny_model_dir, monkeypatch):
    """Two `llora merge` of one adapter at once: the loser, whose adapter files vanish under it when the winner
    discards them, is refused with what happened (found by tests/faults/test_concurrency.py: it was 'unexpected error:
    ValueError: Can't find adapter_config.json ... this is a bug in llora')."""
    from llora_cli import merge

    import_adapter(cli, tmp_path, tiny_model_dir, "ad")
    real_check = merge.full_check

    def winner_first(*args, **kwargs):  # the other merge commits and discards the adapter mid-way through this one
        store.discard("ad", command="llora merge ad (the other one)")
        return real_check(*args, **kwargs)

    monkeypatch.setattr(merge, "full_check", winner_first)
    result = cli("merge", "ad")
    assert result.exit_code == 1, result.stderr
    err = " ".join(result.stderr.split())
    assert "adapter 'ad'" in err and "went from 'trained' to 'discarded' while this merge ran" in err
    assert "unexpected error" not in err and "Traceback" not in err
    assert store.list(kind="merged") == [] and store.layout.leftovers() == []


def test_killed_merge_leaves_the_old_state(cli, store, base, tmp_path, tiny_model_dir, llora_home):
    ad = import_adapter(cli, tmp_path, tiny_model_dir, "ad")
    script = textwrap.dedent(f"""
        import os, signal
        from llora_store import open_store
        from llora_cli.merge import merge
        def progress(done, total):
            if done == 10:
                os.kill(os.getpid(), signal.SIGKILL)
        merge(open_store({str(llora_home)!r}), "ad", progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert store.list(kind="merged") == []
    assert store.resolve("ad").state == "trained" and store.verify("ad").ok
    known = {a.id for a in store.list()}
    assert {p.name for p in store.layout.artifacts.iterdir()} <= known  # no half-written merged dir
    assert len(store.layout.leftovers()) == 1
    store.gc()
    assert store.layout.leftovers() == []
    assert cli.json("merge", ad["id"])["merged"] is not None  # and the merge can simply run again


def test_qlora_round_trip_matches_bitsandbytes(tiny_model_dir):
    """The NF4 round trip reproduces exactly the weights a bnb-quantized model computes with."""
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from llora_cli import mergeops

    q = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.float32))
    layer = q.model.layers[0].self_attn.q_proj
    seen = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    original = state_dict(tiny_model_dir)["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(mergeops.nf4_round_trip(original), seen)
    assert not torch.equal(original, seen)


def test_int8_round_trip_matches_bitsandbytes(tiny_model_dir):
    """The int8 round trip uses the same int8 codes and row scales as a bnb LLM.int8 model (its weights are
    stored as nothing else), and dequantizes them to the same numbers."""
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from llora_cli import mergeops

    q = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                             quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    original = state_dict(tiny_model_dir)["model.layers.1.mlp.down_proj.weight"]
    weight = q.model.layers[1].mlp.down_proj.weight
    codes, scales, _ = F.int8_vectorwise_quant(original.to(torch.float16))
    assert torch.equal(codes, weight.CB) and torch.equal(scales, weight.SCB)
    seen = F.int8_vectorwise_dequant(weight.CB, weight.SCB).float()
    assert torch.equal(mergeops.int8_round_trip(original), seen)
    assert 0 < float((seen - original).abs().max()) < 1e-2 * float(original.abs().max())


def test_qlora_adapter_merge_and_naive_flag(cli, store, base):
    cli.json("data", "make", "automation", "--n", "24", "--name", "auto")
    cli.json("train", "--base", "tiny", "--data", "auto", "--name", "q", "--quantize", "nf4", "max_steps=3",
             "learning_rate=0.01")
    cli.json("train", "--base", "tiny", "--data", "auto", "--name", "q2", "--quantize", "nf4", "max_steps=3",
             "learning_rate=0.01")
    good = cli.json("merge", "q", "--dtype", "fp32")
    assert good["qlora"] == "nf4" and good["full_check"]["passed"]
    m = cli.json("show", good["merged"]["id"])
    assert m["metadata"]["merge"]["qlora_merge"] == "round-trip"
    unmeasured = cli("merge", "q2", "--naive-qlora", "--verify", "tensors")  # R4: a naive merge records its error
    assert unmeasured.exit_code != 0 and "--naive-qlora needs --verify full" in unmeasured.stderr
    assert store.resolve("q2").state == "trained"
    naive = cli.json("merge", "q2", "--dtype", "fp32", "--naive-qlora")
    nm = cli.json("show", naive["merged"]["id"])
    assert nm["metadata"]["merge"]["qlora_merge"] == "naive"
    recorded = nm["metadata"]["verification"]["naive_qlora_error"]
    assert recorded["max_rel_error"] > 10 * good["full_check"]["max_rel_error"]
    assert store.resolve("q").quantization == "nf4"


def test_eval_of_a_qlora_adapter(cli, base):
    cli.json("data", "make", "automation", "--n", "24", "--name", "auto")
    cli.json("train", "--base", "tiny", "--data", "auto", "--name", "q", "--quantize", "nf4", "max_steps=2")
    rep = cli.json("eval", "q", "--data", "auto", "--limit", "3")
    assert rep["n"] == 3 and rep["loss"] > 0


def test_sharded_output_with_index_loads_in_transformers(cli, store, base, tmp_path, tiny_model_dir, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llora_cli import merge

    monkeypatch.setattr(merge, "SHARD_BYTES", 16_000)
    import_adapter(cli, tmp_path, tiny_model_dir, "ad")
    adapter_copy = tmp_path / "ad"
    res = cli.json("merge", "ad", "--dtype", "fp32")
    out = store.path_of(res["merged"]["id"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    merged = AutoModelForCausalLM.from_pretrained(out)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_copy)
    ids = torch.tensor([[3, 8, 21]])
    assert torch.allclose(merged(ids).logits, ref(ids).logits, atol=1e-4)


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_blocked_merge_kernel_matches_torch(monkeypatch, dora, dtype):
    """The numpy kernel, block by block, gives torch's result of PEFT's formula, bit for bit after the cast."""
    from llora_cli import mergeops

    monkeypatch.setattr(mergeops, "BLOCK_ELEMENTS", 3 * 96)  # 3 rows per block, last block partial (40 rows)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 96, generator=g).to(torch.bfloat16)
    A, B = torch.randn(8, 96, generator=g) * 0.1, torch.randn(40, 8, generator=g) * 0.1
    m = torch.rand(40, generator=g) + 0.5 if dora else None
    x = torch.randn(4, 96, generator=g)
    bits = W.view(torch.int16).numpy().view("uint16")
    out, fig = mergeops.merge_checked(bits, "BF16", A.numpy(), B.numpy(), 2.0, x.numpy(), dtype,
                                      m.numpy() if dora else None)
    merged = W.float() + (B @ A) * 2.0
    if dora:
        merged = (m / torch.linalg.norm(merged, dim=1)).unsqueeze(1) * merged
    torch_dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]
    expected = merged.to(torch_dtype)
    got = torch.from_numpy(mergeops.to_f32(out, dtype))
    if dora:  # the row norm is summed in a different order: at most one rounding step apart
        assert torch.allclose(got, expected.float(), rtol=mergeops.UNIT_ROUNDOFF[dtype] * 2 + 1e-6, atol=0)
    else:
        assert torch.equal(got, expected.float())
    ref = merged @ x.T
    assert fig["max_ref"] == pytest.approx(float(ref.abs().max()), rel=1e-5)
    assert fig["max_diff"] / fig["max_ref"] < 1e-5 and fig["n"] == 160
    assert fig["cast_ratio"] <= mergeops.UNIT_ROUNDOFF[dtype]


def test_bf16_conversions_match_torch():
    from llora_cli import mergeops

    x = torch.cat([torch.randn(10000) * 10, torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, 1e-40])])
    bits = mergeops.from_f32(x.numpy(), "BF16")
    assert (bits == x.bfloat16().view(torch.int16).numpy().view("uint16")).all()
    assert torch.equal(torch.from_numpy(mergeops.to_f32(bits, "BF16")), x.bfloat16().float())
    nan = mergeops.from_f32(torch.tensor([float("nan")]).numpy(), "BF16")
    assert torch.isnan(torch.from_numpy(nan.view("int16")).view(torch.bfloat16)).all()
