"""`llora router fit --depth`: the layer and ratio heads fitted by FBC, DPO and ORPO on a depth scenario set whose
paths are known (automation queries keep their answer with layers {2, 3} replaced, reasoning ones with {0}); the
router picks those sets for new queries of each kind, and bad depth inputs are refused with the reason."""

from __future__ import annotations

import json

import pytest

from llora_cli.data import load_data
from llora_cli.router.fit import is_heldout
from llora_cli.router.model import Router

# Seed 002's pairs rank by score first, so DPO and ORPO prefer the largest set at the best score (here 1.0) while
# FBC clones the largest set >= 0.99: the paths make both the same set ({2, 3}, {0}) so every method has one target.
PATHS = {"automation": [{"added": 3, "layers": [3], "score": 1.0}, {"added": 2, "layers": [2, 3], "score": 1.0},
                        {"added": 1, "layers": [1, 2, 3], "score": 0.5}],
         "reasoning": [{"added": 0, "layers": [0], "score": 1.0}, {"added": 1, "layers": [0, 1], "score": 0.98}]}


def _stage(store, name: str, files: dict[str, str]):
    st = store.new_staging(name)
    for f, text in files.items():
        (st / f).write_text(text)
    return st


def make_depth_set(store, base, *, name="depth", layers=4, paths=PATHS):
    la = store.create("layer-adapters", f"la-{name}", staging=_stage(store, f"la-{name}", {"x.json": name}),
                      parents=[(base.id, "runs_on")], base_hash=base.content_hash, metadata={"layers": layers})
    rows = []
    for ds, domain in (("auto", "automation"), ("reason", "reasoning")):
        data = load_data(store, ds)
        for i, r in enumerate(data.train[:20]):
            text = next(m["content"] for m in reversed(r["messages"]) if m["role"] == "user")
            rows.append({"query": text, "domain": domain, "dataset": data.artifact.id, "row": i,
                         "answer": {"text": "x", "tokens": 5, "correct": True},
                         "depth": {"layers": paths[domain][-1]["layers"] if paths[domain] else [],
                                   "score": paths[domain][-1]["score"] if paths[domain] else 1.0,
                                   "steps": paths[domain], "passes": 4, "answer_tokens": 5, "limit": 3}})
    meta = {"base": {"id": base.id, "name": base.name, "kind": base.kind},
            "depth": {"layer_set": {"id": la.id, "name": la.name, "content_hash": la.content_hash}, "layers": layers}}
    st = _stage(store, name, {"scenarios.jsonl": "".join(json.dumps(r) + "\n" for r in rows)})
    return store.create("scenario-set", name, staging=st, metadata=meta, base_hash=base.content_hash,
                        parents=[(base.id, "runs_on"), (la.id, "uses")]), la


