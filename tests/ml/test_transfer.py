"""`llora export` / `llora import`: full copies and low-bandwidth rebuilds checked against the recorded hash."""

from __future__ import annotations

import tiny


def setup_source(cli, tmp_path, tiny_model_dir, home):
    cli.json("--home", home, "bases", "add", tiny_model_dir, "--name", "tiny")
    tiny.build_tiny_adapter(tiny_model_dir, tmp_path / "lora", seed=5)
    cli.json("--home", home, "adapters", "import", tmp_path / "lora", "--base", "tiny", "--name", "ad")
    return cli.json("--home", home, "merge", "ad", "--keep-adapter", "--verify", "tensors")["merged"]


def test_low_bandwidth_rebuilds_the_same_checkpoint(cli, tmp_path, tiny_model_dir):
    a, b, shared = tmp_path / "a", tmp_path / "b", tmp_path / "shared"
    merged = setup_source(cli, tmp_path, tiny_model_dir, a)
    out = cli.json("--home", a, "export", merged["id"], "--to", shared, "--low-bandwidth")["path"]
    shipped = {p.name for p in (shared / merged["id"]).iterdir()}
    assert shipped == {"export.json", "adapter_config.json", "adapter_model.safetensors"}  # no weights of the model
    # the receiving store has no base yet: refused, nothing imported
    refused = cli("--home", b, "import", out)
    assert refused.exit_code == 1 and "no base with content hash" in refused.stderr
    assert cli.json("--home", b, "merged", "list") == []
    cli.json("--home", b, "bases", "add", tiny_model_dir, "--name", "tiny")
    got = cli.json("--home", b, "import", out)
    assert got["id"] == merged["id"] and got["content_hash"] == merged["content_hash"]
    assert got["metadata"]["imported"]["mode"] == "recipe"


def test_full_export_and_tamper_detection(cli, tmp_path, tiny_model_dir):
    a, c, shared = tmp_path / "a", tmp_path / "c", tmp_path / "shared"
    merged = setup_source(cli, tmp_path, tiny_model_dir, a)
    out = cli.json("--home", a, "export", merged["id"], "--to", shared)["path"]
    weights = next((shared / merged["id"]).glob("*.safetensors"))
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    bad = cli("--home", c, "import", out)
    assert bad.exit_code == 1 and "does not match its recorded sha256" in bad.stderr
    assert cli.json("--home", c, "merged", "list") == []
    weights.write_bytes(original)
    got = cli.json("--home", c, "import", out)
    assert got["content_hash"] == merged["content_hash"] and got["parents"] == []  # parents not in this store
    assert {p["role"] for p in got["metadata"]["imported"]["parents"]} == {"merge_base", "adapter"}
    again = cli("--home", c, "import", out)
    assert again.exit_code == 1 and "already has artifact" in again.stderr


def test_low_bandwidth_needs_a_kept_adapter(cli, tmp_path, tiny_model_dir):
    a = tmp_path / "a"
    cli.json("--home", a, "bases", "add", tiny_model_dir, "--name", "tiny")
    tiny.build_tiny_adapter(tiny_model_dir, tmp_path / "lora", seed=6)
    cli.json("--home", a, "adapters", "import", tmp_path / "lora", "--base", "tiny", "--name", "ad")
    merged = cli.json("--home", a, "merge", "ad", "--verify", "tensors")["merged"]
    result = cli("--home", a, "export", merged["id"], "--to", tmp_path / "x", "--low-bandwidth")
    assert result.exit_code == 2 and "--keep-adapter" in result.stderr
    assert not (tmp_path / "x" / merged["id"]).exists()
