"""`llora run`: the deployed base, modifiers by name/domain, streaming, refusals, and the request log."""

from __future__ import annotations

import pytest


@pytest.fixture
def deployed(cli, store, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "24", "--name", "auto")
    cli.json("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
             "--name", "mod", "max_steps=10", "learning_rate=0.01")
    cli.json("deploy", "tiny")
    cli.json("deploy", "mod")
    return store


def test_run_base_and_modifier_and_log(cli, deployed):
    base = cli.json("run", "Set a timer", "--modifier", "none", "--max-tokens", "12")
    assert base["modifier"] is None and base["base"]["name"] == "tiny" and base["tokens_out"] >= 1
    assert base["engine"] == "transformers" and base["load"]["strategy"] == "full"
    by_domain = cli.json("run", "Set a timer", "--modifier", "automation", "--max-tokens", "12")
    by_name = cli.json("run", "Set a timer", "--modifier", "mod", "--max-tokens", "12")
    assert by_domain["modifier"]["name"] == by_name["modifier"]["name"] == "mod"
    assert by_domain["text"] == by_name["text"]  # greedy: same request, same answer
    assert by_domain["text"] != base["text"]  # the modifier changes what the base says
    logs = cli.json("logs", "list")
    assert [r["id"] for r in logs] == [by_name["log_id"], by_domain["log_id"], base["log_id"]]  # newest first
    assert logs[0]["prompt"] == "Set a timer" and logs[0]["response"] == by_name["text"]
    assert logs[0]["client"] == "cli" and logs[0]["tokens_out"] == by_name["tokens_out"] and logs[0]["latency_ms"] > 0
    assert [r["id"] for r in cli.json("logs", "list", "--modifier", "mod")] == [by_name["log_id"], by_domain["log_id"]]
    assert [r["id"] for r in cli.json("logs", "list", "--modifier", "none")] == [base["log_id"]]
    assert "Set a timer" in cli("logs", "list").stdout


def test_run_streams_text_and_reads_stdin(cli, deployed):
    res = cli("run", "--modifier", "none", "--max-tokens", "8", input="hello there")
    assert res.exit_code == 0 and res.stdout.strip() and "logged as #" in res.stderr
    assert cli.json("logs", "list")[0]["prompt"] == "hello there"


def test_sampling_with_a_seed_is_reproducible(cli, deployed):
    a = cli.json("run", "hi", "--modifier", "none", "--temperature", "1.0", "--top-p", "0.9", "--seed", "3",
                 "--max-tokens", "10")
    b = cli.json("run", "hi", "--modifier", "none", "--temperature", "1.0", "--top-p", "0.9", "--seed", "3",
                 "--max-tokens", "10")
    assert a["text"] == b["text"] and a["params"]["seed"] == 3


def test_run_refusals(cli, store, deployed, tiny_model_dir, other_tiny_model_dir):
    r = cli("run", "hi", "--modifier", "auto")
    assert r.exit_code == 2 and "no router is deployed" in r.stderr
    r = cli("run", "hi", "--modifier", "code")
    assert r.exit_code == 1 and "no deployed modifier 'code'" in r.stderr and "mod (automation)" in r.stderr
    for args, message in ((["--max-tokens", "0"], "--max-tokens"), (["--temperature", "-1"], "--temperature"),
                          (["--top-p", "0"], "--top-p")):
        r = cli("run", "hi", *args)
        assert r.exit_code == 2 and message in r.stderr
    r = cli("run", "   ")
    assert r.exit_code == 2 and "the prompt is empty" in r.stderr
    r = cli("run", "hi", "--base", "mod")
    assert r.exit_code == 2 and "run a base, merged or compressed model" in r.stderr
    cli.json("bases", "add", other_tiny_model_dir, "--name", "other")
    cli.json("deploy", "other")
    r = cli("run", "hi")
    assert r.exit_code == 2 and "2 bases are deployed" in r.stderr and "tiny" in r.stderr and "other" in r.stderr
    # the modifier was trained on tiny: on another base it does not exist (R6 at deploy time)
    r = cli("run", "hi", "--base", "other", "--modifier", "mod")
    assert r.exit_code == 1 and "no deployed modifier 'mod' on base 'other'" in r.stderr
    assert cli.json("run", "hi", "--base", "other", "--max-tokens", "4")["base"]["name"] == "other"
    assert "Traceback" not in r.stderr


def test_training_adapters_never_run(cli, store, tiny_model_dir, tiny_adapter_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("adapters", "import", tiny_adapter_dir, "--base", "tiny", "--name", "ad")
    r = cli("run", "hi", "--base", "ad")
    assert r.exit_code == 1 and "R5" in r.stderr and "never deployed, run or served" in r.stderr
    r = cli("run", "hi")
    assert r.exit_code == 1 and "no base is deployed" in r.stderr
