"""`llora eval --task` on user data, the Wilson interval, the exact McNemar test and `--against`."""

from __future__ import annotations

import json

import pytest

from llora_cli import checkers
from llora_cli.stats import Paired, mcnemar_exact, paired_bootstrap, wilson
from llora_store.errors import BadInput


# Hand computations, z = 1.96 (z² = 3.8416), centre = (p + z²/2n)/(1 + z²/n),
# half = z/(1 + z²/n) * sqrt(p(1-p)/n + z²/4n²):
#   k=0,  n=10:  centre = 0.19208/1.38416 = 0.138770, half = 1.416021*sqrt(0.009604) = 0.138770 -> 0, 0.27754
#   k=5,  n=10:  centre = 0.5, half = 1.416021*sqrt(0.025 + 0.009604) = 0.263410 -> 0.23659, 0.76341
#   k=81, n=100: centre = 0.829208/1.038416 = 0.798532, half = 1.887490*sqrt(0.001539 + 0.00009604) = 0.076322
#                -> 0.72221, 0.87485
@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.27754), (5, 10, 0.23659, 0.76341), (81, 100, 0.72221, 0.87485),
                                       (10, 10, 0.72246, 1.0)])
def test_wilson_matches_hand_computed_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson(0, 0)
    with pytest.raises(ValueError):
        wilson(11, 10)


# p = min(1, 2 * sum_{i<=min(b,c)} C(b+c, i) / 2^(b+c)):
#   b=1, c=9: 2 * (1 + 10) / 1024 = 0.021484375      b=2, c=8: 2 * (1 + 10 + 45) / 1024 = 0.109375
#   b=0, c=5: 2 * 1 / 32 = 0.0625                    b=5, c=5: 2 * 638 / 1024 > 1 -> 1
#   b=0, c=0: no discordant pair -> 1                  b=10, c=0: 2 / 1024 = 0.001953125
@pytest.mark.parametrize("b,c,p", [(1, 9, 0.021484375), (9, 1, 0.021484375), (2, 8, 0.109375), (0, 5, 0.0625),
                                   (5, 5, 1.0), (0, 0, 1.0), (10, 0, 0.001953125)])
def test_mcnemar_exact_matches_hand_computed_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_paired_counts_only_discordant_rows():
    a = [True, True, True, False, False, True]
    b = [True, False, False, False, True, True]
    paired = Paired.of(a, b)
    assert (paired.a.k, paired.b.k, paired.only_a, paired.only_b) == (4, 3, 2, 1)
    assert paired.difference == pytest.approx(1 / 6)
    assert paired.p_value == 1.0  # 2 * (1 + 3) / 8 = 1
    assert str(paired.a) == "4/6 = 66.7% (95% CI 30.0-90.3%, Wilson)"


def row(user, assistant, **extra):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


def score(task, rows, outputs):
    c = checkers.parse_task(task)
    prepared = checkers.prepare(rows, [f"f.jsonl:{i}" for i in range(1, len(rows) + 1)], c)
    return [c.check(r, o) for r, o in zip(prepared, outputs)]


def test_paired_bootstrap_interval_of_an_accuracy_difference():
    """Identical verdicts: 0 with a zero-width interval. 30 rows where A is right on 15 more rows than B: the
    difference is 0.5; resampling pairs keeps the interval around it, within the normal approximation's reach
    (sd of the mean of d in {0, 1} at p = 0.5: 0.5 / sqrt(30) = 0.091, so about +-0.18), and never outside [0, 1]
    as d >= 0 on every row. Deterministic per seed; unequal lengths refused."""
    same = [True, False, True] * 10
    assert paired_bootstrap(same, same) == {"difference": 0.0, "ci95": [0.0, 0.0], "resamples": 2000,
                                            "method": "paired percentile bootstrap"}
    a, b = [True] * 30, [False] * 15 + [True] * 15
    r = paired_bootstrap(a, b, seed=3)
    assert r["difference"] == 0.5 and 0.28 <= r["ci95"][0] <= 0.36 and 0.64 <= r["ci95"][1] <= 0.72
    assert r == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(b, a, seed=3)["difference"] == -0.5
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])


def test_generic_checkers_score_against_answer_or_reference():
    rows = [row("Capital of France?", "Paris"), row("2+2?", "4")]
    assert score("exact", rows, ["  Paris\n", "four"]) == [True, False]
    assert score("exact", rows, ["paris", "4"]) == [False, True]  # case-sensitive
    assert score("contains", rows, ["It is Paris.", "2+2 is 5"]) == [True, False]
    answered = [row("Q1", "long explanation", answer="B"), row("Q2", "x", answer=7)]
    assert score("exact", answered, ["B", "7"]) == [True, True]
    assert score("regex:answer: ([A-D0-9]+)", answered, ["... answer: B", "answer: 8"]) == [True, False]
    assert score("regex:[A-D]", answered, ["C then B", "none"]) == [False, False]  # whole first match: "C"


