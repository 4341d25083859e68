"""`llora router collect` through a real engine: a tiny Llama and a tiny modifier trained on it."""

from __future__ import annotations

import json


def test_collect_measures_every_candidate_on_the_transformers_engine(cli, store, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "8", "--name", "auto")
    cli.json("data", "make", "reasoning", "--n", "8", "--name", "reason")
    cli.json("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
             "--name", "m-automation", "max_steps=2")
    res = cli.json("router", "collect", "tiny", "--data", "auto", "--data", "reason", "--limit", "2",
                   "--engine", "transformers")
    assert res["rows"] == 4 and len(res["candidates"]) == 2
    rows = [json.loads(x) for x in (store.path_of(res["id"]) / "scenarios.jsonl").read_text().splitlines()]
    assert [r["domain"] for r in rows] == ["automation", "automation", "reasoning", "reasoning"]
    for r in rows:
        assert set(r["candidates"]) == set(res["candidates"])
        for o in r["candidates"].values():
            assert o["score"] in (0, 1) and 1 <= o["tokens"] <= 80 and isinstance(o["text"], str)
