"""`llora router collect` through a real engine: a tiny Llama and two tiny modifiers trained on it."""

from __future__ import annotations

import json


def test_collect_measures_every_candidate_on_the_transformers_engine(cli, store, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "8", "--name", "auto")
    cli.json("data", "make", "reasoning", "--n", "8", "--name", "reason")
    for domain, data in (("automation", "auto"), ("reasoning", "reason")):
        cli.json("train", "--base", "tiny", "--data", data, "--kind", "modifier", "--domain", domain,
                 "--name", f"m-{domain}", "max_steps=2")
    res = cli.json("router", "collect", "tiny", "--data", "auto", "--data", "reason", "--limit", "2",
                   "--engine", "transformers")
    assert res["rows"] == 4 and len(res["candidates"]) == 3
    rows = [json.loads(x) for x in (store.path_of(res["id"]) / "scenarios.jsonl").read_text().splitlines()]
    assert [r["domain"] for r in rows] == ["automation", "automation", "reasoning", "reasoning"]
    for r in rows:
        assert set(r["candidates"]) == set(res["candidates"])
        for o in r["candidates"].values():
            assert o["score"] in (0, 1) and 1 <= o["tokens"] <= 80 and isinstance(o["text"], str)
    # greedy on one engine: measuring again gives the same outcomes
    again = cli.json("router", "collect", "tiny", "--data", "auto", "--data", "reason", "--limit", "2",
                     "--engine", "transformers", "--name", "again")
    rows2 = [json.loads(x) for x in (store.path_of(again["id"]) / "scenarios.jsonl").read_text().splitlines()]
    assert rows2 == rows