def test_task_checkers_derive_their_check_from_user_rows():
    rows = [row("How many?", "3 + 4 = 7. The answer is 7."), row("How many?", "Then 12, so 5")]
    assert score("reasoning", rows, ["The answer is 7.", "I think 5"]) == [True, True]
    assert score("reasoning", [row("How many?", "x", answer="12")], ["I think 12"]) == [True]
    call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert score("automation", [row("Weather in Oslo?", json.dumps(call))], [f"sure {json.dumps(call)}"]) == [True]
    autos = [row("Weather in Oslo?", "?", answer=call), row("Weather in Oslo?", "?", answer=json.dumps(call))]
    assert score("automation", autos, ["{}", json.dumps(call)]) == [False, True]
    from llora_cli.tasks.automation import NO_TOOL_ANSWER

    none = [row("Sing me a song", NO_TOOL_ANSWER)]
    assert score("automation", none, [NO_TOOL_ANSWER]) == [True]
    assert score("automation", none, [json.dumps(call)]) == [False]
    assert score("automation", [row("Sing", "?", answer=None)], [NO_TOOL_ANSWER]) == [True]
    code = [row("Add one", "def f(x): return x + 1", check={"function": "f", "tests": [[[1], 2], [[5], 6]]})]
    assert score("code", code, ["```python\ndef f(x):\n    return x + 1\n```"]) == [True]
    assert score("code", code, ["def f(x):\n    return x"]) == [False]


def test_generated_task_rows_keep_their_own_check():
    from llora_cli import tasks

    rows = tasks.make("reasoning", 3, n_test=1).train
    expected = [r["messages"][1]["content"] for r in rows]
    assert score("reasoning", rows, expected) == [True, True, True]
    assert score("reasoning", rows, ["The answer is -99999."] * 3) == [False, False, False]


@pytest.mark.parametrize("task,rows,message", [
    ("exact", [{"text": "just text"}], "f.jsonl:1: a plain-text row"),
    ("exact", [row("a", "b", answer="x"), row("c", "d")], "f.jsonl:2: no \"answer\" (other rows have one, e.g. f.jsonl:1)"),
    ("exact", [row("a", "   ")], "f.jsonl:1: the expected answer (the final assistant reply) is empty"),
    ("exact", [row("a", "b", answer=["x"])], "f.jsonl:1: \"answer\" must be a string or a number"),
    ("reasoning", [row("a", "no number here")], "f.jsonl:1: --task reasoning needs an integer answer"),
    ("automation", [row("a", "b", answer="not json")], "f.jsonl:1: --task automation needs a JSON object"),
    ("code", [row("a", "def f(): pass")], "f.jsonl:1: --task code needs \"check\""),
])
def test_rows_without_an_expected_answer_are_refused_by_line(task, rows, message):
    with pytest.raises(BadInput) as e:
        checkers.prepare(rows, ["f.jsonl:1", "f.jsonl:2"][:len(rows)], checkers.parse_task(task))
    assert message in e.value.message and e.value.exit_code == 2


@pytest.mark.parametrize("task,message", [("regex:(unclosed", "'(unclosed' is not a valid regular expression"),
                                          ("regex:", "needs a pattern"), ("poetry", "unknown --task 'poetry'")])
def test_bad_tasks_are_usage_errors(task, message):
    with pytest.raises(BadInput) as e:
        checkers.parse_task(task)
    assert message in e.value.message and e.value.exit_code == 2


# --- CLI on the tiny model -------------------------------------------------------------------------

