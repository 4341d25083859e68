"""`llora bases add` from local directories and hub ids; bad sources lose nothing."""

from __future__ import annotations

import shutil

import pytest


def catalog_is_empty(store):
    return store.list() == [] and store.layout.leftovers() == [] and not any(store.layout.artifacts.iterdir())


def test_add_local_directory(cli, store, tiny_model_dir):
    d = cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    assert d["kind"] == "base" and d["state"] == "ready" and d["name"] == "tiny"
    arch = d["metadata"]["architecture"]
    assert arch["model_type"] == "llama" and arch["num_hidden_layers"] == 2 and arch["hidden_size"] == 32
    assert arch["has_chat_template"] is True and arch["dtype"] == "F32"
    paths = {f["path"] for f in d["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= paths
    assert store.verify("tiny").ok
    # the content hash is over the payload files: adding the same model again is refused
    again = cli("bases", "add", tiny_model_dir, "--name", "tiny-again")
    assert again.exit_code == 1 and "already registered as base 'tiny'" in again.stderr
    assert [a.name for a in store.list()] == ["tiny"] and store.layout.leftovers() == []


def test_default_name_and_name_conflict(cli, store, tiny_model_dir, other_tiny_model_dir):
    assert cli.json("bases", "add", tiny_model_dir)["name"] == "tiny-llama"
    result = cli("bases", "add", other_tiny_model_dir, "--name", "tiny-llama")
    assert result.exit_code == 1 and "already taken" in result.stderr


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "x..y", "-lead", ""])
def test_bad_names_are_usage_errors(cli, store, tiny_model_dir, name):
    result = cli("bases", "add", tiny_model_dir, "--name", name)
    assert result.exit_code == 2, result.output
    assert "invalid name" in result.stderr
    assert catalog_is_empty(store)


def test_non_model_directory_is_refused(cli, store, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = cli("bases", "add", tmp_path)
    assert result.exit_code == 2 and "no config.json" in result.stderr
    assert catalog_is_empty(store)


def test_directory_without_weights_is_refused(cli, store, tiny_model_dir, tmp_path):
    for n in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / n, tmp_path / n)
    result = cli("bases", "add", tmp_path)
    assert result.exit_code == 2 and "no weights" in result.stderr
    assert catalog_is_empty(store)


def test_truncated_weights_are_refused_and_nothing_is_written(cli, store, tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = cli("bases", "add", broken)
    assert result.exit_code == 2 and "not a valid safetensors file" in result.stderr
    assert catalog_is_empty(store)


def test_missing_path_and_wrong_file_type(cli, store, tmp_path):
    missing = cli("bases", "add", "./does/not/exist")
    assert missing.exit_code == 2 and "not a directory, a .gguf file" in missing.stderr
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    assert cli("bases", "add", txt).exit_code == 2
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 16)
    result = cli("bases", "add", fake)
    assert result.exit_code == 2 and "GGUF magic" in result.stderr
    assert catalog_is_empty(store)


def test_hub_id_fails_cleanly_offline(cli, store, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = cli("bases", "add", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert result.exit_code == 1
    assert "could not download HuggingFaceTB/SmolLM2-135M-Instruct" in result.stderr
    assert "Traceback" not in result.output
    assert catalog_is_empty(store)


class _RunsCode:
    """A pickle that calls os.system when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _bin_dir(tiny_model_dir, path, state):
    import torch

    path.mkdir()
    for n in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (tiny_model_dir / n).is_file():
            shutil.copy(tiny_model_dir / n, path / n)
    torch.save(state, path / "pytorch_model.bin")
    return path


def test_pickle_weights_need_convert_bin_and_are_read_weights_only(cli, store, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    plain = _bin_dir(tiny_model_dir, tmp_path / "plain", weights)
    refused = cli("bases", "add", plain)
    assert refused.exit_code == 2 and "pickle weights (pytorch_model*.bin)" in refused.stderr
    assert "--convert-bin" in refused.stderr and catalog_is_empty(store)
    d = cli.json("bases", "add", plain, "--convert-bin", "--name", "converted")
    assert {f["path"] for f in d["files"]} >= {"model.safetensors", "config.json"}
    assert not any(f["path"].endswith(".bin") for f in d["files"])
    stored = load_file(str(store.path_of("converted") / "model.safetensors"))
    assert all((stored[k] == v).all() for k, v in weights.items() if k in stored) and len(stored) >= len(weights) - 1

    marker = tmp_path / "pwned"
    evil = _bin_dir(tiny_model_dir, tmp_path / "evil", {**weights, "x": _RunsCode(marker)})
    result = cli("bases", "add", evil, "--convert-bin", "--name", "evil")
    assert result.exit_code == 2 and "cannot convert the pickle weights" in result.stderr
    assert not marker.exists() and "Traceback" not in result.output
    assert [a.name for a in store.artifacts(kind="base")] == ["converted"] and store.layout.leftovers() == []
