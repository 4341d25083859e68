"""Classification data (issue 15, first part): `llora data make intent` and user files of text + label rows."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from llora_cli import tasks
from llora_cli.classify import intent
from llora_cli.data import load_data
from llora_cli.tasks import automation


def test_intent_rows_are_balanced_and_held_out_by_phrasing_and_family():
    s = intent.make(220, n_test=44, seed=3)
    assert intent.LABELS == [*automation.SIGNATURES, "none"] and len(intent.LABELS) == 11
    assert Counter(r["label"] for r in s.train) == {label: 20 for label in intent.LABELS}
    assert Counter(r["label"] for r in s.test) == {label: 4 for label in intent.LABELS}
    assert not {r["text"] for r in s.train} & {r["text"] for r in s.test}
    assert len({r["text"] for r in s.train}) == 220
    train_pairs = {(r["family"], r["phrasing"]) for r in s.train}
    assert not train_pairs & {(r["family"], r["phrasing"]) for r in s.test}  # no wording of a test row was trained
    split = tasks.family_split("automation")
    held_families = {automation.FAMILIES[i].id for i in split.unseen_families}
    assert held_families and not held_families & {r["family"] for r in s.train}
    assert {r["label"] for r in s.test if r["family"] in held_families} == {"none"}
    for r in s.train + s.test:  # the label is the family's tool, and the text is that family's request
        fam = next(f for f in automation.FAMILIES if f.id == r["family"])
        assert r["label"] == (fam.tool or "none") and r["task"] == "intent"
    assert intent.make(220, n_test=44, seed=3) == s and intent.make(220, n_test=44, seed=4).train != s.train
    assert intent.check({"label": "timer"}, "timer") and not intent.check({"label": "timer"}, "Timer")


def test_data_make_intent_registers_classification_rows_with_their_labels(cli, store):
    d = cli.json("data", "make", "intent", "--n", "44", "--n-test", "22", "--name", "intents")
    assert d["metadata"]["format"] == "classify" and d["metadata"]["labels"] == intent.LABELS
    data = load_data(store, "intents")
    assert data.format == "classify" and len(data.train) == 44 and len(data.test) == 22
    assert set(data.train[0]) >= {"text", "label"}
    r = cli("data", "make", "intent", "--n", "10", "--n-test", "-1")
    assert r.exit_code == 2 and "--n-test must be at least 0" in r.stderr


def test_a_user_file_of_text_and_label_rows_keeps_its_labels(cli, store, tmp_path):
    f = tmp_path / "sentiment.jsonl"
    rows = [{"text": "great film", "label": "pos"}, {"text": "dull plot", "label": "neg"}, {"text": "ok", "label": 3}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = cli.json("data", "add", f, "--held-out")
    assert d["metadata"]["format"] == "classify" and d["metadata"]["labels"] == ["3", "neg", "pos"]
    assert load_data(store, d["id"]).test[2] == {"text": "ok", "label": "3"}
    assert load_data(store, str(f)).format == "classify"  # a path given to --data is registered the same way
    assert "labels: 3, neg, pos" in " ".join(cli("data", "add", f, "--name", "senti").stderr.split())


@pytest.mark.parametrize("rows, message", [
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], "every row has the label 'x'; a classifier needs at "
                                                                 "least two labels"),
    ([{"text": "a", "label": "x"}, {"label": "y"}], "bad.jsonl:2: a classification row needs a non-empty string 'text'"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": True}], "bad.jsonl:2: 'label' must be a non-empty string or"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": " "}], "bad.jsonl:2: 'label' must be a non-empty string or"),
    ([{"text": "a", "label": "x"}, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
     "mixes chat and classify rows"),
])
def test_bad_classification_files_are_refused_and_nothing_is_registered(cli, store, tmp_path, rows, message):
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("data", "add", f)
    assert r.exit_code == 2 and message in " ".join(r.stderr.split()) and "Traceback" not in r.output
    assert not store.artifacts(kind="dataset")


def test_generation_commands_refuse_classification_rows(cli, store, tiny_model_dir, tmp_path):
    """Read as plain text, the labels would be silently dropped: train, eval and a checker refuse them."""
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "intent", "--n", "22", "--n-test", "11", "--name", "intents")
    for args in (["train", "--base", "tiny", "--data", "intents", "--dry-run"], ["eval", "tiny", "--data", "intents"]):
        r = cli(*args)
        assert r.exit_code == 2 and "holds classification rows (text + label" in " ".join(r.stderr.split()), args
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "a", "label": "x"}) + "\n" + json.dumps({"text": "b", "label": "y"}) + "\n")
    r = cli("data", "add", f, "--task", "exact")
    assert r.exit_code == 2 and "not a --task checker" in r.stderr and not store.artifacts(kind="dataset")[1:]
