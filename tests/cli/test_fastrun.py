"""`llora run`'s light path (llora_cli/fastrun.py): which command lines it takes, and its defaults are the full
command's. Its answers, log rows and fallbacks are checked against the full command in tests/ml/test_llamacpp.py."""

from __future__ import annotations

import inspect

import pytest

from llora_cli import fastrun


@pytest.mark.parametrize("args,expected", [
    (["run", "hi"], fastrun.Request("hi")),
    (["run", "--engine", "llamacpp", "--max-tokens", "8", "What?"],
     fastrun.Request("What?", engine="llamacpp", max_tokens=8)),
    (["run", "--max-tokens=8", "--temperature=0.5", "--top-p", "0.9", "--seed", "3", "--json", "x"],
     fastrun.Request("x", max_tokens=8, temperature=0.5, top_p=0.9, seed=3, json=True)),
    (["run", "--modifier", "code", "--system", "be brief", "--", "--not-an-option"],
     fastrun.Request("--not-an-option", modifier="code", system="be brief")),
    (["run", "--modifier", "auto", "hi"], fastrun.Request("hi", modifier="auto")),  # the router, same view
    (["run", "--calculator", "--modifier", "reasoning", "hi"], fastrun.Request("hi", modifier="reasoning",
                                                                              calculator=True)),
    (["run", "--no-calculator", "hi"], fastrun.Request("hi", calculator=False)),  # over a modifier's default
    (["run", "--engine", "transformers", "hi"], None),
    (["run", "--base", "b", "hi"], None),
    (["run", "--depth", "auto", "hi"], None),  # dynamic depth: the transformers engine, the full command
    (["run", "--help"], None),
    (["run"], None),  # the prompt on stdin
    (["run", "a", "b"], None),  # two prompts: Typer's usage error
    (["run", "--max-tokens", "many", "hi"], None),  # Typer's error for a bad value
    (["run", "--max-tokens"], None),
    (["serve"], None),
    ([], None),
])
def test_parse(args, expected):
    assert fastrun.parse(args) == expected


def test_defaults_are_the_full_commands():
    from llora_cli.cli.run import run

    params = inspect.signature(run).parameters
    for field in ("modifier", "system", "max_tokens", "temperature", "top_p", "seed", "engine", "calculator"):
        assert getattr(fastrun.Request("x"), field) == params[field].default, field
    # --base and --depth are declined (the full command runs them); --json and --calculator are flags
    flags = {"json", "calculator"}
    assert set(fastrun.VALUE_OPTIONS.values()) | flags == set(params) - {"prompt", "base", "depth", "json_"} | flags

