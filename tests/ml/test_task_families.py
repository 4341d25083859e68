"""Task families: enough of them, a family-level held-out split, solutions that pass their own checkers, and
hand-written evaluation sets that pass their checkers and were not produced by the generators' templates."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from llora_cli import tasks
from llora_cli.tasks import automation, code, reasoning

DATA = Path(__file__).resolve().parents[1] / "data"
FAMILY_KINDS = ("reasoning", "code", "automation")


def handwritten(kind: str) -> list[dict]:
    with open(DATA / f"{kind}_handwritten.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def pairs(rows: list[dict]) -> set[tuple[str, int]]:
    return {(r["family"], r["phrasing"]) for r in rows}


def test_each_kind_has_enough_families_and_phrasings():
    assert len(reasoning.FAMILIES) >= 20
    assert len(code.FAMILIES) >= 30
    tools = {f.tool for f in automation.FAMILIES if f.tool}
    assert len(tools) >= 8 and tools == set(automation.TOOLS)
    assert any(f.tool is None for f in automation.FAMILIES)  # requests no tool serves
    assert all(f.optional for f in automation.FAMILIES if f.tool)  # every tool has an optional argument
    for kind in FAMILY_KINDS:
        families = tasks.KINDS[kind].FAMILIES
        assert len({f.id for f in families}) == len(families)
        assert all(len(f.phrasings) >= (5 if kind == "automation" else 3) for f in families)


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_held_out_split_shares_no_family_phrasing_pair_with_train(kind):
    split = tasks.family_split(kind)
    ids = [f.id for f in tasks.KINDS[kind].FAMILIES]
    allowed_train = {(ids[f], p) for f, ps in split.train.items() for p in ps}
    unseen_families = {ids[f] for f in split.unseen_families}
    assert unseen_families and len(unseen_families) == len(ids) // 5
    for seed in (0, 1, 7):
        s = tasks.make(kind, 400, seed=seed)
        train, test = pairs(s.train), pairs(s.test)
        assert not train & test
        assert train <= allowed_train
        assert not {f for f, _ in train} & unseen_families  # whole families never trained on
        assert {f for f, _ in test} & unseen_families and {f for f, _ in test} - unseen_families
        assert not {tasks.prompt_of(r) for r in s.train} & {tasks.prompt_of(r) for r in s.test}
        # held-out rows alternate: unseen family, then an unseen phrasing of a training family
        assert [r["family"] in unseen_families for r in s.test[:6]] == [True, False] * 3


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_all_families_trains_on_the_held_out_families_too_and_has_no_test_split(kind):
    split = tasks.family_split(kind)
    ids = [f.id for f in tasks.KINDS[kind].FAMILIES]
    unseen_families = {ids[f] for f in split.unseen_families}
    unseen_phrasings = {(ids[f], p) for f, ps in split.unseen_phrasings.items() for p in ps}
    s = tasks.make(kind, 600, seed=0, all_families=True)
    assert s.test == [] and len(s.train) == 600
    assert {f for f, _ in pairs(s.train)} == set(ids)  # every family, the held-out ones among them
    assert unseen_families <= {f for f, _ in pairs(s.train)} and pairs(s.train) & unseen_phrasings
    with pytest.raises(ValueError, match="no held-out split"):
        tasks.make(kind, 10, n_test=5, all_families=True)


def test_all_families_is_refused_clearly_where_it_cannot_apply(cli, store, tiny_model_dir):
    r = cli("data", "make", "automation", "--n", "20", "--n-test", "5", "--all-families")
    assert r.exit_code == 2 and "no held-out split: drop --n-test 5" in r.stderr and "llora eval" in r.stderr
    r = cli("data", "make", "instruct", "--n", "20", "--all-families")
    assert r.exit_code == 2 and "the instruct generator has no families" in r.stderr
    assert store.list() == []
    made = cli.json("data", "make", "code", "--n", "30", "--all-families")
    assert made["name"] == "code-n30-s0-all"
    d = cli.json("show", made["id"])
    assert d["metadata"]["rows"] == {"train": 30, "test": 0} and d["metadata"]["families"] == "all"
    # its rows are all training rows: scoring a model on them is refused (rows written apart are the way)
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    r = cli("eval", "tiny", "--data", made["id"])
    assert r.exit_code == 2 and "made with --all-families: it has no held-out rows" in r.stderr
    assert "--data FILE --task code" in r.stderr


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_make_is_deterministic_and_the_test_split_does_not_depend_on_n(kind):
    a = tasks.make(kind, 200, seed=5)
    assert a == tasks.make(kind, 200, seed=5)
    assert a.train != tasks.make(kind, 200, seed=6).train
    assert tasks.make(kind, 0, seed=5, n_test=20).test == a.test
    assert all(r["task"] == kind and isinstance(r["phrasing"], int) for r in a.train + a.test)


STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)\.|(\d+) \+ (\d+) \+ (\d+) = (\d+)\.|(\d+) / (\d+) = (\d+) remainder (\d+)\.")


@pytest.mark.parametrize("family", range(len(reasoning.FAMILIES)))
def test_reasoning_solutions_do_correct_steps_and_state_the_answer(family):
    fam = reasoning.FAMILIES[family]
    rng = random.Random(family)
    for phrasing in range(len(fam.phrasings)):
        for _ in range(25):
            row = reasoning.generate(rng, family, phrasing)
            solution = row["messages"][1]["content"]
            answer = row["check"]["answer"]
            assert solution.endswith(f"The answer is {answer}.") and answer >= 0
            steps = STEP.findall(solution)
            assert 1 <= len(steps) <= 3
            for s in steps:
                if s[1]:
                    a, op, b, c = int(s[0]), s[1], int(s[2]), int(s[3])
                    assert (a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b) == c
                elif s[4]:
                    assert int(s[4]) + int(s[5]) + int(s[6]) == int(s[7])
                else:
                    assert divmod(int(s[8]), int(s[9])) == (int(s[10]), int(s[11]))
            assert reasoning.check(row, solution)
            assert "{" not in row["messages"][0]["content"]


@pytest.mark.parametrize("family", range(len(code.FAMILIES)))
def test_code_reference_solutions_pass_their_hidden_tests_in_the_sandbox(family):
    fam = code.FAMILIES[family]
    rng = random.Random(family)
    for phrasing in range(len(fam.phrasings)):
        row = code.generate(rng, family, phrasing)
        prompt = row["messages"][0]["content"]
        assert f"`{row['check']['function']}(" in prompt
        for args, _ in row["check"]["tests"]:
            assert json.dumps(args) not in prompt  # the hidden tests stay hidden
    assert code.check(row, row["messages"][1]["content"])
    wrong = f"def {row['check']['function']}(*args):\n    return None"
    assert not code.check(row, wrong)


@pytest.mark.parametrize("family", range(len(automation.FAMILIES)))
def test_automation_solutions_are_the_expected_call_with_stated_arguments_only(family):
    fam = automation.FAMILIES[family]
    rng = random.Random(family)
    with_optional = unlisted = 0
    for phrasing in range(len(fam.phrasings)):
        for _ in range(20):
            row = automation.generate(rng, family, phrasing)
            system, user, answer = (m["content"] for m in row["messages"])
            listed = [line.split("(")[0] for line in system.splitlines()[1:-1]]
            assert system == automation.system_prompt(listed) and automation.check(row, answer)
            assert automation.TOOLS_PER_PROMPT <= len(set(listed)) == len(listed) <= len(automation.TOOLS)
            call = row["check"]["call"]
            if fam.tool not in listed:  # a no-tool request, or a tool request whose tool is not offered
                assert call is None and answer == automation.NO_TOOL_ANSWER
                unlisted += fam.tool is not None
                continue
            assert json.loads(answer) == call and call["name"] == fam.tool
            args = call["arguments"]
            assert set(args) <= set(automation.TOOLS[fam.tool])
            for name, value in args.items():
                if not isinstance(value, bool):  # copied from the request; a currency code may be named instead
                    assert str(value) in user or automation.CURRENCY_NAMES.get(value, "\0") in user, (name, value, user)
            with_optional += bool(set(args) & set(fam.optional))
            assert "{" not in user
    if fam.tool:  # about OPTIONAL_SHARE of rows state an optional argument, about UNLISTED_SHARE lack the tool
        n = 20 * len(fam.phrasings)
        assert 0 < with_optional < 0.7 * n and 0.05 * n < unlisted < 0.3 * n


def test_automation_system_prompt_lists_every_tool_and_the_no_tool_answer():
    for name, signature in automation.SIGNATURES.items():
        assert signature in automation.SYSTEM
    assert automation.NO_TOOL_ANSWER in automation.SYSTEM


def test_automation_checker_reads_the_no_tool_answer():
    none = {"check": {"call": None}}
    assert automation.check(none, "No tool fits this request.")
    assert not automation.check(none, '{"name": "timer", "arguments": {"minutes": 5}}')
    assert not automation.check(none, 'No tool fits this request. {"name": "timer", "arguments": {}}')
    assert not automation.check(none, "I cannot do that.")
    call = {"check": {"call": {"name": "timer", "arguments": {"minutes": 5}}}}
    assert not automation.check(call, "No tool fits this request.")


@pytest.mark.parametrize("kind,minimum", [("reasoning", 60), ("code", 30), ("automation", 40)])
def test_handwritten_rows_pass_their_checker_with_their_reference(kind, minimum):
    rows = handwritten(kind)
    check = tasks.checker(kind)
    assert len(rows) >= minimum
    assert len({tasks.prompt_of(r) for r in rows}) == len(rows)
    for row in rows:
        assert row["source"] == "handwritten" and row["task"] == kind
        assert [m["role"] for m in row["messages"]] == (["system", "user"] if kind == "automation" else ["user"])
        assert check(row, row["reference"]), row
        assert not check(row, "I am not sure.")
    if kind == "automation":
        assert all(r["messages"][0]["content"] == automation.SYSTEM for r in rows)
        calls = [r["check"]["call"] for r in rows]
        assert sum(c is None for c in calls) >= 5 and len({c["name"] for c in calls if c}) == len(automation.TOOLS)


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_handwritten_prompts_share_no_eight_word_sequence_with_generated_prompts(kind):
    module = tasks.KINDS[kind]
    rng = random.Random(0)
    every_pair = [(f, p) for f, fam in enumerate(module.FAMILIES) for p in range(len(fam.phrasings))]
    generated: set[tuple[str, ...]] = set()
    for i in range(2000):
        generated |= ngrams(tasks.prompt_of(module.generate(rng, *every_pair[i % len(every_pair)])))
    shared = {tasks.prompt_of(r): ngrams(tasks.prompt_of(r)) & generated for r in handwritten(kind)}
    assert not {p: s for p, s in shared.items() if s}


def test_code_rows_come_in_both_layouts_and_stub_rows_match_the_humaneval_prompt():
    from llora_cli import humaneval

    rows = tasks.make("code", 400, seed=3).train
    stubs = [r for r in rows if r["messages"][0]["content"].startswith(code.STUB_INSTRUCTION)]
    assert 0.3 < len(stubs) / len(rows) < 0.5  # STUB_SHARE = 0.4
    assert humaneval.CHAT_INSTRUCTION == code.STUB_INSTRUCTION
    for row in stubs[:40]:
        prompt, reply = (m["content"] for m in row["messages"])
        name = row["check"]["function"]
        assert prompt.count("```") == 2 and f"```python\ndef {name}(" in prompt and '"""' in prompt
        assert reply.startswith(f"```python\ndef {name}(") and reply.endswith("\n```")
        assert humaneval.chat_reply_done(reply) and code.check(row, reply)
        assert not code.check(row, f"```python\ndef {name}(*args):\n    return None\n```")


def test_automation_rows_list_between_three_and_all_tools():
    sizes = {len(r["messages"][0]["content"].splitlines()) - 2 for r in tasks.make("automation", 300, seed=2).train}
    assert min(sizes) == automation.TOOLS_PER_PROMPT and max(sizes) == len(automation.TOOLS)
    assert len(sizes) == len(automation.TOOLS) - automation.TOOLS_PER_PROMPT + 1
