"""End to end on the real embedded SmolLM2-135M-Instruct (GGUF -> safetensors -> generate)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_demo_registers_smollm2_and_answers(cli, store):
    report = cli.json("demo")
    assert "Paris" in report["generation"]["text"]
    base = report["base"]
    assert base["name"] == "smollm2" and base["kind"] == "base" and base["state"] == "ready"
    d = cli.json("show", "smollm2")
    arch = d["metadata"]["architecture"]
    assert (arch["model_type"], arch["num_hidden_layers"], arch["hidden_size"]) == ("llama", 30, 576)
    assert 130e6 < arch["num_parameters"] < 140e6
    assert d["metadata"]["source"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert store.verify("smollm2").ok

    # the same GGUF file under another name is refused before any conversion work
    from llora_cli.bases import builtin_gguf

    again = cli("bases", "add", builtin_gguf("smollm2"), "--name", "copy")
    assert again.exit_code == 1 and "already registered as base 'smollm2'" in again.stderr

    # a second demo run reuses the registered base
    assert cli.json("demo")["base"]["id"] == base["id"]
    assert len(store.list(kind="base")) == 1


def test_demo_after_the_base_was_discarded_registers_it_again(cli, store):
    first = cli.json("demo")["base"]
    assert cli("discard", first["id"], "--yes").exit_code == 0
    second = cli.json("demo")
    assert second["base"]["name"] == "smollm2-2" and second["base"]["id"] != first["id"]
    assert "Paris" in second["generation"]["text"]
