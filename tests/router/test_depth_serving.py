"""Serving with fewer layers: `llora run --depth auto|K|full` on a real tiny base with a deployed router whose depth
heads were fitted on known paths (automation queries: layer 1 replaced; reasoning: layer 0). The reply is what the
model generates with exactly those layers replaced by their distilled adapters, the set is in `--json` and the
request log, and bad depth requests are refused before anything runs."""

from __future__ import annotations

import json

import pytest
import torch
from router_setup import tiny_base_with_modifiers

from llora_cli.router.collect import ROWS_FILE
from llora_cli.router.depth import distill as dd

PATHS = {"automation": [{"added": 1, "layers": [1], "score": 1.0}],
         "reasoning": [{"added": 0, "layers": [0], "score": 1.0}]}


@pytest.fixture
def deep(cli, store, tiny_model_dir, tmp_path, monkeypatch):
    """A deployed tiny base (2 layers), two deployed modifiers, distilled layer adapters, an fbc router with depth
    heads, deployed."""
    from llora_cli.data import load_data

    torch.set_num_threads(1)
    tiny_base_with_modifiers(cli, tiny_model_dir, tmp_path, monkeypatch, n=20, n_test=4, limit=20)
    layers = dd.distill(store, "b", ["reason"], limit=4, config=["width=8", "steps=1", "batch_tokens=64"],  # ~ skipping
                        check=lambda q, t: True).artifact
    base = store.resolve("b")
    rows = []
    for ds, domain in (("auto", "automation"), ("reason", "reasoning")):
        data = load_data(store, ds)
        for i, r in enumerate(data.train):
            text = next(x["content"] for x in reversed(r["messages"]) if x["role"] == "user")
            rows.append({"query": text, "domain": domain, "dataset": data.artifact.id, "row": i,
                         "answer": {"text": "x", "tokens": 5, "correct": True},
                         "depth": {"layers": PATHS[domain][-1]["layers"], "score": 1.0, "steps": PATHS[domain],
                                   "passes": 2, "answer_tokens": 5, "limit": 1}})
    st = store.new_staging("depth")
    (st / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"base": {"id": base.id, "name": base.name, "kind": base.kind},
            "depth": {"layer_set": {"id": layers.id, "name": layers.name, "content_hash": layers.content_hash},
                      "layers": 2}}
    store.create("scenario-set", "depth", staging=st, metadata=meta, base_hash=base.content_hash,
                 parents=[(base.id, "runs_on"), (layers.id, "uses")])
    cli.json("router", "fit", "sc", "--depth", "depth", "--method", "fbc", "--name", "r", "steps=200", "holdout=0")
    for ref in ("b", "mod-automation", "mod-reasoning", "r"):
        assert cli("deploy", ref).exit_code == 0
    return layers


def _generate(store, prompt: str, layers: list[int], set_id: str, n: int) -> str:
    """The reference: the tiny base loaded afresh, the chat prompt, greedy, with ``layers`` replaced."""
    from llora_cli.loading import load_model
    from llora_cli.router.depth.layers import replaced_layers

    base = store.resolve("b")
    tok, model, _ = load_model(store.path_of(base.id))
    model.eval()
    adapters = dd.load(store, set_id, base)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    with torch.no_grad(), replaced_layers(model, layers, adapters):
        out = model.generate(torch.tensor([list(ids)]), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_run_depth_replaces_the_routers_layers(cli, store, deep):
    from llora_cli.data import load_data
    from llora_cli.tasks import prompt_of

    prompt = prompt_of(load_data(store, "reason").train[0])
    args = ["run", "--engine", "transformers", "--max-tokens", "8", "--modifier", "none", "--json"]
    auto = cli.json(*args, "--depth", "auto", prompt)
    assert auto["params"]["depth"]["mode"] == "auto" and auto["params"]["depth"]["layers"] == [0]
    assert auto["params"]["depth"]["router"] == "r" and auto["params"]["depth"]["router_ms"] > 0
    full = cli.json(*args, "--depth", "full", prompt)
    assert full["params"]["depth"] == {"mode": "full", "layers": []}
    replaced, whole = _generate(store, prompt, [0], deep.id, 8), _generate(store, prompt, [], deep.id, 8)
    assert replaced != whole  # the adapter changes the answer here, so the comparison below means something
    assert auto["text"] == replaced.strip() or auto["text"] == replaced
    assert full["text"] in (whole, whole.strip())
    k1 = cli.json(*args, "--depth", "1", prompt_of(load_data(store, "auto").train[0]))
    assert k1["params"]["depth"]["layers"] == [1] and k1["params"]["depth"]["mode"] == "1"
    log = cli.json("logs", "list", "--limit", "1")[0]
    assert log["params"]["depth"]["layers"] == [1]
    logged = len(cli.json("logs", "list"))
    for depth, message in [("2", "has 2 decoder layers; replace at most 1"), ("-1", "cannot be negative"),
                           ("deep", "must be full, auto or")]:
        r = cli("run", "--engine", "transformers", "--max-tokens", "2", "--depth", depth, "hello")
        assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output
    assert len(cli.json("logs", "list")) == logged  # refused requests are not logged


def test_serve_takes_depth_in_the_request_body(cli, store, deep, llora_home):
    """A real server on a loopback port, the official openai client sending llora's `depth` field."""
    import httpx
    import openai
    from live_server import live_server

    from llora_cli.data import load_data
    from llora_cli.tasks import prompt_of

    with live_server(llora_home, "--engine", "transformers") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
        prompt = prompt_of(load_data(store, "auto").train[0])
        client.chat.completions.create(model="b", messages=[{"role": "user", "content": prompt}], max_tokens=2,
                                       extra_body={"depth": "auto"})
        assert cli.json("logs", "list", "--limit", "1")[0]["params"]["depth"]["layers"] == [1]
        bad = httpx.post(f"{url}/v1/chat/completions", json={"model": "b", "depth": "9", "max_tokens": 2,
                                                             "messages": [{"role": "user", "content": "hi"}]})
        assert bad.status_code == 400 and "replace at most 1" in bad.text


def test_an_engine_that_cannot_replace_layers_runs_full_depth_and_says_so(store):
    from llora_cli.engine.base import Deployment, Engine
    from llora_store.errors import BadInput

    class NoDepth(Engine):
        engine = "llamacpp"

        def _attach(self, modifier):
            pass

        def _detach(self, modifier_id):
            pass

    e = NoDepth(store, Deployment(None, []))
    layers, info = e.depth_layers("hi", "auto")
    assert layers == [] and "cannot replace layers" in info["note"]
    assert e.depth_layers("hi", "full") == ([], {"mode": "full", "layers": []})
    assert e.depth_layers("hi", None) == ([], None)
    with pytest.raises(BadInput, match="llamacpp engine cannot replace decoder layers"):
        e.depth_layers("hi", "3")
