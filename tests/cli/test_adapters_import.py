"""`llora adapters import`: a PEFT directory registered against the base it fits, refused otherwise."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture
def tiny_base(cli, tiny_model_dir):
    return cli.json("bases", "add", tiny_model_dir, "--name", "tiny")


def test_import_fitting_adapter(cli, store, tiny_base, tiny_adapter_dir):
    d = cli.json("adapters", "import", tiny_adapter_dir, "--base", "tiny", "--name", "lora1")
    assert d["kind"] == "adapter" and d["state"] == "trained"
    assert d["parents"] == [{"id": tiny_base["id"], "role": "trained_on"}]
    assert d["base_hash"] == tiny_base["content_hash"]
    peft = d["metadata"]["peft"]
    assert peft["r"] == 4 and peft["target_modules"] == ["q_proj", "v_proj"] and peft["modules"] == 4
    assert {f["path"] for f in d["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}


def test_import_records_qlora_quantization(cli, tiny_base, tiny_adapter_dir):
    d = cli.json("adapters", "import", tiny_adapter_dir, "--base", "tiny", "--quantization", "nf4")
    assert d["quantization"] == "nf4"
    bad = cli("adapters", "import", tiny_adapter_dir, "--base", "tiny", "--quantization", "q2")
    assert bad.exit_code == 2 and "unknown quantization" in bad.stderr


def test_import_refuses_adapter_with_wrong_shapes(cli, store, tiny_base, tiny_adapter_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapter_dir, bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    import numpy as np

    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = np.zeros((4, 48), dtype=np.float32)  # fan-in 48, the base has 32
    save_file(tensors, bad / "adapter_model.safetensors")
    result = cli("adapters", "import", bad, "--base", "tiny")
    assert result.exit_code == 2 and "does not fit the base" in result.stderr and "x48" in result.stderr
    assert store.list(kind="adapter") == [] and store.layout.leftovers() == []


def test_import_refuses_unknown_target_module(cli, store, tiny_base, tiny_adapter_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapter_dir, bad)
    tensors = {k.replace("q_proj", "qkv_proj"): v for k, v in load_file(bad / "adapter_model.safetensors").items()}
    save_file(tensors, bad / "adapter_model.safetensors")
    result = cli("adapters", "import", bad, "--base", "tiny")
    assert result.exit_code == 2 and "qkv_proj: no such module in the base" in result.stderr


def test_import_refuses_non_peft_dir_and_non_lora(cli, tiny_base, tiny_adapter_dir, tmp_path):
    assert "no adapter_config.json" in cli("adapters", "import", tmp_path, "--base", "tiny").stderr
    ia3 = tmp_path / "ia3"
    shutil.copytree(tiny_adapter_dir, ia3)
    cfg = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    result = cli("adapters", "import", ia3, "--base", "tiny")
    assert result.exit_code == 2 and "IA3" in result.stderr


def test_import_on_unknown_base(cli, tiny_adapter_dir):
    result = cli("adapters", "import", tiny_adapter_dir, "--base", "nope")
    assert result.exit_code == 1 and "no base or merged or compressed matches 'nope'" in result.stderr
