"""Task generators: deterministic, disjoint splits, checkers that accept right and reject wrong answers."""

from __future__ import annotations

import json

import pytest

from llora_cli import tasks
from llora_cli.tasks import automation, code, reasoning


@pytest.mark.parametrize("kind", sorted(tasks.KINDS))
def test_generation_is_deterministic_and_splits_are_disjoint(kind):
    a, b = tasks.make(kind, 120, seed=3), tasks.make(kind, 120, seed=3)
    assert a == b
    assert tasks.make(kind, 120, seed=4).train != a.train
    train_prompts = {tasks.prompt_of(r) for r in a.train}
    test_prompts = {tasks.prompt_of(r) for r in a.test}
    assert len(a.train) == 120 and len(a.test) == 20
    assert not train_prompts & test_prompts
    if kind == "instruct":  # no families: held out by prompt hash (the others: tests/ml/test_task_families.py)
        assert all(tasks.is_test_prompt(p) for p in test_prompts)


@pytest.mark.parametrize("kind", sorted(tasks.KINDS))
def test_checker_accepts_reference_and_rejects_wrong(kind):
    rows = tasks.make(kind, 20, seed=0, n_test=5).test
    check = tasks.checker(kind)
    for row in rows:
        assert check(row, row["messages"][-1]["content"])
        assert not check(row, "I am not sure.")


def test_reasoning_checker_reads_the_final_number():
    row = {"check": {"answer": 20}}
    assert reasoning.check(row, "3 * 5 = 15. 12 + 15 = 27. 27 - 7 = 20. The answer is 20.")
    assert not reasoning.check(row, "The answer is 21.")


def test_automation_checker_is_exact_json_match():
    row = {"check": {"call": {"name": "timer", "arguments": {"minutes": 5}}}}
    assert automation.check(row, 'Sure: {"name": "timer", "arguments": {"minutes": 5}}')
    assert not automation.check(row, json.dumps({"name": "timer", "arguments": {"minutes": "5"}}))
    assert not automation.check(row, '{"name": "timer"')


def test_code_checker_runs_hidden_tests_in_a_sandbox(tmp_path):
    tests = [[[1], 6], [[-5], 0]]
    assert code.run_sandboxed("def add_5(x):\n    return x + 5", "add_5", tests)
    assert not code.run_sandboxed("def add_5(x):\n    return x + 4", "add_5", tests)
    target = tmp_path / "pwned"
    assert not code.run_sandboxed(f"def add_5(x):\n    open({str(target)!r}, 'w').write('x')\n    return x + 5",
                                  "add_5", tests)
    assert not target.exists()
    assert not code.run_sandboxed("import socket\ndef add_5(x):\n    socket.socket()\n    return x + 5", "add_5", tests)
    assert not code.run_sandboxed("import os\ndef add_5(x):\n    os.system('true')\n    return x + 5", "add_5", tests)
    assert not code.run_sandboxed("def add_5(x):\n    while True:\n        pass", "add_5", tests, timeout=3)
