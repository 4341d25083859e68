"""End to end on the real embedded SmolLM2-135M-Instruct (GGUF -> safetensors -> generate -> train -> eval)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

SHORT = ["--adapter-steps", "2", "--modifier-steps", "3", "--rows", "24", "--eval-rows", "4",
         "--compress-eval-rows", "0", "--router-rows", "3", "--routed-requests", "4"]


def test_demo_registers_trains_and_evaluates(cli, store):
    report = cli.json("demo", *SHORT)
    assert "Paris" in report["generation"]["text"]
    base = report["base"]
    assert base["name"] == "smollm2" and base["kind"] == "base" and base["state"] == "ready"
    d = cli.json("show", "smollm2")
    arch = d["metadata"]["architecture"]
    assert (arch["model_type"], arch["num_hidden_layers"], arch["hidden_size"]) == ("llama", 30, 576)
    assert 130e6 < arch["num_parameters"] < 140e6
    assert d["metadata"]["source"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert store.verify("smollm2").ok

    kinds = {(a["kind"], a["state"]) for a in report["catalog"]}
    assert {("adapter", "discarded"), ("merged", "ready"), ("dataset", "ready")} <= kinds
    evals = report["evaluations"]
    assert [(e["artifact"]["kind"], e["task"]) for e in evals] == [
        ("base", "instruct"), ("adapter", "instruct"), ("merged", "instruct"),
        ("compressed", "automation"), ("modifier", "automation"), ("compressed", "reasoning"), ("modifier", "reasoning")]
    # the merged checkpoint behaves like base + adapter: same held-out loss up to bf16 rounding
    assert abs(evals[2]["loss"] - evals[1]["loss"]) < 0.05
    assert report["merge"]["adapter_state"] == "discarded" and report["merge"]["full_check"]["passed"]
    comp = report["compress"]
    assert comp["method"] == "gguf-q8_0" and 0.5 < comp["ratio_vs_bf16"] < 0.56  # Q8_0: 8.5 bits per weight
    # Q8_0 within 1% perplexity of the source (the goal) on the held-out rows
    assert abs(comp["quality"]["perplexity"]["delta_pct"]) < 1.0
    # the modifier was trained on the compressed base and its lineage goes back to base and adapter
    lineage = report["lineage"]
    assert lineage["kind"] == "modifier"
    runs_on = next(p for p in lineage["parents"] if p["role"] == "runs_on")
    assert runs_on["kind"] == "compressed" and runs_on["id"] == comp["compressed"]["id"]
    merged = next(p for p in runs_on["parents"] if p["role"] == "compressed_from")
    assert {p["role"] for p in merged["parents"]} == {"merge_base", "adapter"}
    assert all(e["n"] == 4 and e["loss"] > 0 and 0 <= e["accuracy"] <= 1 for e in evals)
    mod = next(a for a in report["catalog"] if a["kind"] == "modifier" and a["domain"] == "automation")
    assert cli.json("show", mod["id"])["evaluations"]
    assert store.resolve(mod["id"]).base_hash == comp["compressed"]["content_hash"]
    # deployed and answered through the runtime: with the modifier and with the base alone, both logged
    rt = report["runtime"]
    assert [a["modifier"] for a in rt["answers"]] == [mod["name"], None]
    assert all(a["tokens_out"] >= 1 and isinstance(a["passes_checker"], bool) for a in rt["answers"])
    assert [r["id"] for r in rt["log"]] == [rt["answers"][1]["log_id"], rt["answers"][0]["log_id"]]
    assert {r["client"] for r in rt["log"]} == {"demo"}
    import importlib.util

    engine = "llamacpp" if importlib.util.find_spec("llama_cpp") else "transformers"  # a GGUF base: llama.cpp
    assert rt["engine"] == engine and {a["engine"] for a in rt["answers"]} == {engine}
    assert {r["engine"] for r in rt["log"]} == {engine}
    assert store.resolve(mod["id"]).state == "deployed" and store.resolve(comp["compressed"]["id"]).state == "deployed"

    # the router stage: scenarios on 3 training queries per domain (automation, reasoning and code, which has no
    # modifier; base alone + 2 modifiers), an ORPO router when some candidate answered some query correctly, then 4
    # held-out requests (the domains in turn) with auto
    r = report["router"]
    assert r["scenarios"]["rows"] == 9 and len(r["scenarios"]["candidates"]) == 3 and r["scenarios"]["engine"] == engine
    assert set(report["timings"]) >= {"train modifiers", "router", "compress", "evaluate"}
    if "skipped" in r:  # 3 training steps may leave every candidate failing every scenario query
        assert "no candidate answered any" in r["skipped"]
    else:
        names = {a["name"] for a in report["catalog"] if a["kind"] == "modifier"}
        assert [a["task"] for a in r["answers"]] == ["automation", "reasoning", "code", "automation"]
        assert all((a["chosen"] is None or a["chosen"] in names) and 0 < a["probability"] <= 1 for a in r["answers"])
        logged = {x["id"]: x for x in store.request_logs(limit=4)}
        # the demo deploys its reasoning modifier with the calculator as its serving default (SmolLM2 writes digits
        # one per token): the routed requests it answers are calculator-assisted, the others not
        reasoning_mod = next(a for a in report["catalog"] if a["kind"] == "modifier" and a["domain"] == "reasoning")
        assert r["calculator"] == [reasoning_mod["name"]]
        assert store.resolve(reasoning_mod["id"]).meta["serving"] == {"calculator": True}
        for a in r["answers"]:
            assert (a["calculator_forced"] is not None) == (a["chosen"] == reasoning_mod["name"]), a
            assert logged[a["log_id"]]["params"].get("calculator_forced") == a["calculator_forced"]
        assert all(logged[a["log_id"]]["params"]["route"]["router"]["id"] == r["router"]["id"] for a in r["answers"])
        assert store.resolve(r["router"]["id"]).state == "deployed"

    # calculator-assisted decoding on both engines (SmolLM2 writes digits one per token): a raw prompt ending in an
    # arithmetic step is completed with its value, and the number ends there
    import math
    import re

    from llora_cli.engine import open_engine, resolve_deployment

    dep = resolve_deployment(store, None)
    for name in (["llamacpp"] if engine == "llamacpp" else []) + ["transformers"]:
        rt_ = open_engine(store, dep, name)
        reply = rt_.generate("Each box holds 37 pens, so 12 boxes hold 37 * 12 =", raw=True, max_tokens=6,
                             calculator=True)
        assert re.match(r"\s*444(\D|$)", reply.text), (name, reply.text)
        assert reply.params["calculator"] is True
        probs = rt_.generate("Each box holds 37 pens, so 12 boxes hold 37 * 12 =", raw=True, max_tokens=4,
                             calculator=True, logprobs=2)  # the model's own distribution: finite, even when forced
        assert probs.text == reply.text[:len(probs.text)] and probs.logprobs
        assert all(math.isfinite(t["logprob"]) and all(math.isfinite(u["logprob"]) for u in t["top_logprobs"])
                   for t in probs.logprobs), (name, probs.logprobs)

    # a reasoning modifier deployed with the calculator as its serving default: requests that do not say get it
    # (recorded as coming from the modifier), an explicit false turns it off
    reasoning = next(a for a in store.artifacts() if a.kind == "modifier" and a.domain == "reasoning")
    for a in store.artifacts():
        if a.kind == "router" and a.state == "deployed":
            assert cli("retire", a.id).exit_code == 0  # routes to the modifier: retired first (R7)
    if store.resolve(reasoning.id).state == "deployed":
        assert cli("retire", reasoning.id).exit_code == 0
    assert cli.json("deploy", reasoning.id, "--calculator")["serving"] == {"calculator": True}
    dep = resolve_deployment(store, None)
    mod = next(m for m in dep.modifiers if m.id == reasoning.id)
    for name in (["llamacpp"] if engine == "llamacpp" else []) + ["transformers"]:
        rt_ = open_engine(store, dep, name)
        on = rt_.generate("Each box holds 37 pens, so 12 boxes hold 37 * 12 =", raw=True, max_tokens=6, modifier=mod)
        assert re.match(r"\s*444(\D|$)", on.text), (name, on.text)
        assert on.params["calculator"] is True and on.params["calculator_from"] == "modifier"
        off = rt_.generate("Each box holds 37 pens, so 12 boxes hold 37 * 12 =", raw=True, max_tokens=6,
                           modifier=mod, calculator=False)
        assert "calculator" not in off.params and "calculator_forced" not in off.params
        # the tokens the calculator changed: at least one where the model's own answer is not 444
        assert on.params["calculator_forced"] >= (0 if re.match(r"\s*444(\D|$)", off.text) else 1), (name, off.text)

    # the same GGUF file under another name is refused before any conversion work
    from llora_cli.bases import builtin_gguf

    again = cli("bases", "add", builtin_gguf("smollm2"), "--name", "copy")
    assert again.exit_code == 1 and "already registered as base 'smollm2'" in again.stderr


def test_demo_after_the_base_was_discarded_registers_it_again(cli, store):
    first = cli.json("demo", "--no-train")["base"]
    assert cli.json("demo", "--no-train")["base"]["id"] == first["id"]  # reused
    assert cli("discard", first["id"], "--yes").exit_code == 0
    second = cli.json("demo", "--no-train")
    assert second["base"]["name"] == "smollm2-2" and second["base"]["id"] != first["id"]
    assert "Paris" in second["generation"]["text"]
