"""`llora run`'s start-up prefetch (llora_cli/prefetch.py): the deployed GGUF base loads while the CLI imports; the
engine takes it only for the same file and parameters, and the store stays the truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llora_cli import prefetch


@pytest.mark.parametrize("argv,expected", [
    (["llora", "run", "hi"], True),
    (["llora", "run", "--engine", "llamacpp", "--max-tokens", "8", "hi"], True),
    (["llora", "run", "--engine", "transformers", "hi"], False),
    (["llora", "run", "--engine=transformers", "hi"], False),
    (["llora", "run", "--base", "b", "hi"], False),
    (["llora", "run", "--help"], False),
    (["llora", "serve"], False),
    (["llora"], False),
])
def test_only_a_plain_llora_run_prefetches(argv, expected, monkeypatch):
    monkeypatch.delenv("LLORA_DB_URL", raising=False)
    assert prefetch.wanted(argv) is expected
    monkeypatch.setenv("LLORA_DB_URL", "postgresql+psycopg://x/y")
    assert prefetch.wanted(["llora", "run", "hi"]) is False  # the hint reads SQLite only


def _run(llora_home, *args):
    proc = subprocess.run([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "run", *args],
                          capture_output=True, text=True, env={**os.environ, "LLORA_HOME": str(llora_home)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_run_uses_the_prefetched_model_only_when_it_is_the_deployed_one(cli, store, tiny_model_dir, llora_home):
    pytest.importorskip("llama_cpp", reason="the llama.cpp engine is an optional extra (llora[llamacpp])")
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    comp = cli.json("compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "0")["compressed"]
    cli.json("deploy", comp["id"])
    fast = _run(llora_home, "--engine", "llamacpp", "--max-tokens", "4", "--json", "What is 12 plus 30?")
    plain = _run(llora_home, "--engine", "llamacpp", "--base", comp["name"], "--max-tokens", "4", "--json",
                 "What is 12 plus 30?")
    assert fast["load"]["prefetched"] is True and plain["load"]["prefetched"] is False
    assert fast["text"] == plain["text"] and fast["tokens_in"] == plain["tokens_in"]  # the same model, greedy
    # the store is the truth: with the base retired nothing is deployed, and the prefetch's hint finds nothing
    cli.json("retire", comp["id"])
    proc = subprocess.run([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "run", "hi"],
                          capture_output=True, text=True, env={**os.environ, "LLORA_HOME": str(llora_home)})
    assert proc.returncode == 1 and "no base is deployed" in proc.stderr
