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


def test_a_router_whose_depth_does_not_fit_its_base_is_refused_at_fit_deploy_and_load(cli, store, deep):
    """Depth heads scoring another number of layers than the base has, or a layer-adapter set gone or changed:
    refused at deploy and at load (not only at the first request), and a depth scenario set of another layer count
    at fit, each naming what does not match."""
    from llora_cli.router import serving
    from llora_store.errors import Conflict

    router = store.resolve("r")
    assert router.meta["depth"]["layer_set_content_hash"] == deep.content_hash
    assert cli("retire", "r").exit_code == 0
    store.update_metadata("r", {"depth": {**router.meta["depth"], "layers": 3}})
    r = cli("deploy", "r")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "cannot deploy router 'r': what it was fitted on changed: its depth heads score 3 decoder layers; base 'b' " \
           "has 2; layer-adapter set" in " ".join(r.stderr.split())
    assert store.get(router.id).state == "retired"
    serving._LOADED.clear()  # a new process loading it
    with pytest.raises(Conflict, match="its depth heads score 3 decoder layers"):
        serving.load(store, store.get(router.id))
    store.update_metadata("r", {"depth": router.meta["depth"]})  # as fitted: deployable again
    assert cli("deploy", "r").exit_code == 0 and cli("retire", "r").exit_code == 0

    assert cli("discard", deep.id, "--yes").exit_code == 0  # nothing deployed uses it now (R7)
    r = cli("deploy", "r")
    assert r.exit_code == 1 and f"layer-adapter set '{deep.name}' is 'discarded'" in " ".join(r.stderr.split())

    dscen = store.resolve("depth")
    store.update_metadata("depth", {"depth": {**dscen.meta["depth"], "layers": 4}})
    r = cli("router", "fit", "sc", "--depth", "depth", "--method", "fbc", "--name", "r2", "steps=5", "holdout=0")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "the layer-adapter set" in r.stderr  # the discarded set is named first
    assert not [a for a in store.list() if a.name == "r2"]


def test_router_eval_depth_measures_every_method_on_the_same_held_out_queries(cli, store, deep, tmp_path):
    """`router eval --depth`: each method's answers are the base's greedy answers with that method's layers
    replaced (checked against the model loaded afresh), scored against full depth on the same rows; the router's
    sets are its heads' (automation: layer 1, reasoning: layer 0), the baselines use the router's k per query,
    the cost is measured per k, the report is stored and plotted, and a router without depth heads is refused."""
    from llora_cli.data import load_data
    from llora_cli.router.collect import max_tokens_for
    from llora_cli.router.depth import evaluation as ev
    from llora_cli.tasks import prompt_of

    assert cli("retire", "r").exit_code == 0  # R7: a deployed router's metadata is immutable; a retired one is not
    full_ref, seen = {}, []

    def check(q, text):
        if q.key not in full_ref:
            full_ref[q.key] = _generate(store, prompt_of(q.row), [], deep.id, max_tokens_for(q.task)).strip()
        seen.append((q, text))
        return text == full_ref[q.key]

    png = tmp_path / "pareto.png"
    rep = ev.evaluate_depth(store, "r", ["auto", "reason"], limit=1, config=["speed_tokens=4", "repeats=1"],
                            plot=png, check=check)
    n = rep["n"]
    assert n == 2 and rep["layers"] == 2 and rep["router_k"] == {"mean": 1.0, "histogram": {"1": 2}}
    m = rep["methods"]
    assert list(m) == [ev.FULL, ev.ROUTER, ev.SKIP, ev.STATIC, ev.DOMAIN, ev.LAST, ev.SHORTGPT, ev.RANDOM, ev.CEILING]
    assert m[ev.FULL]["correct"] == 2 and m[ev.FULL]["relative_to_full"] == 1.0  # full depth = the fresh model
    assert m[ev.FULL]["vs_full"]["difference"] == 0 and m[ev.FULL]["batch1"]["decode_speedup"] == 1.0
    by_method = {name: seen[i * n:(i + 1) * n] for i, name in enumerate(m)}
    for (q, text), layers in zip(by_method[ev.ROUTER], ([1], [0])):  # auto first, then reason
        assert text == _generate(store, prompt_of(q.row), layers, deep.id, max_tokens_for(q.task)).strip()
    for name, got in by_method.items():
        assert m[name]["correct"] == sum(t == full_ref[q.key] for q, t in got), name
        assert m[name]["n"] == 2 and m[name]["ci95"][0] <= m[name]["accuracy"] <= m[name]["ci95"][1]
    for name in (ev.ROUTER, ev.SKIP, ev.STATIC, ev.DOMAIN, ev.LAST, ev.SHORTGPT, ev.RANDOM):
        assert m[name]["layers_replaced_mean"] == 1.0, name  # the router's k on every query
        assert m[name]["layers_replaced_histogram"] == {"1": 2}, name
    assert m[ev.FULL]["layers_replaced_histogram"] == {"0": 2}
    assert len(rep["static_path"]) == 1 and len(rep["block_influence"]) == 2
    assert set(rep["timing"]) >= {"0", "1"} and rep["timing"]["1"]["batch8"]["decode_tokens_per_s"] > 0
    assert m[ev.ROUTER]["batch1"]["prefill_ms"] > m[ev.LAST]["batch1"]["prefill_ms"] - 1e-9  # router time added
    assert set(rep["sweep"]) == set(ev.SWEPT) and set(rep["sweep"][ev.STATIC]) == {"0", "1"}
    assert rep["sweep"][ev.STATIC]["0"]["correct"] == 2  # k = 0 is full depth
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.resolve("r").meta["evaluation_depth"]["n"] == 2 and rep["stored"] is True

    # the CLI: a table and the goal verdict; refusals
    r = cli("router", "eval", "r", "--data", "auto", "--limit", "1", "--depth", "sweep=0", "repeats=1", "speed_tokens=3")
    assert r.exit_code == 0 and "best static" in r.output and "goal (>= 98%" in r.output
    r = cli("router", "eval", "r", "--data", "auto", "--depth", "--engine", "llamacpp")
    assert r.exit_code != 0 and "llama.cpp cannot replace layers" in r.stderr
    cli.json("router", "fit", "sc", "--method", "fbc", "--name", "flat", "steps=5", "holdout=0")
    r = cli("router", "eval", "flat", "--data", "auto", "--depth")
    assert r.exit_code == 2 and "has no depth heads" in r.stderr and "Traceback" not in r.output
    r = cli("router", "eval", "r", "--data", "auto", "--depth", "sweep=2")
    assert r.exit_code != 0 and "sweep 0 or 1" in r.stderr
    distilled = load_data(store, "reason").train[2]  # a training query (distill and the depth scenarios used it)
    (tmp_path / "seen.jsonl").write_text(json.dumps(distilled) + "\n")
    cli.json("data", "add", tmp_path / "seen.jsonl", "--task", "reasoning", "--held-out", "--name", "seen")
    r = cli("router", "eval", "r", "--data", "seen", "--depth")
    assert r.exit_code == 2 and "were used to fit router 'r' (its scenario sets or the distillation" in \
        " ".join(r.stderr.split())