def rows_of(store, name):
    return [json.loads(x) for x in (store.path_of(store.resolve(name).id) / "scenarios.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["fbc", "dpo", "orpo"])
def test_fit_with_depth_learns_the_layer_set_of_each_kind_of_query(cli, store, catalog, fake_engine, method):
    base, mods = catalog
    cli.json("router", "collect", "b", "--data", "auto", "--data", "reason", "--limit", "10", "--name", "sc")
    dscen, la = make_depth_set(store, base)
    res = cli.json("router", "fit", "sc", "--depth", "depth", "--method", method, "--name", "r", "steps=200")
    d = res["training"]["depth"]
    assert d["rows"]["train"] + d["rows"]["heldout"] == 40 and d["rows"]["heldout"] >= 1
    # targets: automation {2, 3} (the largest set scoring >= 0.99), reasoning {0}
    # What each method guarantees on its training queries (docs/router.md, "Depth heads"): FBC clones the target
    # set; ORPO (SFT on the winners + odds ratio) picks a set the path measured as keeping the answer; DPO orders
    # every pair (its objective) but, with nothing anchoring the layers that never differ within a pair, its
    # k = round(mu * L) top-k need not be any measured set.
    tr = d["train"]
    if method in ("fbc", "orpo"):
        assert "warning" not in d
    if method == "fbc":
        assert tr["exact"] == tr["n"] and d["heldout"]["safe_rate"] >= 0.6
    elif method == "orpo":
        assert tr["safe"] == tr["n"]
    else:
        assert tr["pairs"]["rate"] >= 0.95
    # pairs per query: automation {}, {3}, {2,3}, {1,2,3} -> 6; reasoning {}, {0}, {0,1} -> 3
    n_auto = sum(r["domain"] == "automation" for r in rows_of(store, "depth") if not is_heldout(r["query"], 0.2))
    assert tr["pairs"]["n"] == 6 * n_auto + 3 * (tr["n"] - n_auto)
    stages = [p["stage"] for p in d["loss_curve"]]
    assert stages[0] == "depth fbc" and stages[-1] == ("depth fbc" if method == "fbc" else f"depth {method}")
    router = Router.load(store.path_of(res["id"]), what="router r")
    assert router.depth_layers == 4
    rows = [json.loads(x) for x in (store.path_of(dscen.id) / "scenarios.jsonl").read_text().splitlines()]
    train = [r for r in rows if not is_heldout(r["query"], 0.2)]
    emb = router.encoder.encode([r["query"] for r in train])
    served = router.layer_sets(emb)  # the served (numpy) heads choose what training measured (torch)
    exact = sum(s == ([2, 3] if r["domain"] == "automation" else [0]) for s, r in zip(served, train))
    assert exact == tr["exact"]
    assert all(len(s) == 1 for s in router.layer_sets(emb, k=1))
    with pytest.raises(ValueError, match="0..3"):
        router.layer_sets(emb, k=4)
    shown = cli.json("routers", "show", "r")
    roles = {(p["id"], p["role"]) for p in shown["parents"]}
    assert {(dscen.id, "uses"), (la.id, "uses")} <= roles
    spec = json.loads((store.path_of(res["id"]) / "router.json").read_text())
    assert spec["heads"]["layers"]["out"] == 4 and spec["heads"]["ratio"]["out"] == 2


def test_overreach_warning_by_hand():
    from llora_cli.router.depth.fitting import overreach_warning

    figs = {"n": 24, "safe": 0, "k_predicted_mean": 29.0, "k_target_mean": 1.75}
    w = overreach_warning(figs, 30)
    assert "29 of 30 layers" in w and "1.75" in w and "0 of 24" in w and "--method fbc" in w
    # within target + max(2, target): no warning (orpo's 2.9 against 1.75; a 10-layer target and 19.9 predicted)
    assert overreach_warning({**figs, "k_predicted_mean": 2.9}, 30) is None
    assert overreach_warning({**figs, "k_predicted_mean": 19.9, "k_target_mean": 10.0}, 30) is None
    assert overreach_warning({**figs, "k_predicted_mean": 20.1, "k_target_mean": 10.0}, 30) is not None
    assert overreach_warning({"n": 0}, 30) is None


def test_fit_warns_when_the_depth_heads_overreach(cli, store, catalog, fake_engine, monkeypatch):
    from llora_cli.router.depth import fitting

    base, mods = catalog
    cli.json("router", "collect", "b", "--data", "auto", "--data", "reason", "--limit", "10", "--name", "sc")
    make_depth_set(store, base)
    # heads that replace every layer for every query (what DPO's did on SmolLM2): targets are {2, 3} and {0}
    monkeypatch.setattr(fitting, "predict", lambda lh, rh, x, count: [frozenset(range(count))] * len(x))
    r = cli("router", "fit", "sc", "--depth", "depth", "--method", "fbc", "--name", "r", "steps=20", "--json")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "replace 4 of 4 layers" in r.stderr
    stored = json.loads(r.stdout)["training"]["depth"]["warning"]
    assert stored.startswith("the depth heads replace 4 of 4 layers")
    assert cli.json("routers", "show", "r")["metadata"]["training"]["depth"]["warning"] == stored


def test_fit_depth_refusals(cli, store, catalog, fake_engine):
    base, mods = catalog
    cli.json("router", "collect", "b", "--data", "auto", "--data", "reason", "--limit", "10", "--name", "sc")
    r = cli("router", "fit", "sc", "--depth", "sc")
    assert r.exit_code == 2 and "holds modifier outcomes, not depth scenarios" in r.stderr
    make_depth_set(store, base, name="flat", paths={"automation": [], "reasoning": []})
    r = cli("router", "fit", "sc", "--depth", "flat")
    assert r.exit_code == 2 and "no depth scenario replaces a layer" in r.stderr and "Traceback" not in r.output
    r = cli("router", "fit", "flat")
    assert r.exit_code == 2 and "holds depth scenarios" in r.stderr and "--depth flat" in r.stderr
    _, la = make_depth_set(store, base, name="gone")
    cli.json("discard", la.name, "--yes")
    r = cli("router", "fit", "sc", "--depth", "gone")
    assert r.exit_code == 2 and f"'{la.name}'" in r.stderr and "discarded" in r.stderr
    assert store.list(kind="router") == []
