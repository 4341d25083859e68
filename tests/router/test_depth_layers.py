"""Layer adapters and replaced_layers on a tiny 4-layer Llama: the KV cache stays consistent with layers
replaced (layer 0 included), the empty set is the unmodified model, and the model is restored bit for bit."""

from __future__ import annotations

import pytest
import tiny
import torch

from llora_cli.router.depth.layers import LayerAdapter, ReplacedLayer, decoder_layers, replaced_layers
from llora_store.errors import BadInput

PROMPTS = ["The capital of France is", "def add(a, b):"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: two threads on the two shared cores ran these tiny generates ~20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny.build_tiny_llama(tmp_path_factory.mktemp("depth") / "tiny4", layers=4, seed=3)
    tok = AutoTokenizer.from_pretrained(d)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def adapters():
    """Non-zero adapters (a fresh one is the identity, which would hide a mix-up between adapter and skip)."""
    torch.manual_seed(7)
    out = []
    for _ in range(4):
        a = LayerAdapter(32, width=8)
        torch.nn.init.normal_(a.up.weight, std=0.5)
        out.append(a)
    return out


def _generate(model, tok, *, use_cache: bool, n: int = 12):
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=use_cache,
                             pad_token_id=tok.pad_token_id, return_dict_in_generate=True)
    return out.sequences[:, enc["input_ids"].shape[1]:], out


def _logits(model, tok):
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        return model(**enc).logits


def test_fresh_adapter_is_the_identity():
    a = LayerAdapter(32)
    h = torch.randn(2, 5, 32)
    assert a.width == 64 and torch.equal(a(h), h)
    assert torch.equal(a.up.weight, torch.zeros(32, 64))
    assert a(h.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("layer_set", [{0}, {0, 2}, {1, 3}, {3}])
@pytest.mark.parametrize("with_adapters", [True, False])
def test_generate_with_cache_equals_without_under_a_replaced_set(model_and_tok, adapters, layer_set, with_adapters):
    model, tok = model_and_tok
    full, _ = _generate(model, tok, use_cache=True)
    ad = adapters if with_adapters else None
    with replaced_layers(model, layer_set, ad):
        cached, out = _generate(model, tok, use_cache=True)
        uncached, _ = _generate(model, tok, use_cache=False)
        logits_replaced = _logits(model, tok)
    assert torch.equal(cached, uncached), (cached, uncached)
    # the cache holds the kept layers only, renumbered 0..K-1, each with the whole sequence but the last token
    kept = 4 - len(layer_set)
    lengths = [out.cache.layers[i].get_seq_length() for i in range(len(out.cache.layers))]
    seq = out.sequences.shape[1] - 1
    assert lengths[:kept] == [seq] * kept and all(n == 0 for n in lengths[kept:])
    # the set did change the computation (else the equality above would prove nothing)
    assert not torch.allclose(logits_replaced, _logits(model, tok))
    assert cached.shape == full.shape


def test_replaced_layers_compute_no_attention(model_and_tok, adapters):
    model, tok = model_and_tok
    calls = [0] * 4
    hooks = [m.self_attn.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, m in enumerate(decoder_layers(model))]
    try:
        with replaced_layers(model, [0, 2], adapters):
            _generate(model, tok, use_cache=True, n=4)
    finally:
        for h in hooks:
            h.remove()
    assert calls[0] == 0 and calls[2] == 0
    assert calls[1] == calls[3] == 4  # prefill + 3 decode steps (the 4th token needs no forward)


def test_adapter_output_is_what_the_replaced_layer_passes_on(model_and_tok, adapters):
    """With layer 1 replaced, layer 2 receives adapters[1](input of layer 1), captured by hooks."""
    model, tok = model_and_tok
    layers = decoder_layers(model)
    seen = {}

    def keep(name):
        return lambda mod, args, kwargs, out: seen.__setitem__(name, (args[0] if args else kwargs["hidden_states"]))

    hooks = [layers[1].register_forward_hook(keep("in1"), with_kwargs=True)]
    _logits(model, tok)
    hooks[0].remove()
    with replaced_layers(model, [1], adapters):
        h = layers[2].register_forward_hook(keep("in2"), with_kwargs=True)
        try:
            _logits(model, tok)
        finally:
            h.remove()
    with torch.no_grad():
        assert torch.allclose(seen["in2"], adapters[1](seen["in1"]), atol=1e-6)


def test_empty_set_is_the_unmodified_model(model_and_tok, adapters):
    model, tok = model_and_tok
    before = _logits(model, tok)
    seq_before, _ = _generate(model, tok, use_cache=True)
    with replaced_layers(model, [], adapters) as chosen:
        assert chosen == []
        assert torch.equal(_logits(model, tok), before)
        assert torch.equal(_generate(model, tok, use_cache=True)[0], seq_before)


def test_model_restored_bit_for_bit_also_after_an_exception(model_and_tok, adapters):
    model, tok = model_and_tok
    layers = decoder_layers(model)
    modules = list(layers)
    before = _logits(model, tok)
    params_before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with replaced_layers(model, [0, 3], adapters):
            assert isinstance(layers[0], ReplacedLayer) and layers[0].adapter is adapters[0]
            assert [m.self_attn.layer_idx for m in (layers[1], layers[2])] == [0, 1]
            raise RuntimeError("boom")
    assert all(a is b for a, b in zip(layers, modules))
    assert [m.self_attn.layer_idx for m in layers] == [0, 1, 2, 3]
    assert set(model.state_dict()) == set(params_before)  # no adapter parameter left behind
    assert all(torch.equal(v, params_before[k]) for k, v in model.state_dict().items())
    assert torch.equal(_logits(model, tok), before)


def test_bad_layer_sets_are_refused(model_and_tok, adapters):
    model, _ = model_and_tok
    with pytest.raises(BadInput, match="layer 4 does not exist: the model has 4 decoder layers"):
        with replaced_layers(model, [4]):
            pass
    with pytest.raises(BadInput, match="cannot replace all 4 decoder layers"):
        with replaced_layers(model, [0, 1, 2, 3]):
            pass
    with pytest.raises(BadInput, match="3 layer adapters for a model with 4"):
        with replaced_layers(model, [1], adapters[:3]):
            pass
    with replaced_layers(model, [1]):
        with pytest.raises(BadInput, match="do not nest"):
            with replaced_layers(model, [2]):
                pass
    assert not any(isinstance(m, ReplacedLayer) for m in decoder_layers(model))
