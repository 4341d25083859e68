"""Seed 002's greedy depth search on a tiny 4-layer Llama: the batched per-row mixing scores every set exactly as
replacing that set alone does (layers.replaced_layers, one forward per set), and the greedy path equals a
brute-force greedy search built on that independent scoring."""

from __future__ import annotations

import math

import pytest
import tiny
import torch

from llora_cli.router.depth.layers import LayerAdapter, decoder_layers, replaced_layers
from llora_cli.router.depth.search import MixedLayer, greedy_search, mixed_layers, score_sets
from llora_store.errors import BadInput

PROMPT = "The capital of France is"
N_ANSWER = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/router/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny.build_tiny_llama(tmp_path_factory.mktemp("search") / "tiny4", layers=4, seed=3)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=N_ANSWER, min_new_tokens=N_ANSWER,
                             do_sample=False, pad_token_id=tok.eos_token_id)
    answer = out[0, len(prompt):].tolist()
    torch.manual_seed(11)
    adapters = []
    for i in range(4):  # different strengths, so that layers differ in how much replacing them changes
        a = LayerAdapter(32, width=8)
        torch.nn.init.normal_(a.up.weight, std=0.05 * (i + 1))
        adapters.append(a.eval())
    return model, prompt, answer, adapters


def _one_set_score(model, adapters, ids, start, layers) -> float:
    """The reference: one forward with exactly ``layers`` replaced (layers.replaced_layers), full logits."""
    x = torch.tensor([ids])
    with torch.no_grad():
        full = model(input_ids=x, use_cache=False).logits[0, start - 1:-1].argmax(-1)
        with replaced_layers(model, layers, adapters):
            got = model(input_ids=x, use_cache=False).logits[0, start - 1:-1].argmax(-1)
    return (got == full).float().mean().item()


def _brute_greedy(model, adapters, ids, start, threshold, limit):
    chosen, path = [], []
    while len(chosen) < limit:
        cands = [c for c in range(len(adapters)) if c not in chosen]
        scores = [_one_set_score(model, adapters, ids, start, chosen + [c]) for c in cands]
        best = max(range(len(cands)), key=lambda j: (scores[j], -cands[j]))
        if scores[best] < threshold:
            break
        chosen.append(cands[best])
        path.append((cands[best], scores[best]))
    return path


def test_batched_mixing_scores_each_set_as_replacing_it_alone(setup):
    model, prompt, answer, adapters = setup
    ids, start = prompt + answer, len(prompt)
    sets = [[], [0], [1], [3], [0, 2], [1, 2, 3], [0, 1, 3]]
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, start - 1:-1].argmax(-1)
    with mixed_layers(model, adapters) as mixed:
        got = score_sets(model, mixed, ids, start, sets, reference, batch=3)  # chunks of 3: 3 passes for 7 sets
    want = [_one_set_score(model, adapters, ids, start, s) for s in sets]
    assert got == pytest.approx(want, abs=1e-9)
    assert got[0] == 1.0
    assert len(set(got)) > 2  # the sets really differ (else the comparison would prove little)


def test_mixed_layers_restores_the_model(setup):
    model, prompt, answer, adapters = setup
    before = list(decoder_layers(model))
    x = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(input_ids=x).logits
    with pytest.raises(RuntimeError), mixed_layers(model, adapters) as mixed:
        assert all(isinstance(m, MixedLayer) for m in decoder_layers(model)) and len(mixed) == 4
        raise RuntimeError("boom")
    assert list(decoder_layers(model)) == before
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, logits)


@pytest.mark.parametrize("threshold", [0.99, 0.8, 0.5, 0.01])
def test_greedy_search_equals_a_brute_force_greedy(setup, threshold):
    model, prompt, answer, adapters = setup
    res = greedy_search(model, adapters, prompt, answer, threshold=threshold, max_fraction=0.75, batch=2)
    limit = math.floor(0.75 * 4)
    path = _brute_greedy(model, adapters, prompt + answer, len(prompt), threshold, limit)
    assert [(s["added"], s["score"]) for s in res["steps"]] == [(c, pytest.approx(v, abs=1e-6)) for c, v in path]
    assert res["layers"] == sorted(c for c, _ in path)
    assert all(s["score"] >= threshold for s in res["steps"])
    assert [s["layers"] for s in res["steps"]] == [sorted(c for c, _ in path[:k + 1]) for k in range(len(path))]
    assert res["limit"] == limit and res["answer_tokens"] == N_ANSWER
    # one reference pass, one per accepted step, and one more for the step that stopped (unless the limit did)
    assert res["passes"] == 1 + len(path) + (len(path) < limit)


