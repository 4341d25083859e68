"""Catalog commands never import torch, transformers or peft (a fresh interpreter proves it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "sentence_transformers",
         "safetensors.torch", "huggingface_hub", "gguf", "numpy")


def test_catalog_commands_do_not_import_heavy_modules(llora_home, store):
    st = store.new_staging("b")
    (st / "model.safetensors").write_bytes(b"w")
    base = store.create("base", "b", staging=st)
    commands = [
        ["bases", "list", "--json"], ["adapters", "list"], ["modifiers", "list", "--json"], ["merged", "list"],
        ["compressed", "list"], ["routers", "list"], ["datasets", "list"], ["show", base.id, "--json"],
        ["show", "b"], ["lineage", "b"], ["history", "b", "--json"], ["verify", "b"], ["deploy", "b"],
        ["retire", "b"], ["db", "status"], ["--help"], ["train", "--help"], ["data", "--help"],
        ["runs", "--help"], ["eval", "--help"], ["experiment", "--help"],
        ["doctor", "--json"], ["db", "gc", "--dry-run"], ["db", "backup", str(llora_home / "backup.db")],
    ]
    code = textwrap.dedent(f"""
        import json, sys
        from llora_cli.cli.main import app
        codes = []
        for args in {commands!r}:
            try:
                app(args, standalone_mode=False)
                codes.append(0)
            except SystemExit as e:
                codes.append(e.code or 0)
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps({{"codes": codes, "heavy": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        "LLORA_HOME": str(llora_home), "PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0] * len(commands)
    assert result["heavy"] == []


def test_train_dry_run_does_not_import_torch(llora_home, tiny_model_dir, cli):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "code", "--n", "20", "--name", "c")
    code = textwrap.dedent(f"""
        import json, sys
        from llora_cli.cli.main import app
        try:
            app(["train", "--base", "tiny", "--data", "c", "--dry-run", "--json"], standalone_mode=False)
        except SystemExit as e:
            assert not e.code, e.code
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"LLORA_HOME": str(llora_home), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_console_script_lists_json(llora_home, store):
    import shutil

    exe = shutil.which("llora") or str(__import__("pathlib").Path(sys.executable).parent / "llora")
    proc = subprocess.run([exe, "bases", "list", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
