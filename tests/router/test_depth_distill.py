"""`llora router distill` on the tiny 2-layer Llama: hooks capture each block's real input and output, adapters
are trained on correct rows only, the set is catalogued (R10, resumable) and refused on another base (R6).

The tiny model answers nothing correctly, so the library tests inject the checker (``check``); the CLI test runs
the real one and is refused for want of correct rows."""

from __future__ import annotations

import json

import pytest
import torch

from llora_cli.router.depth import distill as dd
from llora_store.errors import NotFound, RuleViolation

CFG = ["width=8", "steps=200", "lr=0.003", "batch_tokens=64"]


def even_rows(q, text):
    return q.row_index % 2 == 0


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on the two shared cores are ~20x slower for these tiny models
    yield
    torch.set_num_threads(n)


@pytest.fixture
def setup(cli, store, tiny_model_dir):
    base = cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "reasoning", "--n", "6", "--n-test", "2", "--name", "reason")
    return store.get(base["id"])


def _tiny_model(store, base):
    from llora_cli.loading import load_model

    tok, model, _ = load_model(store.path_of(base.id))
    return tok, model.eval()


def test_capture_takes_each_blocks_real_input_and_output(store, setup):
    tok, model = _tiny_model(store, setup)
    seqs = [[5, 9, 30, 31, 2], [7, 8, 40]]
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.model.layers]
    whole = dd.capture(model, seqs, 0, 1)
    assert [t.shape for t in whole] == [torch.Size([8, 32])] * 3  # 8 tokens, padding dropped
    apart = dd.capture(model, seqs, 0, 0) + dd.capture(model, seqs, 1, 1)[1:]
    assert all(torch.equal(a, b) for a, b in zip(whole, apart))  # groups of any size give the same states
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.model.layers] == hooks_before
    ids = torch.tensor(seqs[0])
    with torch.no_grad():
        assert torch.equal(whole[0][:5], model.model.embed_tokens(ids))  # layer 0's input = the embeddings
        out = model(input_ids=ids[None], output_hidden_states=True)
        # output_hidden_states' last entry is after the final norm: the hooks' last output is before it
        assert not torch.allclose(out.hidden_states[-1][0], whole[2][:5])
        assert torch.allclose(model.model.norm(whole[2][:5]), out.hidden_states[-1][0], atol=1e-6)


