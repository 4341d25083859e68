"""Observations on any artifact, on both backends: evaluations (shown by describe) and the request log (newest
first, filtered by modifier or base), with their JSON, floats and integer ids as written."""

from __future__ import annotations


def test_evaluations_are_recorded_in_any_state_and_shown_in_order(store):
    base = store.create("base", "eval-base")
    data = store.create("dataset", "eval-data")
    store.deploy(base.id)
    store.record_evaluation(base.id, {"accuracy": 0.25, "n": 4, "rows": [{"ok": True}]}, dataset_id=data.id)
    store.record_evaluation("eval-base", {"accuracy": 0.5}, split="train")
    evals = store.describe(base.id).evaluations
    assert [(e["dataset"], e["split"], e["metrics"]) for e in evals] == [
        (data.id, "test", {"accuracy": 0.25, "n": 4, "rows": [{"ok": True}]}), (None, "train", {"accuracy": 0.5})]
    assert store.get(base.id).state == "deployed"


def test_request_log_newest_first_with_filters(store):
    base = store.create("base", "log-base")
    mod = store.create("modifier", "log-mod", state="trained", parents=[(base.id, "runs_on")])
    common = dict(engine="transformers", prompt="2+2?", tokens_in=3, tokens_out=2, ttft_ms=None)
    first = store.log_request(base_id=base.id, modifier_id=None, client="c" * 80, response="4", latency_ms=12.5,
                              params={"temperature": 0.0}, **common)
    second = store.log_request(base_id=base.id, modifier_id=mod.id, client="cli", response="four", latency_ms=7.25,
                               params={"max_tokens": 8}, **common)
    assert second == first + 1
    rows = store.request_logs()
    assert [r["id"] for r in rows] == [second, first]
    assert rows[0]["modifier"] == {"id": mod.id, "name": "log-mod"} and rows[0]["params"] == {"max_tokens": 8}
    assert rows[1]["client"] == "c" * 64 and rows[1]["latency_ms"] == 12.5 and rows[1]["modifier"] is None
    assert [r["id"] for r in store.request_logs(modifier="none")] == [first]
    assert [r["id"] for r in store.request_logs(modifier="log-mod")] == [second]
    assert [r["id"] for r in store.request_logs(base="log-base", limit=1)] == [second]
