"""`llora export --format vllm|ollama|gguf`: the written files, and what each engine cannot run is refused."""

from __future__ import annotations

import json
import shlex

import pytest


@pytest.fixture
def deployment(cli, store, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    for name, extra in (("mod", []), ("mod2", ["r=32", "alpha=64"])):
        cli.json("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
                 "--name", name, "max_steps=1", *extra)
    cli.json("deploy", "tiny")
    cli.json("deploy", "mod")
    cli.json("deploy", "mod2")
    return store


def test_vllm_export(cli, deployment, tmp_path):
    out = tmp_path / cli.json("export", "tiny", "--format", "vllm", "--to", tmp_path)["path"].split("/")[-1]
    script = (out / "serve.sh").read_text().splitlines()[-1]
    args = shlex.split(script.removeprefix("exec "))
    assert args[:3] == ["vllm", "serve", "./base"] and "--enable-lora" in args
    assert args[args.index("--max-lora-rank") + 1] == "32"  # smallest vLLM rank >= the largest modifier rank (32)
    mods = args[args.index("--lora-modules") + 1: args.index("--lora-modules") + 3]
    assert mods == ["tiny:mod=./modifiers/mod", "tiny:mod2=./modifiers/mod2"]
    for m in ("mod", "mod2"):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "modifiers" / m).iterdir()}
    assert (out / "base" / "config.json").is_file() and list((out / "base").glob("*.safetensors"))
    assert json.loads((out / "export.json").read_text())["ranks"] == [16, 32]  # default r=16
    assert not list(tmp_path.glob("*.partial"))
    again = cli("export", "tiny", "--format", "vllm", "--to", tmp_path)
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_ollama_and_gguf_exports(cli, store, deployment, tmp_path):
    r = cli("export", "tiny", "--format", "ollama", "--to", tmp_path)
    assert r.exit_code == 2 and "needs a GGUF base" in r.stderr and "llora compress tiny" in r.stderr
    g = tmp_path / cli.json("export", "tiny", "--format", "gguf", "--to", tmp_path)["path"].split("/")[-1]
    import gguf

    assert {t.name for t in gguf.GGUFReader(g / "tiny.gguf").tensors} >= {"token_embd.weight", "blk.0.attn_q.weight"}
    comp = cli.json("compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "0", "--name", "tq8")["compressed"]
    cli.json("data", "make", "code", "--n", "16", "--name", "code")
    for name in ("cm", "cm2"):
        cli.json("train", "--base", "tq8", "--data", "code", "--kind", "modifier", "--domain", "code", "--name", name,
                 "max_steps=1")
    cli.json("deploy", "tq8")
    cli.json("deploy", "cm")
    cli.json("deploy", "cm2")
    r = cli("export", "tq8", "--format", "ollama", "--to", tmp_path)
    assert r.exit_code == 2 and "one adapter per model" in r.stderr and "--modifier" in r.stderr
    o = tmp_path / cli.json("export", "tq8", "--format", "ollama", "--modifier", "cm2", "--to", tmp_path)["path"].split("/")[-1]
    assert (o / "Modelfile").read_text().splitlines()[1:] == ["FROM ./model.gguf", "ADAPTER ./adapter"]
    assert (o / "model.gguf").read_bytes() == (store.path_of(comp["id"]) / "model.gguf").read_bytes()
    assert json.loads((o / "export.json").read_text())["modifier"] == store.resolve("cm2").id
    r = cli("export", "tq8", "--format", "vllm", "--to", tmp_path)
    assert r.exit_code == 2 and "needs a safetensors base" in r.stderr
    r = cli("export", "tiny", "--format", "tgi", "--to", tmp_path)
    assert r.exit_code == 2 and "unknown --format 'tgi'" in r.stderr


def test_dora_modifiers_are_refused_for_vllm(cli, store, tiny_model_dir, tmp_path):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "16", "--name", "auto")
    cli.json("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
             "--name", "dm", "max_steps=1", "dora=true")
    cli.json("deploy", "tiny")
    cli.json("deploy", "dm")
    out = tmp_path / "exports"
    r = cli("export", "tiny", "--format", "vllm", "--to", out)
    assert r.exit_code == 2 and "DoRA" in r.stderr and list(out.iterdir()) == []  # nothing half-written