def test_layer_groups_bound_the_captured_states():
    mb = 1 << 20
    assert dd.layer_groups([0, 1, 2, 3, 4, 5], tokens=mb // 4 // 256, hidden=256, memory_mb=1) == [[0], [1], [2], [3], [4], [5]]
    assert dd.layer_groups([0, 1, 2, 3, 4, 5], tokens=mb // 4 // 256, hidden=256, memory_mb=3) == [[0, 1], [2, 3], [4, 5]]
    assert dd.layer_groups([0, 2, 3], tokens=10, hidden=8, memory_mb=512) == [[0], [2, 3]]


def test_distill_trains_each_layer_on_correct_rows_and_catalogues_the_set(store, setup):
    base = setup
    seen = []
    res = dd.distill(store, "tiny", ["reason"], config=CFG, check=lambda q, t: seen.append(q.row_index) or even_rows(q, t))
    assert sorted(seen) == list(range(6))  # every training row was answered and checked once
    art = store.get(res.artifact.id)
    assert (art.kind, art.state, art.base_hash) == ("layer-adapters", "ready", base.content_hash)
    with store.reading() as s:
        assert [p.id for p in store.parents_by_role(s, art.id, "runs_on")] == [base.id]
    assert res.rows == {"answered": 6, "correct": 3, "resumed": 0}
    spec = json.loads((store.path_of(art.id) / dd.SPEC_FILE).read_text())
    assert {k: spec[k] for k in ("format", "base_hash", "layers", "hidden", "width")} == {
        "format": "llora-layer-adapters", "base_hash": base.content_hash, "layers": 2, "hidden": 32, "width": 8}
    # training moved each adapter below plain skipping's error (measured ~0.6x and ~0.45x: random tiny layers are
    # far from a rank-8 map)
    assert all(m < 0.8 * s for m, s in zip(spec["mse"], spec["mse_skip"])), (spec["mse"], spec["mse_skip"])
    # the recorded MSE is what the stored adapters give on the correct rows' tokens (prompt + answer)
    tok, model = _tiny_model(store, base)
    answers = []  # the resume dir is gone once published: answer the correct rows again
    from llora_cli.router.collect import checked_queries
    qs = [q for q in checked_queries(store, ["reason"], split="train", limit=None) if q.row_index % 2 == 0]
    dd.answer(tok, model, qs, on_row=lambda q, a: answers.append(a["prompt"] + a["answer"]))
    assert art.meta["tokens"] == sum(len(s) for s in answers)
    states = dd.capture(model, answers, 0, 1)
    adapters = dd.load(store, art.id, base)
    for i in range(2):
        assert dd._mse(adapters[i], states[i], states[i + 1]) == pytest.approx(spec["mse"][i], rel=1e-5)
        assert dd._mse(None, states[i], states[i + 1]) == pytest.approx(spec["mse_skip"][i], rel=1e-5)
    assert not list(store.layout.tmp.glob("distill-*"))


def test_interrupted_distill_resumes_with_nothing_half_written(store, setup, monkeypatch):
    real = dd.train_adapter
    calls = []

    def second_layer_dies(x, y, cfg, *, seed):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(x, y, cfg, seed=seed)

    monkeypatch.setattr(dd, "train_adapter", second_layer_dies)
    with pytest.raises(KeyboardInterrupt):
        dd.distill(store, "tiny", ["reason"], config=CFG, check=even_rows)
    assert store.list(kind="layer-adapters") == []  # R10: nothing visible
    (resume,) = store.layout.tmp.glob("distill-*")
    assert (resume / "layer-0.json").exists() and not (resume / "layer-1.json").exists()
    layer0 = (resume / "layer-0.safetensors").read_bytes()
    monkeypatch.setattr(dd, "train_adapter", real)
    monkeypatch.setattr(dd, "answer", lambda *a, **k: pytest.fail("answers were not resumed"))
    res = dd.distill(store, "tiny", ["reason"], config=CFG, check=even_rows)
    assert res.resumed_layers == 1 and res.rows["resumed"] == 6
    from safetensors.torch import load

    # the published layer 0 is the one trained before the interruption
    weights = load((store.path_of(res.artifact.id) / dd.WEIGHTS_FILE).read_bytes())
    before = load(layer0)
    assert all(torch.equal(weights[f"layers.0.{k}"], v) for k, v in before.items())
    assert not list(store.layout.tmp.glob("distill-*"))


def test_no_correct_row_is_refused(store, setup):
    with pytest.raises(NotFound, match="answered none of the 6 queries correctly"):
        dd.distill(store, "tiny", ["reason"], config=CFG, check=lambda q, t: False)
    assert store.list(kind="layer-adapters") == []


def test_cli_uses_the_real_checker(cli, store, setup):
    """The random tiny model answers no reasoning row: the real checker refuses it (an injected one would not)."""
    r = cli("router", "distill", "tiny", "--data", "reason", "--limit", "2", "steps=5")
    assert r.exit_code == 1 and "answered none of the 2 queries correctly" in r.stderr
    r = cli("router", "distill", "tiny", "--data", "reason", "colour=red")
    assert r.exit_code == 2 and "unknown key 'colour'" in r.stderr


def test_a_set_is_refused_on_another_base(cli, store, setup, other_tiny_model_dir):
    res = dd.distill(store, "tiny", ["reason"], config=["width=4", "steps=2"], check=even_rows)
    other = store.get(cli.json("bases", "add", other_tiny_model_dir, "--name", "other")["id"])
    with pytest.raises(RuleViolation, match="R6: layer-adapter set .* was distilled on base hash"):
        dd.load(store, res.artifact.id, other)
    assert len(dd.load(store, res.artifact.id, setup)) == 2
    listed = cli.json("layer-adapters", "list")
    assert [a["id"] for a in listed] == [res.artifact.id]


KILLED = '''
import os, signal, sys
import torch
import llora_cli.tasks as tasks

torch.set_num_threads(1)
from llora_cli.router.depth import distill as dd

tasks.checker = lambda kind: (lambda row, text: True)  # the random tiny model answers nothing right
real_save = dd._save_layer

def save(resume, i, adapter, figures):
    real_save(resume, i, adapter, figures)
    os.kill(os.getpid(), signal.SIGKILL)  # killed once layer 0 is written: no cleanup runs

dd._save_layer = save
from llora_cli.cli.main import app
app(sys.argv[1:])
'''


def test_distill_killed_leaves_no_set_and_resumes(store, setup, llora_home):
    import os
    import subprocess
    import sys

    args = ["router", "distill", "tiny", "--data", "reason", *CFG]
    proc = subprocess.run([sys.executable, "-c", KILLED, *args], env={**os.environ, "LLORA_HOME": str(llora_home)},
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert store.list(kind="layer-adapters") == []  # R10
    (partial,) = [p for p in store.layout.leftovers() if p.name.startswith("distill-")]
    assert len((partial / dd.ANSWERS_FILE).read_text().splitlines()) == 6
    assert sorted(p.name for p in partial.iterdir() if p.name.startswith("layer-")) == ["layer-0.json",
                                                                                     "layer-0.safetensors"]
    assert store.gc(dry_run=True).staging_removed == [partial.name]  # its process is dead
    res = dd.distill(store, "tiny", ["reason"], config=CFG, check=lambda q, t: True)
    assert res.resumed_layers == 1 and res.rows == {"answered": 6, "correct": 6, "resumed": 6}
    assert not [p for p in store.layout.leftovers() if p.name.startswith("distill-")]


def test_answers_are_the_ones_llora_eval_generates(store, setup):
    """distill's greedy answers (token ids kept) decode to the texts ``llora eval`` scores for the same rows."""
    from llora_cli.evaluate import generate_batch
    from llora_cli.router.collect import checked_queries

    tok, model = _tiny_model(store, setup)
    qs = checked_queries(store, ["reason"], split="train", limit=None)
    got = []
    dd.answer(tok, model, qs, on_row=lambda q, a: got.append(a))
    want = generate_batch(tok, model, [{"messages": q.messages} for q in qs], max_new_tokens=dd.max_tokens_for("reasoning"))
    assert [a["text"] for a in got] == want
    assert all(len(a["answer"]) >= 1 and a["prompt"] for a in got)
    assert any(a["text"] for a in got)  # not all empty (the comparison would then prove little)
