"""HumanEval harness: the shipped data, the sandboxed program runner, pass@1 stored with its interval."""

from __future__ import annotations

import pytest

from llora_cli import humaneval
from llora_cli.stats import wilson


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def test_the_shipped_data_has_164_problems(problems):
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert problems[-1]["task_id"] == "HumanEval/163"
    assert set(problems[0]) >= {"prompt", "test", "entry_point", "canonical_solution"}
    assert humaneval.load_problems(3) == problems[:3]


def test_canonical_solutions_pass_all_164(problems):
    run = humaneval.run(problems, lambda ps: [p["canonical_solution"] for p in ps])
    assert [r.task_id for r in run.results if not r.passed] == []
    assert sum(run.verdicts) == 164


def test_an_empty_body_passes_none(problems):
    run = humaneval.run(problems, lambda ps: ["    pass\n"] * len(ps))
    assert sum(run.verdicts) == 0 and len(run.verdicts) == 164


def test_a_wrong_solution_fails_with_the_assertion(problems):
    p = problems[0]  # has_close_elements -> bool
    passed, error = humaneval.run_program(humaneval.build_program(p, "    return True\n"))
    assert not passed and "AssertionError" in error


@pytest.mark.parametrize("body,message", [
    ("    import socket\n    socket.socket()\n", "sandbox: socket."),
    ("    import os\n    os.system('true')\n", "sandbox: os.system"),
    ("    open('/etc/passwd').read()\n", "reading outside the temp dir"),
    ("    import subprocess\n    subprocess.run(['true'])\n", "sandbox: subprocess"),
])
def test_the_sandbox_refuses_escapes(problems, body, message):
    passed, error = humaneval.run_program(humaneval.build_program(problems[0], body))
    assert not passed and message in error


def test_a_hanging_program_times_out_and_fails(problems):
    passed, error = humaneval.run_program(humaneval.build_program(problems[0], "    while True: pass\n"), timeout=2)
    assert not passed and error == "timed out after 2 s"


def test_a_program_cannot_fake_success_by_exiting_early(problems):
    passed, _ = humaneval.run_program(humaneval.build_program(problems[0], "    import sys; sys.exit(0)\n"))
    assert not passed


def test_raw_completions_stop_at_a_new_top_level_statement():
    text = "    return x + 1\n\n\ndef other():\n    pass\n"
    assert humaneval.truncate_raw(text) == "    return x + 1\n\n"
    assert humaneval.truncate_raw("    return 1\nif __name__ == '__main__':\n") == "    return 1"


def test_chat_replies_with_the_whole_function_replace_the_stub(problems):
    p = problems[2]  # truncate_number
    reply = f"Here it is:\n```python\ndef {p['entry_point']}(number: float) -> float:\n    return number % 1.0\n```"
    completion = humaneval.completion_from_chat(p, reply)
    assert completion.startswith("\ndef truncate_number")
    assert humaneval.run_program(humaneval.build_program(p, completion))[0]
    body_only = humaneval.completion_from_chat(p, "    return number % 1.0\n")
    assert humaneval.run_program(humaneval.build_program(p, body_only))[0]


@pytest.fixture
def tiny(cli, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")


def test_chat_generation_stops_once_the_first_code_block_is_closed(problems):
    done = humaneval.chat_reply_done
    assert not done("Here is the function:\n```python\ndef f(x):\n    return x")
    assert done("Here is the function:\n```python\ndef f(x):\n    return x\n```")
    assert not done("def f(x):\n    return x\n")  # no fence: the reply runs to its end
    # stopping there loses nothing: the completion of the stopped reply equals that of the whole reply
    reply = "```python\ndef add(x: int, y: int):\n    return x + y\n```\nThis adds.\n```python\nadd(1, 2)\n```"
    stopped = reply[: reply.index("```", 3) + 3]
    assert done(stopped)
    add = next(p for p in problems if p["entry_point"] == "add")
    assert humaneval.completion_from_chat(add, stopped) == humaneval.completion_from_chat(add, reply)


def test_benchmark_report_with_canonical_stand_in_is_stored(cli, store, tiny):
    from llora_cli.evaluate import evaluate_benchmark

    report = evaluate_benchmark(store, "tiny", "humaneval", complete=lambda ps: [p["canonical_solution"] for p in ps])
    assert (report.n, report.correct, report.accuracy) == (164, 164, 1.0)
    assert report.ci95 == [round(x, 4) for x in wilson(164, 164)]
    assert report.accuracy_text == f"164/164 = 100.0% (95% CI {wilson(164, 164)[0] * 100:.1f}-100.0%, Wilson)"
    stored = cli.json("show", "tiny")["evaluations"][0]
    assert stored["split"] == "humaneval" and stored["metrics"]["correct"] == 164
    assert stored["metrics"]["benchmark"]["metric"] == "pass@1" and stored["metrics"]["data"]["sha256"]


@pytest.mark.parametrize("style", ["chat", "raw"])
def test_eval_benchmark_humaneval_on_the_tiny_model(cli, tiny, style):
    res = cli.json("eval", "tiny", "--benchmark", "humaneval", "--limit", "2", "--max-new-tokens", "6",
                   "--prompt-style", style)
    # A random 2-layer model writes no working function.
    assert (res["n"], res["correct"], res["accuracy"]) == (2, 0, 0.0)
    assert res["ci95"] == [0.0, round(wilson(0, 2)[1], 4)] and res["verdicts"] == "00"
    assert res["benchmark"]["prompt_style"] == style and res["split"] == "humaneval"
    assert cli.json("show", "tiny")["evaluations"][0]["metrics"]["benchmark"]["problems"] == 2


@pytest.mark.parametrize("args,message", [
    ([], "give either --data"),
    (["--data", "x", "--benchmark", "humaneval"], "give either --data"),
    (["--benchmark", "mbpp"], "unknown --benchmark 'mbpp'"),
    (["--benchmark", "humaneval", "--task", "exact"], "--task applies to --data"),
    (["--benchmark", "humaneval", "--prompt-style", "poem"], "unknown --prompt-style 'poem'"),
])
def test_eval_argument_errors_exit_2(cli, tiny, args, message):
    res = cli("eval", "tiny", *args)
    assert res.exit_code == 2 and message in res.stderr