@pytest.fixture
def tiny(cli, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    return tiny_model_dir


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_task_on_user_file_prints_and_stores_wilson_accuracy(cli, tiny, tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [row(f"What is {i}?", str(i)) for i in range(6)])
    res = cli.json("eval", "tiny", "--data", f, "--task", "contains", "--max-new-tokens", "4")
    # The random tiny model never says a digit; each row is scored, the interval is Wilson's for 0/6.
    assert (res["n"], res["correct"], res["task"], res["split"]) == (6, 0, "contains", "train")
    assert res["ci95"] == [0.0, round(wilson(0, 6)[1], 4)] and res["ci_method"] == "wilson"
    assert res["verdicts"] == "000000" and res["loss"] is not None
    assert res["data"]["sha256"] and res["accuracy_text"] == f"0/6 = 0.0% (95% CI 0.0-{wilson(0, 6)[1] * 100:.1f}%, Wilson)"
    stored = cli.json("show", "tiny")["evaluations"][0]["metrics"]
    assert stored["ci95"] == res["ci95"] and stored["task"] == "contains" and stored["n"] == 6
    replies = tmp_path / "replies.jsonl"
    text = cli("eval", "tiny", "--data", f, "--task", "contains", "--max-new-tokens", "4", "--outputs", replies)
    assert text.exit_code == 0 and "accuracy (contains): 0/6 = 0.0% (95% CI 0.0-39.0%, Wilson)" in text.stdout
    lines = [json.loads(x) for x in replies.read_text().splitlines()]  # every row, not the 3 samples
    assert [x["row"] for x in lines] == list(range(6)) and {x["artifact"] for x in lines} == {"tiny"}
    assert [x["prompt"] for x in lines] == [f"What is {i}?" for i in range(6)]
    assert [x["expected"] for x in lines] == [{"expected": str(i)} for i in range(6)]
    assert all(x["correct"] is False and isinstance(x["output"], str) for x in lines)
    assert not list(tmp_path.glob(".replies.jsonl.tmp"))
    nowhere = cli("eval", "tiny", "--data", f, "--task", "contains", "--outputs", tmp_path / "no" / "r.jsonl")
    assert nowhere.exit_code == 2 and "directory" in nowhere.stderr and "does not exist" in nowhere.stderr
    assert len(cli.json("show", "tiny")["evaluations"]) == 2  # refused before evaluating


def test_eval_refuses_a_file_without_answers_and_stores_nothing(cli, store, tiny, tmp_path):
    f = write_jsonl(tmp_path / "mixed.jsonl", [row("a", "b", answer="x"), row("c", "d")])
    res = cli("eval", "tiny", "--data", f, "--task", "exact")
    assert res.exit_code == 2 and "mixed.jsonl:2: no \"answer\"" in res.stderr
    bad = cli("eval", "tiny", "--data", f, "--task", "regex:(")
    assert bad.exit_code == 2 and "'(' is not a valid regular expression" in bad.stderr
    assert store.artifacts(kind="dataset") == []  # refused before the file was registered
    assert cli.json("show", "tiny")["evaluations"] == []


def test_task_data_accuracy_has_n_and_interval(cli, tiny):
    cli.json("data", "make", "automation", "--n", "20", "--name", "auto")
    res = cli.json("eval", "tiny", "--data", "auto", "--limit", "5")
    assert res["task"] == "automation" and res["n"] == 5 and len(res["verdicts"]) == 5
    assert res["ci95"] == [round(x, 4) for x in wilson(res["correct"], 5)]


def test_against_pairs_two_artifacts_on_the_same_rows(cli, tiny, other_tiny_model_dir, tmp_path):
    cli.json("bases", "add", other_tiny_model_dir, "--name", "other")
    f = write_jsonl(tmp_path / "qa.jsonl", [row(f"Say {i}", "x", answer=str(i)) for i in range(4)])
    res = cli.json("eval", "tiny", "--data", f, "--task", "exact", "--against", "other", "--max-new-tokens", "3")
    cmp = res["comparison"]
    assert cmp["against"]["name"] == "other" and cmp["a"]["n"] == cmp["b"]["n"] == 4
    assert cmp["difference"] == pytest.approx(cmp["a"]["accuracy"] - cmp["b"]["accuracy"], abs=1e-4)
    assert cmp["p_value"] == mcnemar_exact(cmp["discordant"]["only_a"], cmp["discordant"]["only_b"])
    stored_a = cli.json("show", "tiny")["evaluations"][0]["metrics"]
    stored_b = cli.json("show", "other")["evaluations"][0]["metrics"]
    assert stored_a["comparison"]["p_value"] == cmp["p_value"] and "comparison" not in stored_b
    assert stored_b["n"] == 4 and stored_b["task"] == "exact"
    same = cli("eval", "tiny", "--data", f, "--task", "exact", "--against", "tiny")
    assert same.exit_code == 2 and "two different artifacts" in same.stderr
    no_task = cli("eval", "tiny", "--data", f, "--against", "other")
    assert no_task.exit_code == 2 and "give --task" in no_task.stderr


@pytest.mark.parametrize("task,row,text,done", [
    ("reasoning", {"check": {"answer": 12}}, "3 + 9 = 12. The answer is 1", False),  # the number may go on
    ("reasoning", {"check": {"answer": 12}}, "3 + 9 = 12. The answer is 12.", True),
    ("reasoning", {"check": {"answer": 12}}, "so the answer is clear: 12 and", False),
    ("automation", {"check": {"call": None}}, 'Call {"name": "t", "arguments": {"a": 1}', False),  # inner object only
    ("automation", {"check": {"call": None}}, 'Call {"name": "t", "arguments": {"a": 1}} and', True),
    ("automation", {"check": {"call": None}}, "No tool fits this request.", False),
    ("code", {"check": {}}, "```python\ndef f():\n    return 1\n", False),
    ("code", {"check": {}}, "```python\ndef f():\n    return 1\n```", True),
    ("instruct", {"check": {"reference": "Paris"}}, "The capital is paris", True),
    ("instruct", {"check": {"reference": "Paris"}}, "The capital is", False),
])
def test_answer_done_marks_where_more_text_cannot_change_the_verdict(task, row, text, done):
    from llora_cli import checkers, tasks

    assert checkers.answer_done(task)(row, text) is done
    if done and task != "code":  # once done, any continuation keeps the checker's verdict
        check = tasks.checker(task)
        verdict = check(row, text)
        assert all(check(row, text + more) == verdict
                   for more in (" The answer is 99", ' {"name": "x", "arguments": {}}', " 7", "\nParis"))
