"""`llora data add`: a user file registered with a checker and/or as held-out rows, checked before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

from llora_cli import tasks
from llora_cli.data import load_data

DATA = Path(__file__).resolve().parents[1] / "data"


def test_handwritten_set_becomes_held_out_task_data(cli, store):
    d = cli.json("data", "add", DATA / "automation_handwritten.jsonl", "--task", "automation", "--held-out")
    assert d["metadata"]["task"] == "automation" and d["metadata"]["rows"] == {"train": 0, "test": 40}
    data = load_data(store, d["id"])
    assert data.train == [] and len(data.test) == 40 and data.task == "automation"
    check = tasks.checker("automation")
    first = json.loads((DATA / "automation_handwritten.jsonl").read_text().splitlines()[0])
    assert data.test[0]["check"] == first["check"] and check(data.test[0], first["reference"])
    again = cli.json("data", "add", DATA / "automation_handwritten.jsonl", "--task", "automation", "--held-out")
    assert again["id"] == d["id"]  # the same file added the same way: the same dataset
    as_train = cli.json("data", "add", DATA / "automation_handwritten.jsonl", "--task", "automation")
    assert as_train["id"] != d["id"] and as_train["metadata"]["rows"] == {"train": 40, "test": 0}


def test_answers_become_the_checkers_expected_values(cli, store, tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "2 + 3?"}], "answer": 5}) + "\n"
                 + json.dumps({"messages": [{"role": "user", "content": "Half of 8?"}], "answer": "4"}) + "\n")
    d = cli.json("data", "add", f, "--task", "reasoning", "--held-out", "--name", "qa-set")
    rows = load_data(store, "qa-set").test
    assert d["name"] == "qa-set" and [r["check"] for r in rows] == [{"answer": 5}, {"answer": 4}]


def test_bad_rows_and_checkers_are_refused_and_nothing_is_registered(cli, store, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "How many?"},
                                          {"role": "assistant", "content": "a few"}]}) + "\n")
    r = cli("data", "add", f, "--task", "reasoning")
    assert r.exit_code == 2 and f"{f}:1" in r.stderr and "integer answer" in r.stderr and "Traceback" not in r.output
    r = cli("data", "add", f, "--task", "bogus")
    assert r.exit_code == 2 and "unknown --task 'bogus'" in r.stderr
    r = cli("data", "add", tmp_path / "missing.jsonl", "--task", "reasoning")
    assert r.exit_code == 2 and "is not a file" in r.stderr
    assert store.list(kind="dataset") == []
