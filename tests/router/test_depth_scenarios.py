"""`llora router collect BASE --depth LAYERSET`: depth scenarios on the tiny 2-layer Llama: each row's path is the
greedy search's on the base's own answer, the set is catalogued with its lineage (R10: nothing before the end,
resumable), refused on another base (R6), and `router fit` refuses it with the reason."""

from __future__ import annotations

import json

import pytest

from llora_cli.router.depth import distill as dd
from llora_cli.router.depth import scenarios as ds
from llora_cli.router.depth import search
from llora_store.errors import BadInput, RuleViolation

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/router/conftest.py


@pytest.fixture
def setup(cli, store, tiny_model_dir):
    base = cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "reasoning", "--n", "4", "--n-test", "2", "--name", "reason")
    layers = dd.distill(store, "tiny", ["reason"], config=["width=8", "steps=30", "batch_tokens=64"],
                        check=lambda q, t: True)
    return store.get(base["id"]), layers.artifact


def test_depth_collect_records_the_greedy_path_of_every_query(store, setup):
    from llora_cli.loading import load_model

    base, layer_set = setup
    res = ds.collect_depth(store, "tiny", layer_set.name, ["reason"], threshold=0.5, max_fraction=0.5,
                           check=lambda q, t: q.row_index == 0)
    art = res.artifact
    assert art.kind == "scenario-set" and art.state == "ready" and res.rows == 4 and res.resumed == 0
    assert art.meta["depth"]["layer_set"]["id"] == layer_set.id and art.meta["depth"]["layers"] == 2
    with store.reading() as s:
        assert [a.id for a in store.parents_by_role(s, art.id, "runs_on")] == [base.id]
        assert {a.id for a in store.parents_by_role(s, art.id, "uses")} == {layer_set.id,
                                                                           store.resolve("reason").id}
    rows = [json.loads(x) for x in (store.path_of(art.id) / ds.ROWS_FILE).read_text().splitlines()]
    assert [r["answer"]["correct"] for r in rows] == [True, False, False, False]
    # each row's path is what greedy_search finds on the base's own greedy answer (recomputed independently)
    tok, model, _ = load_model(store.path_of(base.id))
    adapters = dd.load(store, layer_set.id, base)
    answers = {}
    from llora_cli.router.collect import checked_queries

    qs = checked_queries(store, ["reason"], split="train", limit=None)
    dd.answer(tok, model.eval(), qs, on_row=lambda q, a: answers.setdefault(q.row_index, a))
    for r in rows:
        a = answers[r["row"]]
        want = search.greedy_search(model, adapters, a["prompt"], a["answer"], threshold=0.5, max_fraction=0.5)
        assert r["depth"] == want and r["answer"]["tokens"] == len(a["answer"])
        assert r["depth"]["limit"] == 1 and all(s["score"] >= 0.5 for s in r["depth"]["steps"])
    figs = res.summary["overall"]
    sizes = [len(r["depth"]["layers"]) for r in rows]
    assert figs["n"] == 4 and figs["correct"] == 1
    assert figs["layers_replaced_mean"] == pytest.approx(sum(sizes) / 4, abs=1e-3)


def test_interrupted_depth_collect_resumes_and_shows_nothing_before_the_end(store, setup, monkeypatch):
    base, layer_set = setup
    real = search.greedy_search
    calls = []

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(search, "greedy_search", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        ds.collect_depth(store, "tiny", layer_set.id, ["reason"], check=lambda q, t: True)
    assert store.list(kind="scenario-set") == []  # R10
    (resume,) = store.layout.tmp.glob("collect-depth-*")
    assert len((resume / "rows.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(search, "greedy_search", real)
    res = ds.collect_depth(store, "tiny", layer_set.id, ["reason"], check=lambda q, t: True)
    assert res.resumed == 2 and res.rows == 4
    assert not list(store.layout.tmp.glob("collect-depth-*"))


def test_bad_input_and_other_base_are_refused(cli, store, setup, other_tiny_model_dir):
    base, layer_set = setup
    with pytest.raises(BadInput, match="threshold"):
        ds.collect_depth(store, "tiny", layer_set.id, ["reason"], threshold=1.5)
    with pytest.raises(BadInput, match="max-fraction"):
        ds.collect_depth(store, "tiny", layer_set.id, ["reason"], max_fraction=1.0)
    cli.json("bases", "add", other_tiny_model_dir, "--name", "other")
    with pytest.raises(RuleViolation, match="R6"):
        ds.collect_depth(store, "other", layer_set.id, ["reason"])
    r = cli("router", "collect", "tiny", "--depth", layer_set.name, "--data", "reason", "--engine", "llamacpp")
    assert r.exit_code != 0 and "--engine llamacpp do not apply" in r.stderr and "Traceback" not in r.stderr
    assert store.list(kind="scenario-set") == []


def test_cli_collects_and_fit_refuses_depth_scenarios(cli, store, setup):
    base, layer_set = setup
    out = cli.json("router", "collect", "tiny", "--depth", layer_set.name, "--data", "reason", "--limit", "2",
                   "--threshold", "0.9")
    assert out["rows"] == 2 and out["figures"]["overall"]["n"] == 2
    r = cli("router", "fit", out["name"], "--method", "fbc")
    assert r.exit_code != 0 and "depth scenarios" in r.stderr and "Traceback" not in r.stderr
