"""The loading layer: each strategy loads a model whose logits match the fp32 load; eval goes through it."""

from __future__ import annotations

import dataclasses

import pytest

from llora_cli import loading


@pytest.fixture
def fp32_logits(tiny_model_dir):
    import torch

    tok, model, plan = loading.load_model(tiny_model_dir, plan=dataclasses.replace(
        loading.plan_for_dir(tiny_model_dir, available=10**12, device="cpu")))
    assert plan.strategy == "full" and plan.dtype == "fp32"
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        return ids, model(**ids).logits


@pytest.mark.parametrize("strategy,dtype,tol", [("full-bf16", "bf16", 0.05), ("offload", "bf16", 0.05)])
def test_strategies_load_equivalent_models(tiny_model_dir, fp32_logits, tmp_path, strategy, dtype, tol):
    import torch

    ids, ref = fp32_logits
    need = loading.plan_for_dir(tiny_model_dir, available=10**12, device="cpu").load_bytes
    # the planner picks the strategy from the memory it is given
    available = {"full-bf16": int(need["bf16"] / 0.8) + 1, "offload": int(need["nf4"] / 0.8) - 1}[strategy]
    plan = loading.plan_for_dir(tiny_model_dir, available=available, device="cpu")
    assert plan.strategy == strategy and plan.dtype == dtype
    _, model, _ = loading.load_model(tiny_model_dir, plan=plan)
    with torch.inference_mode():
        got = model(**ids).logits.float()
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert 0 < rel < tol  # bf16 weights: close to fp32, not identical


def test_adapter_is_attached_and_changes_logits(tiny_model_dir, tiny_adapter_dir, fp32_logits):
    import torch
    from peft import PeftModel

    ids, ref = fp32_logits
    _, model, plan = loading.load_model(tiny_model_dir, tiny_adapter_dir)
    assert isinstance(model, PeftModel) and plan.artifact["kind"] == "adapter"
    with torch.inference_mode():
        got = model(**ids).logits
    assert float((got - ref).abs().max()) > 1e-3


def test_eval_records_the_loading_choice(cli, store, tiny_model_dir, monkeypatch):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    rep = cli.json("eval", "tiny", "--data", "auto", "--limit", "2")
    assert rep["load"] == {"strategy": "full", "dtype": "fp32", "device": "cpu"}
    need = loading.plan_for_dir(store.path_of(store.resolve("tiny").id), available=10**12, device="cpu").load_bytes
    monkeypatch.setattr(loading, "available_memory", lambda: int(need["bf16"] / 0.8) + 1)
    low = cli.json("eval", "tiny", "--data", "auto", "--limit", "2")
    assert low["load"] == {"strategy": "full-bf16", "dtype": "bf16", "device": "cpu"}
    assert low["loss"] == pytest.approx(rep["loss"], rel=0.05) and low["loss"] != rep["loss"]


def test_model_cache_loads_a_base_once_and_adapter_runs_match_fresh_loads(tiny_model_dir, tiny_adapter_dir,
                                                                          fp32_logits):
    import torch
    from peft import PeftModel

    ids, ref = fp32_logits
    _, fresh, _ = loading.load_model(tiny_model_dir, tiny_adapter_dir)
    with torch.inference_mode():
        want = fresh(**ids).logits
    cache = loading.ModelCache()
    for _ in range(2):  # attached, removed, attached again: the same numbers each time
        with cache.use(tiny_model_dir, tiny_adapter_dir) as (_, model, _):
            assert isinstance(model, PeftModel)
            with torch.inference_mode():
                assert torch.equal(model(**ids).logits, want)
        with cache.use(tiny_model_dir) as (_, model, plan):
            assert not isinstance(model, PeftModel) and plan.strategy == "full"
            with torch.inference_mode():
                assert torch.equal(model(**ids).logits, ref)  # the adapter left no trace in the base
    assert cache.loads == 1


def test_4bit_layers_compute_the_same_weights_in_eval_mode(tiny_model_dir):
    """bitsandbytes >= 0.49 repacks a Linear4bit for a bf16 CPU kernel at its first eval-mode forward on CPUs with
    AVX512-BF16 (forced on here, so every machine takes that branch): it fails on the tiny model's 32-value rows and
    would narrow the absmax elsewhere. After keep_bnb_4bit_unpacked, eval mode computes what training mode does."""
    import torch
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from llora_cli.loading import keep_bnb_4bit_unpacked

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 14 and any(m.in_features < 64 for m in layers)
    for m in layers:
        m.support_avx512bf16_for_cpu = True  # what a CPU with AVX512-BF16 reports
    assert keep_bnb_4bit_unpacked(model) is model
    assert not any(m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.tensor([[3, 8, 21, 5]])
    model.train()
    with torch.no_grad():
        trained = model(ids).logits
    model.eval()
    with torch.no_grad():
        evaluated = model(ids).logits  # failed before: shape '[32, 0]' is invalid for input of size 16
    assert torch.equal(trained, evaluated)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