def test_a_low_threshold_replaces_up_to_the_limit_and_never_every_layer(setup):
    model, prompt, answer, adapters = setup
    res = greedy_search(model, adapters, prompt, answer, threshold=1e-9, max_fraction=0.5)
    assert len(res["layers"]) == 2 == res["limit"] and res["passes"] == 3  # stopped by the limit, not the score
    assert greedy_search(model, adapters, prompt, answer, threshold=1e-9, max_fraction=0.99)["limit"] == 3  # never 4
    res = greedy_search(model, adapters, prompt, answer, threshold=1e-9, max_fraction=0.0)
    assert res["layers"] == [] and res["steps"] == [] and res["score"] == 1.0 and res["passes"] == 1


def test_identity_adapters_at_an_exact_copy_layer_score_one(setup):
    """A layer whose adapter reproduces it exactly (here: the model's last layer made an identity by zeroing its
    output projections, its adapter the identity) is replaced first, at score 1.0."""
    model, prompt, answer, adapters = setup
    last = decoder_layers(model)[3]
    saved = {k: v.clone() for k, v in last.state_dict().items()}
    try:
        with torch.no_grad():
            last.self_attn.o_proj.weight.zero_()
            last.mlp.down_proj.weight.zero_()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=N_ANSWER, min_new_tokens=N_ANSWER,
                                 do_sample=False)
        ans = out[0, len(prompt):].tolist()
        res = greedy_search(model, [*adapters[:3], LayerAdapter(32, width=8)], prompt, ans, threshold=1.0,
                            max_fraction=0.5)
        assert res["steps"][0] == {"added": 3, "layers": [3], "score": 1.0}
    finally:
        last.load_state_dict(saved)


def test_bad_input_is_refused(setup):
    model, prompt, answer, adapters = setup
    with pytest.raises(BadInput, match="no tokens"):
        greedy_search(model, adapters, prompt, [])
    with pytest.raises(BadInput, match="threshold"):
        greedy_search(model, adapters, prompt, answer, threshold=0)
    with pytest.raises(BadInput, match="max_fraction"):
        greedy_search(model, adapters, prompt, answer, max_fraction=1.0)
    with pytest.raises(BadInput, match="3 layer adapters"):
        greedy_search(model, adapters[:3], prompt, answer)


def test_shared_prefixes_run_each_layer_once_per_distinct_input_and_change_nothing(setup):
    from llora_cli.router.depth.search import _answer_argmax, shared_rows

    model, prompt, answer, adapters = setup
    ids, start = prompt + answer, len(prompt)
    need, src = shared_rows([{0}, {1}, {2}, {3}], 2)
    assert need.tolist() == [0, 1, 3] and src.tolist() == [0, 1, 0, 2]  # row 2 replaces layer 2: runs nothing
    sets = [{0}, {1}, {2}, {3}, set(), {1, 3}]
    rows_run = []
    with mixed_layers(model, adapters) as mixed:
        for m in mixed:
            real = m.layer.forward
            m.layer.forward = (lambda h, *a, _real=real, **k: (rows_run.append(h.shape[0]), _real(h, *a, **k))[1])
        try:
            x = torch.tensor([ids])
            with torch.no_grad():
                for m in mixed:  # the logits themselves, not only the argmax: equal up to float reassociation
                    m.replace = torch.tensor([m.index in s for s in sets])
                    m.share = shared_rows(sets, m.index)
                shared_logits = model(input_ids=x.expand(len(sets), -1), use_cache=False).logits
                for m in mixed:
                    m.share = None
                plain_logits = model(input_ids=x.expand(len(sets), -1), use_cache=False).logits
                for m in mixed:
                    m.replace = None
            assert torch.allclose(shared_logits, plain_logits, atol=1e-5, rtol=1e-5)
            rows_run.clear()
            shared = _answer_argmax(model, mixed, ids, start, sets, batch=8)
            shared_rows_run = sum(rows_run)
            rows_run.clear()
            plain = _answer_argmax(model, mixed, ids, start, sets, batch=8, share=False)
            plain_rows_run = sum(rows_run)
        finally:
            for m in mixed:
                del m.layer.forward
    assert torch.equal(shared, plain)
    # plain: 6 rows x 4 layers; shared, layer 0: {}, {0} -> rows 1..5 share one run (row 0 replaces it): 1;
    # layer 1: inputs (0,) and () -> 2 (rows 1 and 5 replace it); layer 2: (0,), (1,), (), (1,) -> 3 (row 2 replaces);
    # layer 3: (0,), (1,), (2,), () -> 4 (rows 3 and 5 replace it)
    assert plain_rows_run == 24 and shared_rows_run == 1 + 2 + 3 + 4
