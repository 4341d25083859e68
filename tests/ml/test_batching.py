"""Concurrent requests share forward passes: modifiers mixed per row (PEFT adapter_names), per-row limits and
streams, the same answers as one request at a time; what may not share a batch runs apart."""

from __future__ import annotations

import pytest

from llora_cli.engine import resolve_deployment
from llora_cli.engine.transformers import TransformersEngine


@pytest.fixture
def runtime(cli, store, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "24", "--name", "auto")
    cli.json("data", "make", "code", "--n", "24", "--name", "code")
    for name, data, domain, extra in (("auto-mod", "auto", "automation", []), ("code-mod", "code", "code", []),
                                      ("dora-mod", "auto", "reasoning", ["dora=true"])):
        cli.json("train", "--base", "tiny", "--data", data, "--kind", "modifier", "--domain", domain, "--name", name,
                 "max_steps=10", "learning_rate=0.01", *extra)
    for name in ("tiny", "auto-mod", "code-mod", "dora-mod"):
        cli.json("deploy", name)
    return TransformersEngine(store, resolve_deployment(store))


def _requests(rt):
    mods = {m.name: m for m in rt.deployment.modifiers}
    prompts = ["Set a timer for five minutes", "Write a function", "hi", "Turn off the kitchen lights please",
               "What is two plus two?", "Sort a list"]
    picks = [mods["auto-mod"], mods["code-mod"], None, mods["auto-mod"], None, mods["code-mod"]]
    limits = [12, 5, 9, 1, 12, 7]
    return list(zip(prompts, picks, limits))


def test_mixed_batch_matches_one_at_a_time(runtime):
    requests = _requests(runtime)
    solo = [runtime.generate(p, modifier=m, max_tokens=n) for p, m, n in requests]
    assert all(r.load["batch"] == 1 for r in solo)
    assert len({r.text for r in solo}) > 3  # the modifiers and the base answer differently
    streamed: list[list[str]] = [[] for _ in requests]
    with runtime.batcher.cond:  # hold the queue so that all six are waiting when the worker looks
        jobs = [runtime.submit(p, modifier=m, max_tokens=n, on_text=streamed[i].append)
                for i, (p, m, n) in enumerate(requests)]
    for job in jobs:
        runtime.batcher.wait(job)
    assert runtime.batcher.sizes[-1] == 6  # one forward pass per step for three adapters and the base
    for job, one, (_, _, limit), pieces in zip(jobs, solo, requests, streamed):
        assert job.error is None and job.batch_size == 6
        assert job.text == one.text  # greedy: same answer as alone
        assert len(job.tokens) <= limit and len(job.tokens) == one.tokens_out  # each row stops at its own limit
        assert "".join(pieces) == one.text  # each row streamed its own text (neither is stripped)


def test_what_cannot_share_a_batch_runs_apart(runtime):
    mods = {m.name: m for m in runtime.deployment.modifiers}
    before = runtime.batcher.batches
    with runtime.batcher.cond:
        jobs = [runtime.submit("hi", modifier=mods["dora-mod"], max_tokens=4),  # DoRA: no adapter_names
                runtime.submit("hi", modifier=mods["auto-mod"], max_tokens=4),
                runtime.submit("hi", modifier=mods["dora-mod"], max_tokens=4),
                runtime.submit("hi", modifier=None, max_tokens=4, temperature=0.7, seed=1),  # seeded: alone
                runtime.submit("hi", modifier=None, max_tokens=4, temperature=0.7, top_p=0.9)]  # other sampling
    for job in jobs:
        runtime.batcher.wait(job)
        assert job.error is None and len(job.tokens) >= 1
    # the two DoRA rows together, then the LoRA row with nothing else greedy, the seeded one alone, the sampled one
    assert runtime.batcher.batches - before == 4 and list(runtime.batcher.sizes)[-4:] == [2, 1, 1, 1]
    assert [j.batch_size for j in jobs] == [2, 1, 2, 1, 1]


def test_seeded_request_reproduces_whatever_else_is_waiting(runtime):
    alone = runtime.generate("hi", temperature=1.0, seed=5, max_tokens=8)
    with runtime.batcher.cond:
        jobs = [runtime.submit("hi", temperature=1.0, max_tokens=8) for _ in range(3)]
        seeded = runtime.submit("hi", temperature=1.0, seed=5, max_tokens=8)
    for job in [*jobs, seeded]:
        runtime.batcher.wait(job)
    assert seeded.text == alone.text and seeded.batch_size == 1


def test_row_lora_equals_peft_mixed_batch_and_each_adapter_alone(runtime):
    import torch

    from llora_cli.engine.batching import RowLora

    model, tok = runtime.model, runtime.tokenizer
    mods = {m.name: m.id for m in runtime.deployment.modifiers}
    rows = [mods["auto-mod"], None, mods["code-mod"], mods["auto-mod"]]
    enc = tok(["Set a timer", "hello", "Write code", "Lights off"], return_tensors="pt", padding=True)
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())  # the runtime's own (inactive) ones
    with torch.inference_mode():
        peft_mixed = model(**enc, adapter_names=[a or "__base__" for a in rows]).logits
        hooks = RowLora(model)
        hooks.activate(rows)
        with model.disable_adapter():
            ours = model(**enc).logits
        hooks.deactivate()
        with model.disable_adapter():
            inactive = model(**enc).logits  # hooks stay registered but add nothing between batches
        hooks.remove()
        alone = []
        for i, a in enumerate(rows):
            one = {k: v[i:i + 1] for k, v in enc.items()}
            if a is None:
                with model.disable_adapter():
                    alone.append(model(**one).logits)
            else:
                model.set_adapter(a)
                alone.append(model(**one).logits)
        with model.disable_adapter():
            base = model(**enc).logits
    assert torch.allclose(ours, peft_mixed, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert (ours[0] - base[0]).abs().max() > 1e-3 and torch.equal(ours[1], base[1])  # the modifier acts; base row: none
    assert torch.equal(inactive, base)
    assert hooks.handles == [] and sum(len(m._forward_hooks) for m in model.modules()) == hooks_before  # none left


def test_dora_modifier_is_not_row_lora(runtime):
    mods = {m.name: m.id for m in runtime.deployment.modifiers}
    assert runtime.row_lora == {mods["auto-mod"]: True, mods["code-mod"]: True, mods["dora-mod"]: False}


def test_peft_path_gives_the_same_answers(runtime):
    requests = _requests(runtime)
    texts = {}
    for path in ("rows", "peft"):
        runtime.runner.lora_path = path
        with runtime.batcher.cond:
            jobs = [runtime.submit(p, modifier=m, max_tokens=n) for p, m, n in requests]
        texts[path] = [runtime.batcher.wait(j).text for j in jobs]
    assert texts["rows"] == texts["peft"]
